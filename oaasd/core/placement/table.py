"""The node table, the request and the placement: the data every stage works on.

``NodeTable`` is a struct of arrays, one row per node; ``Request`` is one
task's per-worker ask; ``Placement`` is exactly what was taken from which
nodes. ``reserve`` / ``release`` subtract / add a placement back in place,
bit for bit; ``placement_record`` / ``placement_from_record`` persist it by
node name. Pure numpy: no I/O, no asyncio.

CPU is budgeted twice: ``free[:, cpu_milli]`` is every request's budget;
``core_free`` also tracks the per-process ``cores`` shares of requests that
give them (each share of one worker on a different core). A request with
cores takes ``sum(cores)`` from both, so ``free[:, 0] <= core_free.sum(1)``
always. A plain ``cpu_milli`` request is also *bound* to concrete cores when
it is first reserved (``choose_cores``: least load first, one socket when it
fits): ``core_bound`` adds up per core everything bound there (those
loads, per-core shares, exclusive tasks' whole cores). The choice steers
nothing but itself (never feasibility, never node choice), so a pass
places without it and the scheduler's in-order reserves bind exactly as
place + reserve one by one do; binding costs nothing in the pass.

GPUs are devices: ``gpu_free`` holds free milli-GPUs per device (1000 a
whole device), and ``free[:, gpu_milli]`` is always its row sum. Every GPU
use names its devices (``Placement.gpu_use``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from oaasd.core.placement.cores import choose_cores

RESOURCES = ("cpu_milli", "memory_mb", "gpu_milli")
GPU_MILLI = 1000  # one whole device
CPU, MEMORY, GPUS = 0, 1, 2


@dataclass(eq=False)
class NodeTable:
    """Total and free resources of every node, one row per node (struct of arrays).

    names: n node names; total, free: (n, r) int64 in RESOURCES order, stored
    column-major so each resource is one contiguous vector;
    core_total, core_free: (n, c) int64 millicores per core, padding columns 0;
    schedulable: (n,) bool, False for DRAIN/DOWN; labels: (n, L) bool, column j
    is membership of ``label_vocab[j]`` ("key=value");
    gpu_total, gpu_free: (n, G) int64 milli-GPUs per device (padding 0);
    gpu_index: (n, G) int64 each device's own index (``CUDA_VISIBLE_DEVICES``);
    gpu_kind: (n, G) int64 index into ``gpu_kinds`` (-1 padding);
    sockets: (n,) int64, cores split evenly in order; core_bound: (n, c) int64
    millicores bound to each core by reserved placements (plain-cpu bindings,
    per-core shares, exclusive tasks' whole cores). ``total``,
    ``core_total``, ``gpu_total``, ``gpu_index``, ``gpu_kind``, ``sockets`` and
    ``labels`` are read-only and shared by copies; the rest changes.
    """

    names: list[str]
    total: np.ndarray
    free: np.ndarray
    core_total: np.ndarray
    core_free: np.ndarray
    schedulable: np.ndarray
    labels: np.ndarray
    label_vocab: tuple[str, ...] = ()
    gpu_total: np.ndarray | None = None
    gpu_free: np.ndarray | None = None
    gpu_index: np.ndarray | None = None
    gpu_kind: np.ndarray | None = None
    gpu_kinds: tuple[str, ...] = ("",)
    sockets: np.ndarray | None = None
    core_bound: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        self.total = np.asfortranarray(self.total, dtype=np.int64)
        self.free = np.asfortranarray(self.free, dtype=np.int64)
        self.core_total = np.ascontiguousarray(self.core_total, dtype=np.int64)
        self.core_free = np.ascontiguousarray(self.core_free, dtype=np.int64)
        if self.gpu_total is None:  # whole devices 0..g-1 of type "" from the gpus column
            self.gpu_total, self.gpu_index = _whole_devices(self.total[:, GPUS] // GPU_MILLI)
            self.gpu_kind = np.where(self.gpu_total > 0, 0, -1)
        self.gpu_total = np.ascontiguousarray(self.gpu_total, dtype=np.int64)
        self.gpu_free = self.gpu_total.copy() if self.gpu_free is None else np.ascontiguousarray(self.gpu_free, np.int64)
        self.gpu_index = np.ascontiguousarray(self.gpu_index, dtype=np.int64)
        self.gpu_kind = np.ascontiguousarray(self.gpu_kind, dtype=np.int64)
        self.sockets = np.ones(n, np.int64) if self.sockets is None else np.asarray(self.sockets, np.int64)
        self.core_bound = (np.zeros(self.core_total.shape, np.int64) if self.core_bound is None
                           else np.ascontiguousarray(self.core_bound, np.int64))
        self.schedulable = np.asarray(self.schedulable, dtype=bool)
        self.labels = np.asarray(self.labels, dtype=bool)
        _validate(self)
        for a in (self.total, self.core_total, self.labels, self.gpu_total, self.gpu_index, self.gpu_kind,
                  self.sockets):
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
        self.ncores = np.count_nonzero(self.core_total, axis=1)  # (n,) cores each node has
        self.ncores_list = self.ncores.tolist()  # the same as ints, for per-row slices
        self.sockets_list = self.sockets.tolist()

    @classmethod
    def from_specs(cls, specs: Iterable[Mapping[str, Any] | Any]) -> NodeTable:
        """An idle table from node specs (dicts or objects with the same attributes).

        Each spec: ``name``, ``cpus`` (float ok), ``memory_mb``, ``gpus`` (0: a
        count of whole devices 0..g-1, or a list of devices, each a mapping or
        object with ``index`` and ``type``), ``labels`` ({}), ``core_milli``
        (per-core millicores; default: whole cores of 1000 plus one partial
        core), ``sockets`` (1), ``schedulable`` (True).
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
        kinds = tuple(sorted({t for r in rows for _, t in r[3]} | {""}))
        g = max([len(r[3]) for r in rows] + [1])
        gtotal, gindex, gkind = (np.zeros((len(rows), g), np.int64) for _ in range(3))
        gkind -= 1
        for i, r in enumerate(rows):
            for d, (index, kind) in enumerate(r[3]):
                gtotal[i, d], gindex[i, d], gkind[i, d] = GPU_MILLI, index, kinds.index(kind)
        total = np.array([(r[1], r[2], GPU_MILLI * len(r[3])) for r in rows], np.int64).reshape(len(rows), 3)
        return cls(names, total, total.copy(), cores, cores.copy(),
                   np.array([r[6] for r in rows], bool), labels, vocab,
                   gtotal, gtotal.copy(), gindex, gkind, kinds, np.array([r[7] for r in rows], np.int64))

    def copy(self) -> NodeTable:
        """A working copy: own free, core_free, gpu_free, core_bound and schedulable; shared read-only rest."""
        new = copy.copy(self)  # shallow: no re-validation, shares totals and caches
        new.free, new.core_free = self.free.copy(order="F"), self.core_free.copy()
        new.gpu_free, new.core_bound = self.gpu_free.copy(), self.core_bound.copy()
        new.schedulable = self.schedulable.copy()
        return new

    @cached_property
    def configured(self) -> NodeTable:
        """The cluster as configured: every node idle and schedulable (read-only)."""
        up = np.ones(len(self.names), bool)
        up.flags.writeable = False
        return NodeTable(self.names, self.total, self.total, self.core_total, self.core_total, up,
                         self.labels, self.label_vocab, self.gpu_total, self.gpu_total, self.gpu_index,
                         self.gpu_kind, self.gpu_kinds, self.sockets)

    def socket_of(self, i: int, j: int) -> int:
        """The socket core j of node i lies in (cores split evenly in order)."""
        return j * int(self.sockets[i]) // max(int(self.ncores[i]), 1)


def _whole_devices(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, G) milli-GPU totals and device indices of ``counts`` whole devices per row."""
    g = max(int(counts.max(initial=0)), 1)
    index = np.broadcast_to(np.arange(g), (len(counts), g))
    return np.where(index < counts[:, None], GPU_MILLI, 0), np.where(index < counts[:, None], index, 0)


def _validate(t: NodeTable) -> None:
    """Raise ValueError unless the table's arrays agree in shape and bounds."""
    n = len(t.names)
    if t.total.shape != (n, len(RESOURCES)) or t.free.shape != t.total.shape:
        raise ValueError(f"total and free must be (n, {len(RESOURCES)})")
    if t.core_total.ndim != 2 or len(t.core_total) != n or t.core_free.shape != t.core_total.shape:
        raise ValueError("core_total and core_free must be (n, c)")
    if t.core_bound.shape != t.core_total.shape or (t.core_bound < 0).any():
        raise ValueError("core_bound must be (n, c) and non-negative")
    if t.gpu_total.ndim != 2 or len(t.gpu_total) != n or not (
            t.gpu_free.shape == t.gpu_index.shape == t.gpu_kind.shape == t.gpu_total.shape):
        raise ValueError("gpu_total, gpu_free, gpu_index and gpu_kind must be (n, G)")
    if t.schedulable.shape != (n,) or t.labels.shape != (n, len(t.label_vocab)) or t.sockets.shape != (n,):
        raise ValueError("schedulable and sockets must be (n,) and labels (n, L)")
    if (t.total < 0).any() or (t.core_total < 0).any() or (t.sockets < 1).any():
        raise ValueError("capacities must be non-negative and sockets positive")
    if (t.total[:, CPU] != t.core_total.sum(1)).any():
        raise ValueError("cpu_milli total must equal the sum of core_total")
    if (t.total[:, GPUS] != t.gpu_total.sum(1)).any() or (t.free[:, GPUS] != t.gpu_free.sum(1)).any():
        raise ValueError("gpu_milli total and free must equal the sums of gpu_total and gpu_free")
    if not ((0 <= t.free) & (t.free <= t.total)).all():
        raise ValueError("free must lie in [0, total]")
    if not ((0 <= t.core_free) & (t.core_free <= t.core_total)).all():
        raise ValueError("core_free must lie in [0, core_total]")
    if not ((0 <= t.gpu_free) & (t.gpu_free <= t.gpu_total)).all():
        raise ValueError("gpu_free must lie in [0, gpu_total]")


def _get(spec: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    """A spec field, from a mapping or an attribute."""
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)


def _spec_row(spec: Mapping[str, Any] | Any) -> tuple:
    """(name, cpu_milli, memory_mb, devices [(index, type)], core_milli list, labels,
    schedulable, sockets) of one spec."""
    name = _get(spec, "name")
    cpus, cores = _get(spec, "cpus"), _get(spec, "core_milli")
    if cores is None:
        if cpus is None:
            raise ValueError(f"node {name!r}: give cpus or core_milli")
        whole, part = divmod(round(float(cpus) * 1000), 1000)
        cores = [1000] * whole + ([part] if part else [])
    cores = [int(x) for x in cores]
    if cpus is not None and round(float(cpus) * 1000) != sum(cores):
        raise ValueError(f"node {name!r}: cpus={cpus} but core_milli sums to {sum(cores)}")
    if min(cores, default=0) < 0:
        raise ValueError(f"node {name!r}: negative core capacity")
    gpus = _get(spec, "gpus") or 0
    if isinstance(gpus, (int, np.integer)):
        devices = [(d, "") for d in range(int(gpus))]
    else:
        devices = [(int(_get(d, "index")), str(_get(d, "type") or "")) for d in gpus]
    if len({d for d, _ in devices}) != len(devices) or min([d for d, _ in devices], default=0) < 0:
        raise ValueError(f"node {name!r}: GPU device indices must be distinct and >= 0")
    sockets = int(_get(spec, "sockets") or 1)
    if not 1 <= sockets <= max(len(cores), 1):
        raise ValueError(f"node {name!r}: sockets={sockets} must lie in 1..cores ({len(cores)})")
    labels = {str(k): str(v) for k, v in (_get(spec, "labels") or {}).items()}
    return (str(name), sum(cores), int(_get(spec, "memory_mb") or 0), devices,
            cores, labels, bool(_get(spec, "schedulable", True)), sockets)


@dataclass(frozen=True)
class Request:
    """What one task asks for: per-worker resources, gang size and constraints.

    ``cores`` are per-process millicore shares of ONE worker, each on a
    different core; ``cpu_milli`` then defaults to their sum (and must equal
    it). ``gpu_milli`` is a multiple of 1000 (that many whole, distinct
    devices) or below 1000 (a share of one device); ``gpu_type`` keeps to
    devices of that type. ``spread`` prefers one worker per node; pack
    (default) fills the best node first. ``exclusive`` takes whole idle nodes.
    """

    cpu_milli: int = 0
    memory_mb: int = 0
    gpu_milli: int = 0
    cores: tuple[int, ...] = ()
    workers: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    spread: bool = False
    exclusive: bool = False
    gpu_type: str | None = None

    def __post_init__(self) -> None:
        cores = tuple(int(x) for x in self.cores)
        object.__setattr__(self, "cores", cores)
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in self.labels.items()})
        if cores and self.cpu_milli == 0:
            object.__setattr__(self, "cpu_milli", sum(cores))
        if cores and (self.cpu_milli != sum(cores) or min(cores) <= 0):
            raise ValueError("cores must be positive and sum to cpu_milli")
        if min(self.cpu_milli, self.memory_mb, self.gpu_milli) < 0 or self.workers < 1:
            raise ValueError("resources must be >= 0 and workers >= 1")
        if self.gpu_milli > GPU_MILLI and self.gpu_milli % GPU_MILLI:
            raise ValueError("gpu_milli must be below 1000 (a share of one device) or a multiple of 1000")
        if self.cpu_milli == self.memory_mb == self.gpu_milli == 0:
            raise ValueError("a worker must ask for some cpu_milli, memory_mb or gpu_milli")

    @cached_property
    def demand(self) -> np.ndarray:
        """Per-worker demand: (r,) int64 in RESOURCES order (read-only)."""
        d = np.array([self.cpu_milli, self.memory_mb, self.gpu_milli], np.int64)
        d.flags.writeable = False
        return d

    @cached_property
    def demand_list(self) -> list[int]:
        """``demand`` as Python ints (do not modify)."""
        return [self.cpu_milli, self.memory_mb, self.gpu_milli]

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
        return tuple((r, x) for r, x in enumerate((self.cpu_milli, self.memory_mb, self.gpu_milli)) if x > 0)

    @cached_property
    def label_key(self) -> tuple[tuple[str, str], ...]:
        """The requested labels as a sorted tuple of (key, value): a dict key."""
        return tuple(sorted(self.labels.items()))

    @cached_property
    def shares(self) -> np.ndarray:
        """Per-process core shares of one worker, largest first: (p,) int64."""
        return np.sort(np.array(self.cores, np.int64))[::-1].copy()

    @cached_property
    def gpu_shares(self) -> tuple[int, int]:
        """(share, p): one worker's GPUs as p equal shares of milli-GPUs, each on its own device."""
        if self.gpu_milli >= GPU_MILLI:
            return GPU_MILLI, self.gpu_milli // GPU_MILLI
        return self.gpu_milli, 1

    @property
    def binds_cores(self) -> bool:
        """Whether the placement chooses cores by bound load (a plain cpu_milli request)."""
        return self.cpu_milli > 0 and not self.cores and not self.exclusive


