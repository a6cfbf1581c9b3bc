"""Placement core: which nodes can take a request, and which of them should.

Pure numpy over a struct of arrays, one row per node; no I/O, no asyncio. The
daemon, the trace simulator and the benchmarks call the same stages:

    checks   (table, request) -> (n,) bool   nodes that FAIL, one per reason
    scorers  (table, request) -> (n,) float  in [0, 1], see ``oaasd.scoring``
    select   argmax, ties by node order; a gang of k workers takes the best
             rows with room, all or nothing
    reserve / release   subtract / add back in place, bit for bit
    passes   place_queue (in order, each placement assumed before the next);
             assign_batch (single-worker requests, linear_sum_assignment)

CPU is budgeted twice: ``free[:, cpu_milli]`` is every request's budget;
``core_free`` also tracks the per-process ``cores`` shares of requests that
give them (each share on ONE core, best-fit decreasing). A request with cores
takes ``sum(cores)`` from both, so ``free[:, 0] <= core_free.sum(1)`` always.

A "no" is data: a ``Refusal`` carries a Slurm-style reason, how many nodes
each check rejected first and, per resource, what was asked and offered.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from oaasd.core.placement.scoring import (
    SCORERS,  # noqa: F401  (re-exported: fits by name)
    cores_fit,
    match,
    pack_cores,
    pack_slots,
    rank,
    score_rows,
    scorer,
    spread_slots,
)

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
        self.label_cache: dict = {}  # label_match, per label set; labels never change
        self.static_rows_cache: dict = {}  # static_rows, per label set and GPU need
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


@dataclass(frozen=True)
class Shortfall:
    """One resource asked of a single node beyond what any eligible node has.

    For ``workers`` (a gang): ``free`` and ``capacity`` are worker slots.
    For ``core_milli``: the largest per-process share against the largest core.
    """

    resource: str
    requested: int
    free: int
    capacity: int


@dataclass(frozen=True)
class Refusal:
    """Why a request was not placed; formatted only at the edge (API, CLI, logs).

    reason: Slurm pending reason ``Resources``, ``ReqNodeNotAvail`` (every
    matching node drained or down) or ``BadConstraints`` (could never fit);
    counts: check reason code -> nodes that check rejected first;
    slots: workers that would fit on nodes passing every check.
    """

    reason: str
    counts: dict[str, int]
    nodes: int
    workers: int
    slots: int
    detail: tuple[Shortfall, ...] = ()


# ---------------------------------------------------------------- checks


def unschedulable(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes drained or down: (n,) bool."""
    return ~table.schedulable


