"""EASY backfill over an ordered queue (pure numpy, no I/O).

Jobs start in order while they fit. The first one that does not (the head)
gets a reservation: the earliest time ``T`` at which the running tasks'
ends (start + time limit) free enough for it, and the rows it would take
then. Behind it, a job starts only if

- it fits now and its own time limit ends by ``T`` (it is gone before the
  head needs the rows), or
- it fits now *beside* the reservation: on the free amounts that are free
  both now and at ``T`` once the head's reservation is taken
  (``min(free_now, free_at_T - head)`` row by row), so it can run as long
  as it likes without touching what the head was promised.

So a backfilled job never delays the reservation (the property the unit
tests check table by table). A job without a time limit can only take the
second way (``default_time_limit_s`` may supply one). When some running task
has no limit and the head needs its rows, ``T`` is unknown (inf) and only
the second way is open. A head that would not fit even once everything
running has ended (nodes drained) holds nothing and the next job is head.

Cost: the reservation is found by bisection over the running tasks sorted
by end (each probe one copy of the table, one scatter-add and one
``place``); every job behind it is one ``place``, or a dict lookup when its
shape was refused before in the pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oaasd.core import placement as pl
from oaasd.core.jobs import INF, Job, PassResult, Reservation, Running, may_fit
from oaasd.core.placement.table import assume
from oaasd.states import Reason

RESOURCES = Reason.RESOURCES.value
RESERVATION = Reason.RESERVATION.value


def easy_backfill(ordered: Sequence[Job], running: Sequence[Running], table: pl.NodeTable, now: float, *,
                  fit: str, weights: np.ndarray | None, refused: dict[tuple, dict[str, int]],
                  default_time_limit_s: float | None, hint: Sequence[Reservation] = (),
                  counts: bool = True) -> PassResult:
    """Start jobs in order until one does not fit, reserve for it, backfill behind it.

    ``hint``: the last pass's reservations, when nothing was freed since; the head's is
    kept if it still fits the table at its start (then no search is needed).
    """
    result = PassResult()
    work = table.copy()
    ends = _Ends(running)
    for i, job in enumerate(ordered):
        key = job.shape
        counts = refused.get(key)
        if counts is None:
            got = _place(work, job.request, fit, weights, counts)
            if isinstance(got, pl.Placement):
                assume(work, got)
                result.started.append((job, got))
                limit = _limit(job, default_time_limit_s)
                ends.started.append((INF if limit is None else now + limit, got))
                continue
            counts = refused.setdefault(key, dict(got.counts))
        result.reasons[job.task_id] = (RESOURCES, counts)
        kept = next((h for h in hint if h.task_id == job.task_id), None)
        held = reserve_for(work, job.request, ends, now, fit, weights, kept)
        if held is None:  # would not fit even on an idle cluster as it stands: holds nothing
            continue
        start_at, placement, later = held
        result.reservations.append(Reservation(job.task_id, start_at, placement))
        _behind(ordered[i + 1:], work, later, start_at, now, result, fit=fit, weights=weights, refused=refused,
                counts=counts,
                default_time_limit_s=default_time_limit_s)
        break
    return result


def _limit(job: Job, default: float | None) -> float | None:
    return job.time_limit_s if job.time_limit_s is not None else default


class _Ends:
    """When what holds resources frees them: the running tasks, then what this pass started."""

    def __init__(self, running: Sequence[Running]):
        self.running = running
        self.started: list[tuple[float, pl.Placement]] = []

    def __len__(self) -> int:
        return len(self.running) + len(self.started)

    def times(self) -> np.ndarray:
        """(m,) float end times, running first."""
        return np.array([r.ends_at for r in self.running] + [t for t, _ in self.started], float)

    def placement(self, j: int) -> pl.Placement:
        n = len(self.running)
        return self.running[j].placement if j < n else self.started[j - n][1]


def reserve_for(work: pl.NodeTable, request: pl.Request, ends: _Ends, now: float,
                fit: str, weights: np.ndarray | None,
                kept: Reservation | None = None) -> tuple[float, pl.Placement, pl.NodeTable] | None:
    """(T, placement at T, the table at T with it taken) for a request that does not fit ``work``
    now, from ``ends`` (end times and placements of what holds resources); None when it would not
    fit even after all of them ended. (T is ``now`` should it fit already.)

    Galloping, then bisection, over the ends in time order: a probe releases the first k
    onto a copy of ``work`` (one scatter-add) and places the request there, so finding
    the k that frees enough costs about 2 log2(k) probes, each in proportion to k, not
    to everything running.
    """
    times = ends.times()
    order = np.argsort(times, kind="stable")
    finite = int(np.searchsorted(times[order], INF))
    built: list[np.ndarray] = []  # rows, use, core_use of the first ``len(offset) - 1`` ends, concatenated
    offset = [0]

    def grow(k: int) -> None:
        """Concatenate the placements of at least the first k ends (doubling: O(k) in all)."""
        if len(offset) - 1 >= k:
            return
        k = min(len(ends), max(k, 2 * (len(offset) - 1), 16))
        placed = [ends.placement(j) for j in order[:k].tolist()]
        built[:] = [np.concatenate([p.nodes for p in placed]), np.concatenate([p.use for p in placed]),
                    np.concatenate([p.core_use for p in placed])]
        offset[:] = [0, *np.cumsum([len(p.hosts) for p in placed]).tolist()]

    base = [work, 0]  # a table with the first base[1] ends released: probes past it add only the rest

    def probe(k: int) -> tuple[pl.NodeTable, pl.Placement | pl.Refusal]:
        """The table once the first k have ended, and the request's placement on it."""
        start, done = base if base[1] <= k else (work, 0)
        t = _released(start, k, grow, offset, built, done)
        got = pl.place(t, request, fit, weights) if may_fit(t, request) else NO  # NO: skip a Refusal's counts
        if isinstance(got, pl.Refusal):
            base[:] = [t, k]  # it does not fit here: the answer lies past k, start from this table
        return t, got

    if kept is not None and kept.start_at < INF:  # the last pass's, if its rows are still free then
        k = int(np.searchsorted(times[order], kept.start_at, side="right"))
        t = _released(work, k, grow, offset, built)
        try:
            pl.reserve(t, request, kept.placement)
            return kept.start_at, kept.placement, t
        except ValueError:
            pass
    lo, k = 0, 1  # gallop: the smallest k that fits lies in (lo, hi]
    while True:
        k = min(k, finite)
        last, got = probe(k)
        if isinstance(got, pl.Placement):
            hi = k
            break
        if k == finite:
            if finite == len(ends):
                return None
            last, got = probe(len(ends))  # only once tasks without a limit end: when is not known
            if isinstance(got, pl.Refusal):
                return None
            assume(last, got)
            return INF, got, last
        lo, k = k, 2 * k
    while hi - lo > 1:  # probe(hi) fits, ``last`` is it; probe(lo) does not (lo 0: it fits now?)
        mid = (lo + hi) // 2
        t, placed = probe(mid)
        if isinstance(placed, pl.Placement):
            hi, last, got = mid, t, placed
        else:
            lo = mid
    k = hi
    at = float(times[order[k - 1]]) if k else now
    while 0 < k < finite and times[order[k]] == at:  # those ending at the same moment free with it
        k += 1
    if k != hi:
        last, got = probe(k)
    assume(last, got)
    return at, got, last