@dataclass(eq=False)
class Placement:
    """Where a request's workers go and exactly what was taken from each node.

    hosts: (node_index, slots) pairs, best node first (an MPI hostfile's
    ``host slots=N``); use: (m, r) int64; core_use: (m, c) int64 per core;
    gpu_use: (m, G) int64 milli-GPUs per device, None when no GPU is used;
    bound: per host, the (core, millicores) a plain-cpu request is bound to,
    None until its first ``reserve`` decides them (written once, then fixed).
    """

    hosts: tuple[tuple[int, int], ...]
    use: np.ndarray
    core_use: np.ndarray
    exclusive: bool = False
    gpu_use: np.ndarray | None = None
    bound: tuple[tuple[tuple[int, int], ...], ...] | None = None

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
    """Subtract a placement from ``free``/``core_free``/``gpu_free`` and add its bound
    cores to ``core_bound``, in place.

    Raises ValueError, changing nothing, if it no longer fits (a stale placement).
    """
    rows = _rows(table, request, placement)
    if placement.bound is None and request.binds_cores:  # decided once, on this table's loads
        placement.bound = bind_cores(table, request, placement)
    free = table.free[rows] - placement.use
    cores = placement.exclusive or placement.core_use.any()
    core = table.core_free[rows] - placement.core_use if cores else None
    gpus = placement.gpu_use
    gpu = None if gpus is None else table.gpu_free[rows] - gpus
    if free.min() < 0 or (cores and core.min() < 0) or (gpu is not None and gpu.min() < 0):
        raise ValueError(f"placement no longer fits nodes {rows.tolist()}")
    table.free[rows] = free
    if cores:
        table.core_free[rows] = core
        table.core_bound[rows] += placement.core_use
    if gpu is not None:
        table.gpu_free[rows] = gpu
    _add_bound(table, placement, 1)


