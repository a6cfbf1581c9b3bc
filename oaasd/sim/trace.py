"""Traces and clusters for the simulator: read, check, write.

A trace is CSV (a header row) or JSONL (one object a line) with the columns
``submit_s, duration_s, workers, cpus, memory_mb, gpus, user, time_limit_s,
estimated_runtime_s, preemptible``; missing columns (and empty cells) get
the defaults of ``COLUMNS``. A row with an unknown column, a value that is
not a number, a negative duration or submit time, or a request no node of
the cluster could ever hold is a ``TraceError`` naming its row (the header
is row 1 of a CSV; JSONL rows count from 1), unless ``skip_bad`` counts it
and goes on.

A cluster file is TOML with ``[[nodes]]`` tables as in ``oaasd.toml``
(``name``, ``cpus``, ``memory_mb``, ``gpus``, ``labels``, ``core_capacity``)
plus, for the simulator only, ``count = N``: N such nodes named
``NAME-0`` .. ``NAME-(N-1)``. ``cpus`` is required; ``memory_mb`` defaults to 0.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from oaasd.config import NodeConfig
from oaasd.core import placement as pl
from oaasd.core.jobs import shape
from oaasd.errors import OaasError


class TraceError(OaasError):
    """A trace or cluster file the simulator cannot use; names the row or key."""

    status = 400
    reason = "BadTrace"


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One task of a trace: when it comes, how long it really runs, what it asks for."""

    submit_s: float = 0.0
    duration_s: float = 0.0
    workers: int = 1
    cpus: float = 1.0
    memory_mb: int = 0
    gpus: int = 0
    user: str = "anonymous"
    time_limit_s: float | None = None
    estimated_runtime_s: float | None = None
    preemptible: bool = False

    def request(self) -> pl.Request:
        """The placement request of this row (per worker)."""
        return pl.Request(cpu_milli=round(self.cpus * 1000), memory_mb=self.memory_mb,
                          gpu_milli=self.gpus * 1000,
                          workers=self.workers)


COLUMNS = {f.name: f.type for f in fields(TraceRow)}
_FLOAT = ("submit_s", "duration_s", "cpus")
_INT = ("workers", "memory_mb", "gpus")
_OPTIONAL = ("time_limit_s", "estimated_runtime_s")


def _number(value: Any, kind: type, column: str) -> Any:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{column}: expected a number, got {value!r}")
    x = kind(float(value)) if kind is int else kind(value)
    if kind is int and float(value) != x:
        raise ValueError(f"{column}: expected a whole number, got {value!r}")
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"{column}: expected a finite number, got {value!r}")
    return x


def parse_row(raw: dict[str, Any]) -> TraceRow:
    """A TraceRow from one row's cells; ValueError saying what is wrong."""
    unknown = sorted(set(raw) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    cells = {k: v for k, v in raw.items() if v not in ("", None)}
    out: dict[str, Any] = {}
    for column in _FLOAT:
        if column in cells:
            out[column] = _number(cells[column], float, column)
    for column in _INT:
        if column in cells:
            out[column] = _number(cells[column], int, column)
    for column in _OPTIONAL:
        if column in cells:
            out[column] = _number(cells[column], float, column)
            if out[column] <= 0:
                raise ValueError(f"{column} must be > 0, got {cells[column]!r}")
    if "user" in cells:
        out["user"] = str(cells["user"])
    if "preemptible" in cells:
        flag = cells["preemptible"]
        if isinstance(flag, str):
            if flag.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"preemptible: expected true or false, got {flag!r}")
            flag = flag.lower() in ("true", "1")
        out["preemptible"] = bool(flag)
    row = TraceRow(**out)
    if row.duration_s < 0 or row.submit_s < 0:
        raise ValueError(f"negative {'duration_s' if row.duration_s < 0 else 'submit_s'}")
    if row.workers < 1 or row.cpus < 0 or row.memory_mb < 0 or row.gpus < 0:
        raise ValueError("workers must be >= 1 and resources >= 0")
    return row


def _raw_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, cells) of a CSV or JSONL file; cells is an error message for an unreadable row."""
    text = path.read_text()
    if path.suffix in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, f"not JSON: {exc.msg}"
                continue
            yield n, obj if isinstance(obj, dict) else "not a JSON object"
        return
    reader = csv.DictReader(text.splitlines())
    for n, cells in enumerate(reader, 2):
        if None in cells:
            yield n, "more cells than the header has columns"
        else:
            yield n, {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in cells.items()}


def read_trace(path: str | Path, table: pl.NodeTable, skip_bad: bool = False) -> tuple[list[TraceRow], int]:
    """The rows of a trace, sorted by submit time (stable), and how many bad rows were skipped."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    rows, skipped, fits = [], 0, {}
    for n, cells in _raw_rows(path):
        try:
            if isinstance(cells, str):
                raise ValueError(cells)
            row = parse_row(cells)
            request = row.request()
            key = shape(request)  # the one definition of "same placement answer"
            if key not in fits:
                fits[key] = pl.could_ever_fit(table, request)
            if fits[key] is not None:
                raise ValueError(f"the cluster can never hold it ({row.workers} worker(s) of {row.cpus:g} cpus, "
                                 f"{row.memory_mb} MB, {row.gpus} GPUs)")
        except ValueError as exc:
            if not skip_bad:
                raise TraceError(f"{path}: row {n}: {exc}") from None
            skipped += 1
            continue
        rows.append(row)
    rows.sort(key=lambda r: r.submit_s)
    return rows, skipped


def write_trace(path: str | Path, rows: Iterable[TraceRow]) -> None:
    """Write rows as CSV (``.csv``) or JSONL (any other suffix)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        if path.suffix == ".csv":
            w = csv.DictWriter(f, fieldnames=list(COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
        else:
            for r in rows:
                f.write(json.dumps(asdict(r)) + "\n")


def read_nodes(path: str | Path) -> pl.NodeTable:
    """The cluster of a nodes file: ``[[nodes]]`` as in oaasd.toml, ``count = N`` for N alike."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(f"{path}: no such nodes file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TraceError(f"{path}: not valid TOML: {exc}") from None
    specs = []
    for i, entry in enumerate(data.get("nodes") or []):
        entry = dict(entry)
        count = entry.pop("count", 1)
        entry.setdefault("memory_mb", 0)  # not this machine's, as a local node of oaasd.toml would be
        if "cpus" not in entry and "core_capacity" not in entry:
            raise TraceError(f"{path}: nodes.{i}: give cpus (the simulator does not look at this machine)")
        try:
            node = NodeConfig.model_validate(entry)
        except ValueError as exc:
            raise TraceError(f"{path}: nodes.{i}: {exc}") from None
        if not isinstance(count, int) or count < 1:
            raise TraceError(f"{path}: nodes.{i}.count must be a whole number >= 1")
        for k in range(count):
            specs.append({"name": node.name if count == 1 else f"{node.name}-{k}", "cpus": node.cpus,
                          "memory_mb": node.memory_mb, "gpus": node.gpus, "labels": node.labels,
                          "core_milli": node.core_capacity})
    if not specs:
        raise TraceError(f"{path}: no [[nodes]]")
    try:
        return pl.NodeTable.from_specs(specs)
    except ValueError as exc:
        raise TraceError(f"{path}: {exc}") from None