def label_mismatch(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes lacking one of the requested key=value labels: (n,) bool."""
    return ~label_match(table, request)


def label_match(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes carrying every requested key=value label: (n,) bool, read-only.

    Cached per label set on the table (shared by its copies: labels never change).
    """
    key = request.label_key
    hit = table.label_cache.get(key)
    if hit is None:
        cols = [table.label_index.get(f"{k}={v}") for k, v in key]
        if None in cols:  # a pair no node carries
            hit = np.zeros(len(table.names), bool)
        else:
            hit = table.labels[:, cols].all(1)
        hit.flags.writeable = False
        table.label_cache[key] = hit
    return hit


def static_rows(table: NodeTable, request: Request) -> np.ndarray:
    """Rows that could ever pass the label check and, for a request asking for GPUs,
    have GPUs at all: (m,) int64 ascending, read-only. Cached per label set and GPU
    need on the table (shared by its copies: labels and totals never change)."""
    key = (request.label_key, request.gpus > 0)
    hit = table.static_rows_cache.get(key)
    if hit is None:
        ok = label_match(table, request) & table.has[:, GPUS] if request.gpus else label_match(table, request)
        hit = table.static_rows_cache[key] = np.flatnonzero(ok)
        hit.flags.writeable = False
    return hit


def not_idle(table: NodeTable, request: Request) -> np.ndarray:
    """For an exclusive request, nodes with anything allocated: (n,) bool."""
    if not request.exclusive:
        return np.zeros(len(table.names), bool)
    return (table.free != table.total).any(1) | (table.core_free != table.core_total).any(1)


def insufficient_cpu(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes with fewer free millicores than one worker needs: (n,) bool."""
    return table.free[:, CPU] < request.cpu_milli


def insufficient_memory(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes with less free memory than one worker needs: (n,) bool."""
    return table.free[:, MEMORY] < request.memory_mb


def insufficient_gpus(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes with fewer free GPUs than one worker needs: (n,) bool."""
    return table.free[:, GPUS] < request.gpus


def insufficient_cores(table: NodeTable, request: Request) -> np.ndarray:
    """Nodes whose free cores cannot hold one worker's per-process shares: (n,) bool."""
    if not request.cores:
        return np.zeros(len(table.names), bool)
    return ~cores_fit(table.core_free, request.shares)


CHECKS: dict[str, Callable[[NodeTable, Request], np.ndarray]] = {
    "NodeNotSchedulable": unschedulable,
    "LabelMismatch": label_mismatch,
    "NodeNotIdle": not_idle,
    "InsufficientCpu": insufficient_cpu,
    "InsufficientMemory": insufficient_memory,
    "InsufficientGpus": insufficient_gpus,
    "InsufficientCores": insufficient_cores,
}


def failures(table: NodeTable, request: Request) -> np.ndarray:
    """Every check stacked, in CHECKS order: (K, n) bool, True where a node fails."""
    return np.stack([check(table, request) for check in CHECKS.values()])


def passing(table: NodeTable, request: Request, cores: bool = True) -> np.ndarray:
    """Nodes passing every check: (n,) bool, ``~failures(...).any(0)`` at a fraction of the cost.

    Skips checks the request cannot fail and runs the per-core packing only
    on nodes that passed the rest (not at all with ``cores=False``); reasons
    are counted only for a refusal.
    """
    ok = table.schedulable & label_match(table, request) if request.labels else table.schedulable.copy()
    if request.exclusive:
        ok &= ~not_idle(table, request)
    for r, amount in request.asked:  # a loop over resources: each column is contiguous
        ok &= table.free[:, r] >= amount
    if request.cores and cores:
        rows = ok.nonzero()[0]
        ok[rows] = cores_fit(table.core_free[rows], request.shares)
    return ok


_all_rows = np.logical_and.reduce  # over axis 0: each column (node) holds all


def candidates(table: NodeTable, request: Request) -> np.ndarray:
    """Rows passing every check but the per-core one: (m,) int64 ascending,
    ``passing(table, request, cores=False).nonzero()[0]``.

    A request asking for labels or GPUs, which few nodes have, is checked only
    on those nodes (``static_rows``, cached): one compare of their gathered
    (r, m) free block, and their state.
    """
    if request.exclusive or not (request.labels or request.gpus):
        return passing(table, request, cores=False).nonzero()[0]
    rows = static_rows(table, request)
    ok = _all_rows(table.free.T.take(rows, 1) >= request.demand_col)
    ok &= table.schedulable.take(rows)
    return rows.compress(ok)


# ---------------------------------------------------------------- select


def place(table: NodeTable, request: Request, fit: str = "best",
          weights: np.ndarray | None = None) -> Placement | Refusal:
    """Choose nodes for every worker of ``request``, all or nothing; never mutates ``table``."""
    score_of = scorer(fit)
    cand = candidates(table, request)
    k = request.workers
    if cand.size:  # score only the rows that passed: the built-in scorers take rows
        score = score_rows(score_of, table, request, weights, cand)
        if k == 1 and not (request.cores or request.exclusive):  # the common case, fewest calls
            return Placement(((int(cand[score.argmax()]), 1),), request.demand_row, table.no_core_use)
        cand = _best_rows(table, request, cand, score, k)
    slots = 0
    if cand.size:
        if k == 1:
            return _placement(table, request, cand, _ONE)
        cap, core_use = _capacity(table, request, cand, k)
        take = spread_slots(cap, k) if request.spread else pack_slots(cap, k)
        if sum(take) == k:
            m = len(take) - take.count(0)  # the rows used are a prefix of the ranked rows
            if take[:m] != cap[:m]:  # the per-core packing was made for more workers
                core_use = None
            return _placement(table, request, cand[:m], np.array(take[:m], np.int64),
                              None if core_use is None else core_use[:m])
        slots = sum(cap)
    return _refusal(table, request, failures(table, request), slots)


_ONE = np.ones(1, np.int64)


def _best_rows(table: NodeTable, request: Request, cand: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The best min(k, m) rows of ``cand`` that also pass the per-core check: (<=k,) int64.

    The per-core check costs (m, c): it runs on the best few rows first and
    on all of them only when too few of those pass.
    """
    if not request.cores:
        return rank(cand, score, k)
    top = rank(cand, score, min(len(cand), 4 * k + 16))
    fit = cores_fit(table.core_free[top], request.shares)
    if fit.sum() >= k or len(top) == len(cand):
        return top[fit][:k]
    keep = cores_fit(table.core_free[cand], request.shares)
    return rank(cand[keep], score[keep], k)


def _capacity(table: NodeTable, request: Request, rows: np.ndarray,
              k: int) -> tuple[list[int], np.ndarray | None]:
    """Workers each of the (at most k) ``rows`` can hold, at most k, and for a request
    with per-core shares the cores those workers would take ((m, c) int64, else None)."""
    cap = [min([k] + [f[r] // amount for r, amount in request.asked]) for f in table.free[rows].tolist()]
    if request.cores:
        packed, core_use = pack_cores(table.core_free[rows], request.shares, np.array(cap, np.int64))
        return packed.tolist(), core_use
    return cap, None


def _placement(table: NodeTable, request: Request, rows: np.ndarray, slots: np.ndarray,
               core_use: np.ndarray | None = None) -> Placement:
    """The Placement of ``slots`` workers on ``rows``, recording per-core shares
    (``core_use``: pack_cores' answer for exactly these slots, when already known)."""
    if request.exclusive:  # the whole node, whatever the workers use
        use, core_use = table.total[rows], table.core_total[rows]
    elif len(rows) == 1 and slots[0] == 1 and not request.cores:  # the common case, no copies
        use, core_use = request.demand_row, table.no_core_use
    else:
        use = slots[:, None] * request.demand
        if core_use is None and request.cores:
            _, core_use = pack_cores(table.core_free[rows], request.shares, slots)
        elif core_use is None:
            core_use = np.zeros((len(rows), table.core_free.shape[1]), np.int64)
    return Placement(tuple(zip(rows.tolist(), slots.tolist())), use, core_use, request.exclusive)


def _refusal(table: NodeTable, request: Request, fail: np.ndarray, slots: int,
             reason: str | None = None) -> Refusal:
    """A Refusal counting, per check, the nodes it rejected first (bincount of the first failure)."""
    bad = fail.any(0)
    counts = np.bincount(fail.argmax(0)[bad], minlength=len(CHECKS))
    matching = ~fail[1]
    eligible = matching & ~fail[0]
    if reason is None:
        reason = "ReqNodeNotAvail" if matching.any() and not eligible.any() else "Resources"
    return Refusal(reason, {code: int(c) for code, c in zip(CHECKS, counts) if c},
                   len(table.names), request.workers, slots, _shortfalls(table, request, eligible))


_most = np.maximum.reduce  # every amount is >= 0: ``initial=0`` leaves the maximum unchanged


def _shortfalls(table: NodeTable, request: Request, eligible: np.ndarray) -> tuple[Shortfall, ...]:
    """Resources one worker needs beyond the best eligible node's free amount."""
    if not eligible.any():
        return ()
    out = []
    for r, amount in request.asked:  # column by column: a masked 2-D gather costs ~100 µs
        free = int(_most(table.free[:, r], where=eligible, initial=0))
        if amount > free:
            out.append(Shortfall(RESOURCES[r], amount, free, int(_most(table.total[:, r], where=eligible, initial=0))))
    if request.cores:
        big = int(request.shares[0])
        cfree, ctotal = int(table.core_free[eligible].max()), int(table.core_total[eligible].max())
        if big > cfree:
            out.append(Shortfall("core_milli", big, cfree, ctotal))
    return tuple(out)


def could_ever_fit(table: NodeTable, request: Request) -> Refusal | None:
    """None if the request fits the cluster as configured (every node idle, drained and
    down ones included), else a ``BadConstraints`` Refusal: refuse it at intake (422)."""
    conf = table.configured
    cand = np.flatnonzero(passing(conf, request))
    k = request.workers
    if cand.size >= k:  # every passing node holds at least one worker
        return None
    slots = sum(_capacity(conf, request, cand, k)[0])
    if slots >= k:
        return None
    refusal = _refusal(conf, request, failures(conf, request), slots, "BadConstraints")
    if cand.size:
        refusal = replace(refusal, detail=refusal.detail + (Shortfall("workers", k, slots, slots),))
    return refusal


# ---------------------------------------------------------------- reserve


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


def _take(table: NodeTable, placement: Placement) -> None:
    """Subtract a placement made on this very table state (no checks: it fits)."""
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


# ---------------------------------------------------------------- passes


def place_queue(table: NodeTable, requests: Sequence[Request], fit: str = "best",
                weights: np.ndarray | None = None) -> list[Placement | Refusal]:
    """Place requests in order on a working copy, subtracting each placement before
    the next (Kubernetes' "assume"); ``table`` itself is not changed.

    A refused request does not block later ones (ordering and backfill are
    the policy's business). Reserving the placements on ``table`` in the same
    order cannot fail while ``table`` is unchanged.

    The loop lives in ``oaasd.placement_pass`` (fewer numpy calls per request,
    the same results as ``place`` + ``reserve`` one by one).
    """
    from oaasd.core.placement.queue import (
        place_queue as lean,  # lazy: it imports this module
    )

    return lean(table, requests, fit, weights)


def assign_batch(table: NodeTable, requests: Sequence[Request], fit: str = "best",
                 weights: np.ndarray | None = None, chunk: int = 256,
                 rounds: int = 8) -> list[Placement | Refusal]:
    """Place many single-worker requests jointly with linear_sum_assignment; ``table`` is not changed.

    Requests go in queue-order chunks of ``chunk``; each round matches a
    chunk's requests x node-slots on a working copy (the most requests first,
    then the least total of 1 - score + queue position, so earlier requests
    win when not all fit) and commits, in queue order, the pairs that still
    fit; after ``rounds`` the rest are placed one by one. Worth it where
    queue order strands requests on scarce labelled or GPU nodes (see
    bench/RESULTS-placement.md); otherwise, and for gangs, ``place_queue``.
    """
    if any(r.workers != 1 or r.exclusive for r in requests):
        raise ValueError("assign_batch takes single-worker, non-exclusive requests")
    work = table.copy()
    out: list[Placement | Refusal | None] = [None] * len(requests)
    for start in range(0, len(requests), chunk):
        todo = np.arange(start, min(start + chunk, len(requests)))
        for _ in range(rounds):
            placed = _assign_round(work, requests, todo, fit, weights, out)
            todo = todo[~placed]
            if not (placed.any() and todo.size):
                break
        for t in todo.tolist():
            out[t] = result = place(work, requests[t], fit, weights)
            if isinstance(result, Placement):
                reserve(work, requests[t], result)
    return out  # type: ignore[return-value]


def _assign_round(work: NodeTable, requests: Sequence[Request], todo: np.ndarray, fit: str,
                  weights: np.ndarray | None, out: list) -> np.ndarray:
    """One matching of ``todo`` requests to node-slots, committed on ``work``: (q,) bool placed."""
    reqs = [requests[t] for t in todo.tolist()]
    score_of = scorer(fit)
    ok = np.stack([passing(work, r) for r in reqs])  # (q, n)
    score = np.stack([score_of(work, r, weights) for r in reqs])
    cost = np.where(ok, (1.0 - score + (todo - todo[0])[:, None] / len(todo)) / 2, np.inf)
    # Optimistic slots (as many as the smallest request shape allows); pairs
    # that no longer fit at commit wait for the next round.
    small = np.min([r.demand for r in reqs], axis=0)
    slots = np.full(len(work.names), len(reqs), np.int64)
    for r in np.flatnonzero(small):
        np.minimum(slots, work.free[:, r] // small[r], out=slots)
    rows, nodes = match(cost, np.where(ok.any(0), np.maximum(slots, 1), 0))
    placed = np.zeros(len(reqs), bool)
    for i in range(len(rows)):  # rows come back in request (queue) order
        req, row = reqs[rows[i]], nodes[i:i + 1]
        if _fits(work, req, row):
            out[todo[rows[i]]] = p = _placement(work, req, row, _ONE)
            reserve(work, req, p)
            placed[rows[i]] = True
    return placed


def _fits(table: NodeTable, request: Request, rows: np.ndarray) -> bool:
    """Whether one worker still fits each of ``rows`` (labels and state already checked)."""
    if (table.free[rows] < request.demand).any():
        return False
    return not request.cores or bool(cores_fit(table.core_free[rows], request.shares).all())


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