def _released(start: pl.NodeTable, k: int, grow, offset: list[int], built: list[np.ndarray],
              done: int = 0) -> pl.NodeTable:
    """A copy of ``start`` (on which the first ``done`` ends are released) with the first k released."""
    t = start.copy()
    if k > done:
        grow(k)
        a, b = offset[done], offset[k]
        rows, use, core = built
        np.add.at(t.free, rows[a:b], use[a:b])
        np.add.at(t.core_free, rows[a:b], core[a:b])
        np.minimum(t.free, t.total, out=t.free)
        np.minimum(t.core_free, t.core_total, out=t.core_free)
    return t


def _place(t: pl.NodeTable, request: pl.Request, fit: str, weights: np.ndarray | None,
           counts: bool) -> pl.Placement | pl.Refusal:
    """``place``; without ``counts``, a request a cheap check refuses gets ``NO`` (no node counts)."""
    if not counts and not may_fit(t, request):
        return NO
    return pl.place(t, request, fit, weights)


NO = pl.Refusal("Resources", {}, 0, 0, 0, ())  # a probe's "no": its counts are never shown


def _behind(rest: Sequence[Job], work: pl.NodeTable, later: pl.NodeTable, start_at: float, now: float,
            result: PassResult, *, fit: str, weights: np.ndarray | None, refused: dict[tuple, dict[str, int]],
            default_time_limit_s: float | None, counts: bool = True) -> None:
    """Backfill ``rest`` behind a reservation from ``start_at`` (``later``: the table then, held rows taken)."""
    beside: pl.NodeTable | None = None  # min(work, later) row by row, made when first needed
    held: dict[tuple, dict[str, int]] = {}  # shapes that do not fit beside the reservation, this pass
    reasons = result.reasons
    for job in rest:
        key = job.shape
        counts = refused.get(key)
        if counts is not None:
            reasons[job.task_id] = (RESOURCES, counts)
            continue
        limit = _limit(job, default_time_limit_s)
        if start_at < INF and limit is not None and now + limit <= start_at:  # gone before the head starts
            got = _place(work, job.request, fit, weights, counts)
            if isinstance(got, pl.Refusal):
                reasons[job.task_id] = (RESOURCES, refused.setdefault(key, dict(got.counts)))
                continue
            assume(work, got)
            if beside is not None:
                _refresh(beside, work, later, got.nodes)
            result.started.append((job, got))
            continue
        if key in held:
            reasons[job.task_id] = (RESERVATION, held[key])
            continue
        if beside is None:
            beside = _beside(work, later)
        got = _place(beside, job.request, fit, weights, counts)
        if isinstance(got, pl.Placement):  # fits both now and beside the head at start_at
            for t in (work, later, beside):
                assume(t, got)
            result.started.append((job, got))
            continue
        now_got = _place(work, job.request, fit, weights, counts)  # a probe: is it the reservation that holds it?
        if isinstance(now_got, pl.Refusal):
            reasons[job.task_id] = (RESOURCES, refused.setdefault(key, dict(now_got.counts)))
        else:
            reasons[job.task_id] = (RESERVATION, held.setdefault(key, dict(got.counts)))


def _beside(work: pl.NodeTable, later: pl.NodeTable) -> pl.NodeTable:
    """What is free both now and at the reservation's start beside it, row by row."""
    t = work.copy()
    _refresh(t, work, later, np.arange(len(work.names)))
    return t


def _refresh(beside: pl.NodeTable, work: pl.NodeTable, later: pl.NodeTable, rows: np.ndarray) -> None:
    """Recompute ``beside`` on ``rows`` (a job that ends before the reservation took them from ``work``)."""
    beside.free[rows] = np.minimum(work.free[rows], later.free[rows])
    beside.core_free[rows] = np.minimum(work.core_free[rows], later.core_free[rows])
    # per-core minima may sum below the cpu minimum: the cpu budget never exceeds the cores'
    beside.free[rows, 0] = np.minimum(beside.free[rows, 0], beside.core_free[rows].sum(1))
