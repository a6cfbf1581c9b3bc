"""The node table, the request and the placement: the data every stage works on.

``NodeTable`` is a struct of arrays, one row per node; ``Request`` is one
task's per-worker ask; ``Placement`` is exactly what was taken from which
nodes. ``reserve`` / ``release`` subtract / add a placement back in place,
bit for bit; ``placement_record`` / ``placement_from_record`` persist it by
node name. Pure numpy: no I/O, no asyncio.

CPU is budgeted twice: ``free[:, cpu_milli]`` is every request's budget;
``core_free`` also tracks the per-process ``cores`` shares of requests that
give them (each share on ONE core, best-fit decreasing). A request with cores
takes ``sum(cores)`` from both, so ``free[:, 0] <= core_free.sum(1)`` always.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

RESOURCES = ("cpu_milli", "memory_mb", "gpus")
CPU, MEMORY, GPUS = 0, 1, 2


@dataclass(eq=False)
class NodeTable:
    """Total and free resources of every node, one row per node (struct of arrays).

    names: n node names; total, free: (n, r) int64 in RESOURCES order, stored
    column-major so each resource is one contiguous vector;
    core_total, core_free: (n, c) int64 millicores per core, padding columns 0;
    schedulable: (n,) bool, False for DRAIN/DOWN; labels: (n, L) bool, column j
    is membership of ``label_vocab[j]`` ("key=value"). ``total``, ``core_total``
    and ``labels`` are read-only and shared by copies; the rest changes.
    """

    names: list[str]
    total: np.ndarray
    free: np.ndarray
    core_total: np.ndarray
    core_free: np.ndarray
    schedulable: np.ndarray
    labels: np.ndarray
    label_vocab: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.total = np.asfortranarray(self.total, dtype=np.int64)
        self.free = np.asfortranarray(self.free, dtype=np.int64)
        self.core_total = np.ascontiguousarray(self.core_total, dtype=np.int64)
        self.core_free = np.ascontiguousarray(self.core_free, dtype=np.int64)
        self.schedulable = np.asarray(self.schedulable, dtype=bool)
        self.labels = np.asarray(self.labels, dtype=bool)
        _validate(self)
        for a in (self.total, self.core_total, self.labels):
            a.flags.writeable = False
        self.label_index = {v: j for j, v in enumerate(self.label_vocab)}
        self.weight_cache: dict = {}  # scoring.node_weights, per weights; totals never change
        self.label_cache: dict = {}  # checks.label_match, per label set; labels never change
        self.static_rows_cache: dict = {}  # checks.static_rows, per label set and GPU need
        self.has = self.total > 0  # (n, r): which resources each node has at all
        self.inv_total = np.divide(1.0, self.total, out=np.zeros(self.total.shape, order="F"), where=self.has)
        self.cap_max = self.total.max(0, initial=0)  # (r,): largest node per resource
        self.inv_cap_max = np.divide(1.0, self.cap_max, out=np.zeros(3), where=self.cap_max > 0)
        self.no_core_use = np.zeros((1, self.core_total.shape[1]), np.int64)  # shared, read-only
        self.no_core_use.flags.writeable = False

    @classmethod
    def from_specs(cls, specs: Iterable[Mapping[str, Any] | Any]) -> NodeTable:
        """An idle table from node specs (dicts or objects with the same attributes).

        Each spec: ``name``, ``cpus`` (float ok), ``memory_mb``, ``gpus`` (0),
        ``labels`` ({}), ``core_milli`` (per-core millicores; default: whole
        cores of 1000 plus one partial core), ``schedulable`` (True).
        """
        rows = [_spec_row(s) for s in specs]
        names = [r[0] for r in rows]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        c = max([len(r[4]) for r in rows] + [1])
        cores = np.zeros((len(rows), c), np.int64)
        for i, r in enumerate(rows):
            cores[i, : len(r[4])] = r[4]
        vocab = tuple(sorted({f"{k}={v}" for r in rows for k, v in r[5].items()}))
        col = {v: j for j, v in enumerate(vocab)}
        labels = np.zeros((len(rows), len(vocab)), bool)
        for i, r in enumerate(rows):
            labels[i, [col[f"{k}={v}"] for k, v in r[5].items()]] = True
        total = np.array([r[1:4] for r in rows], np.int64).reshape(len(rows), 3)
        return cls(names, total, total.copy(), cores, cores.copy(),
                   np.array([r[6] for r in rows], bool), labels, vocab)

    def copy(self) -> NodeTable:
        """A working copy: own free, core_free and schedulable; shared read-only rest."""
        new = copy.copy(self)  # shallow: no re-validation, shares totals and caches
        new.free, new.core_free = self.free.copy(order="F"), self.core_free.copy()
        new.schedulable = self.schedulable.copy()
        return new

    @cached_property
    def configured(self) -> NodeTable:
        """The cluster as configured: every node idle and schedulable (read-only)."""
        up = np.ones(len(self.names), bool)
        up.flags.writeable = False
        return NodeTable(self.names, self.total, self.total, self.core_total,
                         self.core_total, up, self.labels, self.label_vocab)


def _validate(t: NodeTable) -> None:
    """Raise ValueError unless the table's arrays agree in shape and bounds."""
    n = len(t.names)
    if t.total.shape != (n, len(RESOURCES)) or t.free.shape != t.total.shape:
        raise ValueError(f"total and free must be (n, {len(RESOURCES)})")
    if t.core_total.ndim != 2 or len(t.core_total) != n or t.core_free.shape != t.core_total.shape:
        raise ValueError("core_total and core_free must be (n, c)")
    if t.schedulable.shape != (n,) or t.labels.shape != (n, len(t.label_vocab)):
        raise ValueError("schedulable must be (n,) and labels (n, L)")
    if (t.total < 0).any() or (t.core_total < 0).any():
        raise ValueError("capacities must be non-negative")
    if (t.total[:, CPU] != t.core_total.sum(1)).any():
        raise ValueError("cpu_milli total must equal the sum of core_total")
    if not ((0 <= t.free) & (t.free <= t.total)).all():
        raise ValueError("free must lie in [0, total]")
    if not ((0 <= t.core_free) & (t.core_free <= t.core_total)).all():
        raise ValueError("core_free must lie in [0, core_total]")


