"""The task protocol: ``OAAS_METRIC``/``OAAS_RESULT`` lines and the result file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRIC = b"OAAS_METRIC "
RESULT = b"OAAS_RESULT "
PREFIX = b"OAAS_"
NEWLINE = ord("\n")
MAX_LINE = 1 << 20  # default cap of a protocol line; a longer line is log text
CHUNK = 1 << 20  # bytes read at once: one slice of event-loop work
MAX_RECORDS = 250  # record lines returned at once (each costs a JSON parse)
MAX_PROBLEMS = 20  # malformed lines remembered per attempt (the newest)


@dataclass
class Report:
    """What an attempt has reported so far."""

    metrics: list[dict[str, Any]] = field(default_factory=list)  # the stored ones (at most the cap)
    result: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # the newest MAX_PROBLEMS

    def problem(self, text: str) -> None:
        """Remember a malformed line or file; only the newest few are kept."""
        self.problems.append(text)
        if len(self.problems) > 2 * MAX_PROBLEMS:
            del self.problems[:-MAX_PROBLEMS]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def parse_json_object(text: bytes | str, what: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a JSON object; return (object, None) or (None, problem)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{what}: not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"{what}: expected a JSON object, got {type(value).__name__}"
    if not _finite(value):
        return None, f"{what}: NaN or infinity is not allowed"
    return value, None


def parse_line(line: bytes, report: Report) -> dict[str, Any] | None:
    """Fold one stdout line into ``report``: take a result, note a problem, or return a metric.

    A metric is returned, not kept: the caller decides whether it is stored
    (``Report.metrics`` holds the ones it kept).
    """
    if not line.startswith(PREFIX):
        return None
    for prefix, what in ((METRIC, "OAAS_METRIC"), (RESULT, "OAAS_RESULT")):
        if line.startswith(prefix):
            value, problem = parse_json_object(line[len(prefix):].strip(), what)
            if problem:
                report.problem(problem)
                return None
            if what == "OAAS_RESULT":
                report.result = value
                return None
            return value
    return None


def read_result_file(path: Path, report: Report) -> None:
    """Take the final result from ``$OAAS_RESULT_FILE`` when the task wrote one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if len(data) > MAX_LINE:
        report.problem("OAAS_RESULT_FILE: larger than 1 MiB")
        return
    value, problem = parse_json_object(data, "OAAS_RESULT_FILE")
    if problem:
        report.problem(problem)
    else:
        report.result = value


class LineTail:
    """Finds the ``OAAS_`` record lines of a growing file, in bounded slices from a byte offset.

    Only lines that start with ``OAAS_`` are returned; every other byte is
    skipped with ``bytes.find`` (C speed: ``yes`` writes a billion lines), and
    a line longer than ``max_line`` is log text, never a record. Memory is
    one chunk plus at most ``max_line`` bytes of an unfinished record.

    ``offset`` is always a position to resume from after a restart: the start
    of an unfinished record, or the end of what was read. Whether it falls in
    the middle of a log line is told by the byte before it, so a resumed tail
    never takes the rest of a log line for a record.
    """

    def __init__(self, path: Path, offset: int = 0, max_line: int = MAX_LINE, chunk: int = CHUNK,
                 max_records: int = MAX_RECORDS):
        self.path = path
        self.offset = offset
        self.max_line = max_line
        self.chunk = chunk
        self.max_records = max_records
        self.more = False  # the last read stopped before the end of the file
        self._window = chunk  # bytes to read next: shrinks to what dense records need
        self._carry = b""  # an unfinished record line, starting at ``offset``
        self._midline: bool | None = None  # inside a log line (None: not known yet)
        self._fd: int | None = None

    @property
    def position(self) -> int:
        """How far the file has been read."""
        return self.offset + len(self._carry)

    def read(self, final: bool = False) -> list[bytes]:
        """Return the record lines of the next slice (with ``final``, an unterminated last line too)."""
        if not self._open():
            return []
        unread = os.fstat(self._fd).st_size - self.position  # sized reads: an idle poll allocates nothing
        data = os.pread(self._fd, min(self._window, unread), self.position) if unread > 0 else b""
        self.more = unread > len(data)
        base = self.offset
        buf = self._carry + data if self._carry else data
        start = 0
        if self._midline:
            nl = buf.find(b"\n")
            start = len(buf) if nl < 0 else nl + 1
            self._midline = nl < 0
        last = max(start, buf.rfind(b"\n", start) + 1)  # end of the whole lines
        out: list[bytes] = []
        stop = _records(buf, start, last, self.max_line, self.max_records, out)
        if stop < last:  # max_records reached: the rest is read again, in a window this dense slice needs
            self.offset, self._carry, self.more = base + stop, b"", True
            self._window = max(4096, 2 * stop)
            return out
        self._window = min(self.chunk, 2 * self._window)
        self._keep_tail(buf, last, base)
        if final and not self.more and self._carry:
            if self._carry.startswith(PREFIX):
                out.append(self._carry)
            self.offset, self._carry = self.offset + len(self._carry), b""
        return out

    def _keep_tail(self, buf: bytes, tail: int, base: int) -> None:
        """Carry the unfinished last line when it may be a record; skip it otherwise."""
        rest = buf[tail:]
        if rest and (rest.startswith(PREFIX) or PREFIX.startswith(rest)) and len(rest) <= self.max_line:
            self.offset, self._carry = base + tail, rest
            return
        self.offset, self._carry = base + len(buf), b""
        if rest:
            self._midline = True

    def _open(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        if self._midline is None:
            self._midline = self.offset > 0 and os.pread(self._fd, 1, self.offset - 1) != b"\n"
        return True

    def close(self) -> None:
        """Release the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _records(buf: bytes, start: int, end: int, max_line: int, max_records: int, out: list[bytes]) -> int:
    """Append the record lines of ``buf[start:end]`` (whole lines) to ``out``; return where it stopped."""
    i = _next_record(buf, start, end)
    while i >= 0 and len(out) < max_records:
        nl = buf.find(b"\n", i, end)
        if nl - i <= max_line:
            out.append(buf[i:nl])
        i = _next_record(buf, nl + 1, end)
    return end if i < 0 else i


def _next_record(buf: bytes, pos: int, end: int) -> int:
    """Start of the first line at or after ``pos`` (a line start) that begins with ``OAAS_``, or -1."""
    # The needle has no newline: find's skip table then jumps over log text
    # (twice as fast on ``yes`` as searching for "\nOAAS_").
    i = buf.find(PREFIX, pos, end)
    while i > pos and buf[i - 1] != NEWLINE:
        i = buf.find(PREFIX, i + 1, end)
    return i