def assume(table: NodeTable, placement: Placement) -> None:
    """Subtract a placement just made on this very table state, in place: Kubernetes'
    "assume" within one pass (no checks: it fits; ``core_bound`` is kept by ``reserve`` only)."""
    rows = placement.nodes
    table.free[rows] -= placement.use
    if placement.exclusive or placement.core_use.any():
        table.core_free[rows] -= placement.core_use
    if placement.gpu_use is not None:
        table.gpu_free[rows] -= placement.gpu_use


def release(table: NodeTable, request: Request, placement: Placement) -> None:
    """Add a reserved placement back in place, exactly (and take its bound load off).

    Raises ValueError, changing nothing, if that would exceed ``total`` (a double release).
    """
    rows = _rows(table, request, placement)
    free = table.free[rows] + placement.use
    core = table.core_free[rows] + placement.core_use
    gpu = None if placement.gpu_use is None else table.gpu_free[rows] + placement.gpu_use
    if (free > table.total[rows]).any() or (core > table.core_total[rows]).any() or (
            gpu is not None and (gpu > table.gpu_total[rows]).any()):
        raise ValueError(f"release beyond total on nodes {rows.tolist()}")
    shares = placement.exclusive or placement.core_use.any()
    if placement.bound and _bound_short(table, placement) or shares and (
            table.core_bound[rows] < placement.core_use).any():
        raise ValueError(f"release of bound cores beyond their load on nodes {rows.tolist()}")
    table.free[rows], table.core_free[rows] = free, core
    if shares:
        table.core_bound[rows] -= placement.core_use
    if gpu is not None:
        table.gpu_free[rows] = gpu
    _add_bound(table, placement, -1)