def _spec_row(spec: Mapping[str, Any] | Any) -> tuple:
    """(name, cpu_milli, memory_mb, gpus, core_milli list, labels, schedulable) of one spec."""
    def get(key: str, default: Any = None) -> Any:
        """A spec field, from a mapping or an attribute."""
        if isinstance(spec, Mapping):
            return spec.get(key, default)
        return getattr(spec, key, default)

    cpus, cores = get("cpus"), get("core_milli")
    if cores is None:
        if cpus is None:
            raise ValueError(f"node {get('name')!r}: give cpus or core_milli")
        whole, part = divmod(round(float(cpus) * 1000), 1000)
        cores = [1000] * whole + ([part] if part else [])
    cores = [int(x) for x in cores]
    if cpus is not None and round(float(cpus) * 1000) != sum(cores):
        raise ValueError(f"node {get('name')!r}: cpus={cpus} but core_milli sums to {sum(cores)}")
    if min(cores, default=0) < 0:
        raise ValueError(f"node {get('name')!r}: negative core capacity")
    labels = {str(k): str(v) for k, v in (get("labels") or {}).items()}
    return (str(get("name")), sum(cores), int(get("memory_mb") or 0), int(get("gpus") or 0),
            cores, labels, bool(get("schedulable", True)))


@dataclass(frozen=True)
class Request:
    """What one task asks for: per-worker resources, gang size and constraints.

    ``cores`` are per-process millicore shares of ONE worker, each on one core;
    ``cpu_milli`` then defaults to their sum (and must equal it). ``spread``
    prefers one worker per node; pack (default) fills the best node first.
    ``exclusive`` takes whole idle nodes.
    """

    cpu_milli: int = 0
    memory_mb: int = 0
    gpus: int = 0
    cores: tuple[int, ...] = ()
    workers: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    spread: bool = False
    exclusive: bool = False

    def __post_init__(self) -> None:
        cores = tuple(int(x) for x in self.cores)
        object.__setattr__(self, "cores", cores)
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in self.labels.items()})
        if cores and self.cpu_milli == 0:
            object.__setattr__(self, "cpu_milli", sum(cores))
        if cores and (self.cpu_milli != sum(cores) or min(cores) <= 0):
            raise ValueError("cores must be positive and sum to cpu_milli")
        if min(self.cpu_milli, self.memory_mb, self.gpus) < 0 or self.workers < 1:
            raise ValueError("resources must be >= 0 and workers >= 1")
        if self.cpu_milli == self.memory_mb == self.gpus == 0:
            raise ValueError("a worker must ask for some cpu_milli, memory_mb or gpus")

    @cached_property
    def demand(self) -> np.ndarray:
        """Per-worker demand: (r,) int64 in RESOURCES order (read-only)."""
        d = np.array([self.cpu_milli, self.memory_mb, self.gpus], np.int64)
        d.flags.writeable = False
        return d

    @cached_property
    def demand_list(self) -> list[int]:
        """``demand`` as Python ints (do not modify)."""
        return [self.cpu_milli, self.memory_mb, self.gpus]

    @cached_property
    def demand_row(self) -> np.ndarray:
        """``demand`` as one row: (1, r) int64 (read-only), one worker's ``Placement.use``."""
        return self.demand[None, :]

    @cached_property
    def demand_col(self) -> np.ndarray:
        """``demand`` as a column: (r, 1) int64 (read-only), to compare with (r, m) blocks."""
        return self.demand[:, None]

    @cached_property
    def asked(self) -> tuple[tuple[int, int], ...]:
        """(resource column, amount) of every resource one worker asks for."""
        return tuple((r, x) for r, x in enumerate((self.cpu_milli, self.memory_mb, self.gpus)) if x > 0)

    @cached_property
    def label_key(self) -> tuple[tuple[str, str], ...]:
        """The requested labels as a sorted tuple of (key, value): a dict key."""
        return tuple(sorted(self.labels.items()))

    @cached_property
    def shares(self) -> np.ndarray:
        """Per-process core shares of one worker, largest first: (p,) int64."""
        return np.sort(np.array(self.cores, np.int64))[::-1].copy()


