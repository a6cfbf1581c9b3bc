"""The task protocol: ``OAAS_METRIC``/``OAAS_RESULT`` lines and the result file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRIC = b"OAAS_METRIC "
RESULT = b"OAAS_RESULT "
MAX_LINE = 1 << 20  # a longer protocol line is reported as malformed


@dataclass
class Report:
    """What an attempt has reported so far."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


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
    """Fold one stdout line into ``report``; return a new metric, if any."""
    if not line.startswith(b"OAAS_"):
        return None
    for prefix, what in ((METRIC, "OAAS_METRIC"), (RESULT, "OAAS_RESULT")):
        if line.startswith(prefix):
            value, problem = parse_json_object(line[len(prefix):].strip(), what)
            if problem:
                report.problems.append(problem)
                return None
            if what == "OAAS_RESULT":
                report.result = value
                return None
            report.metrics.append(value)
            return value
    return None


def read_result_file(path: Path, report: Report) -> None:
    """Take the final result from ``$OAAS_RESULT_FILE`` when the task wrote one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if len(data) > MAX_LINE:
        report.problems.append("OAAS_RESULT_FILE: larger than 1 MiB")
        return
    value, problem = parse_json_object(data, "OAAS_RESULT_FILE")
    if problem:
        report.problems.append(problem)
    else:
        report.result = value


class LineTail:
    """Reads complete new lines from a growing file, from a byte offset."""

    def __init__(self, path: Path, offset: int = 0):
        self.path = path
        self.offset = offset
        self._partial = b""

    def read_lines(self, final: bool = False) -> list[bytes]:
        """Return the lines completed since the last call (all, if final)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = b""  # a runaway line without newline: drop it, not memory
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return lines