def bind_cores(table: NodeTable, request: Request, placement: Placement) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per host, the cores a plain cpu request's workers there are bound to (``choose_cores``
    over ``core_bound``: what reserved placements bound to each core)."""
    out = []
    bound, ncores, sockets, milli = table.core_bound, table.ncores_list, table.sockets_list, request.cpu_milli
    for i, slots in placement.hosts:
        out.append(choose_cores(bound[i, : ncores[i]].tolist(), sockets[i], milli * slots))
    return tuple(out)


def _add_bound(table: NodeTable, placement: Placement, sign: int) -> None:
    """Add (or take off) a placement's bound per-core loads on ``core_bound``."""
    if placement.bound:
        bound = table.core_bound
        for (i, _), pairs in zip(placement.hosts, placement.bound):
            row = bound[i]  # scalar stores on a row view: a node binds few cores
            for j, u in pairs:
                row[j] += sign * u


def _bound_short(table: NodeTable, placement: Placement) -> bool:
    """Whether some bound core holds less load than the placement would take off."""
    bound = table.core_bound
    return any(bound[i, j] < u for (i, _), pairs in zip(placement.hosts, placement.bound) for j, u in pairs)


def _rows(table: NodeTable, request: Request, placement: Placement) -> np.ndarray:
    """The placement's rows, after checking it fits ``request`` and ``table``."""
    if placement.workers != request.workers or placement.exclusive != request.exclusive:
        raise ValueError("placement was not made for this request")
    if placement.core_use.shape[1] != table.core_free.shape[1] or (
            placement.gpu_use is not None and placement.gpu_use.shape[1] != table.gpu_free.shape[1]):
        raise ValueError("placement was not made for this table")
    return placement.nodes


def node_use(table: NodeTable) -> np.ndarray:
    """Derived use of each node, Slurm's words: (n,) str ``IDLE``, ``MIXED`` or ``ALLOCATED``."""
    idle = (table.free == table.total).all(1) & (table.core_free == table.core_total).all(1)
    full = table.free[:, CPU] == 0
    return np.where(idle, "IDLE", np.where(full, "ALLOCATED", "MIXED"))