@dataclass(frozen=True, eq=False)
class Placement:
    """Where a request's workers go and exactly what was taken from each node.

    hosts: (node_index, slots) pairs, best node first (an MPI hostfile's
    ``host slots=N``); use: (m, r) int64; core_use: (m, c) int64 per core.
    """

    hosts: tuple[tuple[int, int], ...]
    use: np.ndarray
    core_use: np.ndarray
    exclusive: bool = False

    @cached_property
    def nodes(self) -> np.ndarray:
        """The node rows, from hosts: (m,) int64 (made when first needed)."""
        return np.array([h[0] for h in self.hosts], np.int64)

    @property
    def workers(self) -> int:
        """Workers placed (the sum of slots)."""
        return sum(h[1] for h in self.hosts)


# ---------------------------------------------------------------- reserve and release


def reserve(table: NodeTable, request: Request, placement: Placement) -> None:
    """Subtract a placement from ``free``/``core_free`` in place.

    Raises ValueError, changing nothing, if it no longer fits (a stale placement).
    """
    rows = _rows(table, request, placement)
    free = table.free[rows] - placement.use
    cores = placement.exclusive or placement.core_use.any()
    core = table.core_free[rows] - placement.core_use if cores else None
    if free.min() < 0 or (cores and core.min() < 0):
        raise ValueError(f"placement no longer fits nodes {rows.tolist()}")
    table.free[rows] = free
    if cores:
        table.core_free[rows] = core


def assume(table: NodeTable, placement: Placement) -> None:
    """Subtract a placement just made on this very table state, in place: Kubernetes'
    "assume" within one pass (no checks: it fits)."""
    rows = placement.nodes
    table.free[rows] -= placement.use
    if placement.exclusive or placement.core_use.any():
        table.core_free[rows] -= placement.core_use


def release(table: NodeTable, request: Request, placement: Placement) -> None:
    """Add a reserved placement back to ``free``/``core_free`` in place, exactly.

    Raises ValueError, changing nothing, if that would exceed ``total`` (a double release).
    """
    rows = _rows(table, request, placement)
    free = table.free[rows] + placement.use
    core = table.core_free[rows] + placement.core_use
    if (free > table.total[rows]).any() or (core > table.core_total[rows]).any():
        raise ValueError(f"release beyond total on nodes {rows.tolist()}")
    table.free[rows], table.core_free[rows] = free, core


def _rows(table: NodeTable, request: Request, placement: Placement) -> np.ndarray:
    """The placement's rows, after checking it fits ``request`` and ``table``."""
    if placement.workers != request.workers or placement.exclusive != request.exclusive:
        raise ValueError("placement was not made for this request")
    if placement.core_use.shape[1] != table.core_free.shape[1]:
        raise ValueError("placement was not made for this table")
    return placement.nodes


# ---------------------------------------------------------------- views and records


def node_use(table: NodeTable) -> np.ndarray:
    """Derived use of each node, Slurm's words: (n,) str ``IDLE``, ``MIXED`` or ``ALLOCATED``."""
    idle = (table.free == table.total).all(1) & (table.core_free == table.core_total).all(1)
    full = table.free[:, CPU] == 0
    return np.where(idle, "IDLE", np.where(full, "ALLOCATED", "MIXED"))


def placement_record(table: NodeTable, placement: Placement) -> dict[str, Any]:
    """A JSON-able record of a placement keyed by node name, to persist and re-apply."""
    return {
        "hosts": [[table.names[i], s] for i, s in placement.hosts],
        "use": placement.use.tolist(),
        "cores": [[[int(j), int(u[j])] for j in np.flatnonzero(u)] for u in placement.core_use],
        "exclusive": placement.exclusive,
    }


def placement_from_record(table: NodeTable, record: Mapping[str, Any]) -> Placement:
    """The Placement a ``placement_record`` describes, on ``table`` (possibly rebuilt since).

    Raises KeyError for a node no longer in the table, ValueError for a core it lacks.
    """
    index = {name: i for i, name in enumerate(table.names)}
    hosts = tuple((index[name], int(s)) for name, s in record["hosts"])
    if len({h[0] for h in hosts}) != len(hosts):
        raise ValueError("a placement names each node once")
    core_use = np.zeros((len(hosts), table.core_free.shape[1]), np.int64)
    for row, pairs in enumerate(record["cores"]):
        for j, u in pairs:
            if j >= core_use.shape[1]:
                raise ValueError(f"node {record['hosts'][row][0]!r} has no core {j}")
            core_use[row, j] = u
    use = np.array(record["use"], np.int64).reshape(len(hosts), 3)
    return Placement(hosts, use, core_use, bool(record["exclusive"]))
