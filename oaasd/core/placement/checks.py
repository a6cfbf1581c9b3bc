"""Feasibility checks: which nodes cannot take one more worker of a request, and why.

A check is ``(table, request) -> (n,) bool``, True where a node FAILS, one
check per reason code (``CHECKS``, in the order a refusal counts them).
``failures`` stacks them; ``passing`` is ``~failures(...).any(0)`` at a
fraction of the cost; ``candidates`` the passing rows but for the per-core
check. A "no" is data: ``refuse`` builds a ``Refusal`` with a Slurm-style
reason, how many nodes each check rejected first (a ``bincount`` of the first
failing check) and, per resource, what was asked and offered (``Shortfall``);
it is formatted only at the edge (API, CLI, logs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from oaasd.core.placement.cores import cores_fit
from oaasd.core.placement.table import CPU, GPUS, MEMORY, RESOURCES, NodeTable, Request


@dataclass(frozen=True)
class Shortfall:
    """One resource asked of a single node beyond what any eligible node has.

    For ``workers`` (a gang): ``free`` and ``capacity`` are worker slots.
    For ``core_milli``: the largest per-process share against the largest core;
    ``cores_distinct``: shares (one core each) against the most cores that take
    one; ``gpu_devices``: devices one worker needs against the most that could
    take its share (free, and on the idle cluster).
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
    have GPUs (of its ``gpu_type``) at all: (m,) int64 ascending, read-only. Cached per
    label set and GPU need on the table (shared by its copies: labels and totals never change)."""
    key = (request.label_key, request.gpu_milli > 0, request.gpu_type)
    hit = table.static_rows_cache.get(key)
    if hit is None:
        ok = label_match(table, request)
        if request.gpu_milli:
            ok = ok & (table.has[:, GPUS] if request.gpu_type is None else
                       (table.gpu_kind == gpu_kind_code(table, request)).any(1))
        hit = table.static_rows_cache[key] = np.flatnonzero(ok)
        hit.flags.writeable = False
    return hit


def gpu_kind_code(table: NodeTable, request: Request) -> int:
    """The column code of the request's ``gpu_type`` in ``table.gpu_kinds`` (-2: no node has it)."""
    try:
        return table.gpu_kinds.index(request.gpu_type)
    except ValueError:
        return -2


def devices(table: NodeTable, request: Request, rows: np.ndarray) -> np.ndarray:
    """Free milli-GPUs of the devices of ``rows`` the request may use: (m, G) int64."""
    free = table.gpu_free[rows]
    if request.gpu_type is None:
        return free
    return np.where(table.gpu_kind[rows] == gpu_kind_code(table, request), free, 0)


def gpus_fit(table: NodeTable, request: Request, rows: np.ndarray) -> np.ndarray:
    """Rows whose devices take one worker's GPUs (p shares, each on its own device): (m,) bool."""
    share, p = request.gpu_shares
    return np.count_nonzero(devices(table, request, rows) >= share, axis=1) >= p


def device_row(table: NodeTable, request: Request, i: int) -> list[int]:
    """Row i's free milli-GPUs per device the request may use, as Python ints."""
    free = table.gpu_free[i].tolist()
    if request.gpu_type is None:
        return free
    code = gpu_kind_code(table, request)
    return [f if k == code else 0 for f, k in zip(free, table.gpu_kind[i].tolist())]


def could_hold(table: NodeTable, request: Request) -> np.ndarray | None:
    """Nodes with enough cores (one per share) and devices (of the type, one per whole GPU)
    ever to hold one worker: (n,) bool, read-only, cached (totals never change); None
    for a request with neither per-core shares nor GPUs. A node outside it fails
    ``fine_fit`` whatever is free, so rankers may drop it first."""
    if not (request.cores or request.gpu_milli):
        return None
    key = ("hold", len(request.cores), request.gpu_type, request.gpu_shares[1] if request.gpu_milli else 0)
    hit = table.static_rows_cache.get(key)
    if hit is None:
        hit = table.ncores >= len(request.cores)
        if request.gpu_milli:
            typed = table.gpu_total > 0 if request.gpu_type is None else table.gpu_kind == gpu_kind_code(table, request)
            hit &= np.count_nonzero(typed, axis=1) >= request.gpu_shares[1]
        hit.flags.writeable = False
        table.static_rows_cache[key] = hit
    return hit


def fine_fit(table: NodeTable, request: Request, rows: np.ndarray) -> np.ndarray:
    """Rows passing the per-core and per-device checks (the column checks assumed): (m,) bool."""
    ok = cores_fit(table.core_free[rows], request.shares) if request.cores else np.ones(len(rows), bool)
    if request.gpu_milli:
        ok &= gpus_fit(table, request, rows)
    return ok


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
    """Nodes whose free GPU devices (of the type asked) cannot take one worker: (n,) bool."""
    if not request.gpu_milli:
        return np.zeros(len(table.names), bool)
    return (table.free[:, GPUS] < request.gpu_milli) | ~gpus_fit(table, request, slice(None))


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
    if (request.cores or request.gpu_milli) and cores:
        rows = ok.nonzero()[0]
        ok[rows] = fine_fit(table, request, rows)
    return ok


_all_rows = np.logical_and.reduce  # over axis 0: each column (node) holds all


def candidates(table: NodeTable, request: Request) -> np.ndarray:
    """Rows passing every check but the per-core and per-device ones: (m,) int64 ascending,
    ``passing(table, request, cores=False).nonzero()[0]``.

    A request asking for labels or GPUs, which few nodes have, is checked only
    on those nodes (``static_rows``, cached): one compare of their gathered
    (r, m) free block, and their state.
    """
    if request.exclusive or not (request.labels or request.gpu_milli):
        return passing(table, request, cores=False).nonzero()[0]
    rows = static_rows(table, request)
    ok = _all_rows(table.free.T.take(rows, 1) >= request.demand_col)
    ok &= table.schedulable.take(rows)
    return rows.compress(ok)


# ---------------------------------------------------------------- refusals


def refuse(table: NodeTable, request: Request, slots: int, reason: str | None = None) -> Refusal:
    """The Refusal of ``request`` on ``table``: per check, the nodes it rejected first
    (bincount of the first failure), the shortfalls, and ``slots`` that would fit."""
    fail = failures(table, request)
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
        p = len(request.cores)  # each share on its own core
        roomy = int(np.count_nonzero(table.core_free[eligible] >= request.shares[-1], axis=1).max())
        if p > roomy and big <= cfree:  # each share fits some core, not all on different ones
            out.append(Shortfall("cores_distinct", p, roomy, int(table.ncores[eligible].max())))
    if request.gpu_milli:
        share, p = request.gpu_shares
        typed = devices(table, request, eligible)
        roomy = int(np.count_nonzero(typed >= share, axis=1).max())
        if p > roomy:
            whole = int(np.count_nonzero(devices(table.configured, request, eligible) >= share, axis=1).max())
            out.append(Shortfall("gpu_devices", p, roomy, whole))
    return tuple(out)
