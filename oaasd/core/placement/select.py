"""Selection: which of the passing nodes a request takes, all or nothing.

``place`` is the stage a single request goes through: ``checks.candidates``,
a scorer on those rows, ``rank`` (argmax, ties by node order; ``pick`` is the
same by repeated argmin / argmax on a masked vector, for the pass), the per-core
check on the best rows, then a gang of k workers dealt over the ranked rows
(``pack_slots`` fills the best first, ``spread_slots`` one per row per round)
and its per-core shares packed (``cores.pack_cores``); a gang that does not
fit whole is refused whole. ``could_ever_fit`` asks the same of the cluster
as configured, for intake. Pure numpy: never writes to the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from oaasd.core.placement.checks import (
    Refusal,
    Shortfall,
    candidates,
    could_hold,
    device_row,
    fine_fit,
    passing,
    refuse,
)
from oaasd.core.placement.cores import equal_fit_row, pack_cores, pack_equal_row
from oaasd.core.placement.scoring import score_rows, scorer
from oaasd.core.placement.table import NodeTable, Placement, Request

_ONE = np.ones(1, np.int64)


def rank(idx: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The best min(k, m) rows, best first, ties by node order: (<=k,) int64.

    idx: (m,) int64 candidate rows in ascending node order; score: (m,) float64.
    Never sorts all m rows when m is large: k argmax passes for a small gang,
    else a partition around the k-th score and a sort of the k winners.
    """
    m = len(idx)
    if k == 1 and m:
        return idx[[int(np.argmax(score))]]  # argmax returns the first maximum
    if m > 256 and k <= 8:  # one pass per worker; the taken row drops out
        left = score.copy()
        best = []
        for _ in range(k):
            best.append(int(left.argmax()))
            left[best[-1]] = -np.inf
        return idx[best]
    if m > 256 and m > k:
        cut = np.partition(score, m - k)[m - k]  # k-th largest score
        above = np.flatnonzero(score > cut)
        ties = np.flatnonzero(score == cut)[: k - len(above)]  # lowest rows win ties
        keep = np.sort(np.concatenate([above, ties]))
        idx, score = idx[keep], score[keep]
    return idx[np.argsort(-score, kind="stable")[:k]]


def pick(masked: np.ndarray, k: int, fits: Callable[[int], bool] | None,
         holds: Callable[[int], int] | None, arg: Callable[[], Any],
         empty: float) -> tuple[list[int] | None, list[float]]:
    """Up to k rows picked by repeated ``arg`` (argmin or argmax: the first extreme, so ties go
    by node order) on ``masked``, skipping rows ``fits`` refuses and stopping early once
    the rows taken hold k workers (``holds``); each taken or skipped row is set to
    ``empty`` in place. (None, []) after 4k + 16 refused rows."""
    best: list[int] = []
    vals: list[float] = []
    refused = held = 0
    while len(best) < k:
        i = int(arg())
        v = float(masked[i])
        if v == empty:
            break
        masked[i] = empty
        if fits is not None and not fits(i):
            refused += 1
            if refused > 4 * k + 16:
                return None, []
            continue
        best.append(i)
        vals.append(v)
        if holds is not None:
            held += holds(i)
            if held >= k:
                break
    return best, vals


# The ranked rows of a gang number at most k, one worker or more each: the
# two dealers below work on plain ints, which costs less than numpy calls on
# arrays this small. They never see the n nodes.


def pack_slots(cap: list[int], k: int) -> list[int]:
    """Fill ranked rows to capacity, best first, until k workers are dealt.

    cap: workers each row can hold, rows best first (at most k rows).
    """
    take = []
    for c in cap:
        take.append(min(c, k))
        k -= take[-1]
    return take


def spread_slots(cap: list[int], k: int) -> list[int]:
    """Deal k workers round-robin over ranked rows, one per row per round.

    cap: workers each row can hold, rows best first (at most k rows).
    """
    if sum(cap) <= k:
        return list(cap)
    lo, hi = 1, k  # rounds needed: the smallest level with sum(min(c, level)) >= k
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if sum(min(c, mid) for c in cap) < k else (lo, mid)
    take = [min(c, lo - 1) for c in cap]
    left = k - sum(take)
    for i, c in enumerate(cap):  # the last round, best rows first
        if left and c >= lo:
            take[i] += 1
            left -= 1
    return take


# ---------------------------------------------------------------- place


def place(table: NodeTable, request: Request, fit: str = "best",
          weights: np.ndarray | None = None) -> Placement | Refusal:
    """Choose nodes for every worker of ``request``, all or nothing; never mutates ``table``
    (the cores of a plain cpu request are bound by ``reserve``)."""
    score_of = scorer(fit)
    cand = candidates(table, request)
    k = request.workers
    if cand.size:  # score only the rows that passed: the built-in scorers take rows
        score = score_rows(score_of, table, request, weights, cand)
        if k == 1 and not (request.cores or request.exclusive or request.gpu_milli):  # the common case
            return Placement(((int(cand[score.argmax()]), 1),), request.demand_row, table.no_core_use)
        cand = _best_rows(table, request, cand, score, k)
    slots = 0
    if cand.size:
        if k == 1:
            return build_placement(table, request, cand, _ONE)
        cap, core_use = _capacity(table, request, cand, k)
        take = spread_slots(cap, k) if request.spread else pack_slots(cap, k)
        if sum(take) == k:
            m = len(take) - take.count(0)  # the rows used are a prefix of the ranked rows
            if take[:m] != cap[:m]:  # the per-core packing was made for more workers
                core_use = None
            return build_placement(table, request, cand[:m], np.array(take[:m], np.int64),
                                   None if core_use is None else core_use[:m])
        slots = sum(cap)
    return refuse(table, request, slots)


def _best_rows(table: NodeTable, request: Request, cand: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The best min(k, m) rows of ``cand`` that also pass the per-core and per-device
    checks: (<=k,) int64.

    Those checks cost (m, c): they run on the best few rows first and on all
    of them only when too few of those pass.
    """
    if not (request.cores or request.gpu_milli):
        return rank(cand, score, k)
    if k == 1 and not request.exclusive and (not request.cores or request.shares[0] == request.shares[-1]):
        return _first_fitting(table, request, cand, score)
    hold = could_hold(table, request).take(cand)  # too few cores or devices ever: out first
    if not hold.all():
        cand, score = cand.compress(hold), score.compress(hold)
    top = rank(cand, score, min(len(cand), 4 * k + 16))
    fit = fine_fit(table, request, top)
    if fit.sum() >= k or len(top) == len(cand):
        return top[fit][:k]
    keep = fine_fit(table, request, cand)
    return rank(cand[keep], score[keep], k)


def _first_fitting(table: NodeTable, request: Request, cand: np.ndarray, score: np.ndarray) -> np.ndarray:
    """For one worker: the best row of ``cand`` whose cores and devices take it, by
    repeated argmax (the first maximum: ties by node order), each row checked on plain
    ints: what ``_best_rows`` answers, without checking rows it does not reach."""
    left = score.copy()
    share, p = (int(request.shares[0]), len(request.shares)) if request.cores else (0, 0)
    for _ in range(len(cand)):
        j = int(left.argmax())
        if left[j] == -np.inf:
            break
        left[j] = -np.inf
        i = int(cand[j])
        if share and sum(c >= share for c in table.core_free[i].tolist()) < p:
            continue
        if request.gpu_milli and not equal_fit_row(device_row(table, request, i), *request.gpu_shares, 1):
            continue
        return cand[j:j + 1]
    return cand[:0]


def _capacity(table: NodeTable, request: Request, rows: np.ndarray,
              k: int) -> tuple[list[int], np.ndarray | None]:
    """Workers each of the (at most k) ``rows`` can hold, at most k, and for a request
    with per-core shares the cores those workers would take ((m, c) int64, else None)."""
    cap = [min([k] + [f[r] // amount for r, amount in request.asked]) for f in table.free[rows].tolist()]
    if request.gpu_milli:
        share, p = request.gpu_shares
        cap = [equal_fit_row(device_row(table, request, i), share, p, c) for i, c in zip(rows.tolist(), cap)]
    if request.cores:
        packed, core_use = pack_cores(table.core_free[rows], request.shares, np.array(cap, np.int64))
        return packed.tolist(), core_use
    return cap, None


def build_placement(table: NodeTable, request: Request, rows: np.ndarray, slots: np.ndarray,
                    core_use: np.ndarray | None = None) -> Placement:
    """The Placement of ``slots`` workers on ``rows``, recording per-core shares
    (``core_use``: pack_cores' answer for exactly these slots, when already known)."""
    gpu_use = None
    if request.exclusive:  # the whole node, whatever the workers use
        use, core_use = table.total[rows], table.core_total[rows]
        gpu_use = table.gpu_total[rows] if use[:, 2].any() else None
    elif len(rows) == 1 and slots[0] == 1 and not request.cores:  # the common case, no copies
        use, core_use = request.demand_row, table.no_core_use
        if request.gpu_milli:
            gpu_use = np.array([pack_equal_row(device_row(table, request, int(rows[0])), *request.gpu_shares, 1)])
    else:
        use = slots[:, None] * request.demand
        if core_use is None and request.cores:
            _, core_use = pack_cores(table.core_free[rows], request.shares, slots)
        elif core_use is None:
            core_use = np.zeros((len(rows), table.core_free.shape[1]), np.int64)
        if request.gpu_milli:  # a few rows: the one-row packing on plain ints
            share, p = request.gpu_shares
            gpu_use = np.array([pack_equal_row(device_row(table, request, i), share, p, t)
                                for i, t in zip(rows.tolist(), slots.tolist())], np.int64)
    return Placement(tuple(zip(rows.tolist(), slots.tolist())), use, core_use, request.exclusive, gpu_use)


def could_ever_fit(table: NodeTable, request: Request) -> Refusal | None:
    """None if the request fits the cluster as configured (every node idle, drained and
    down ones included), else a ``BadConstraints`` Refusal: refuse it at intake (422)."""
    conf = table.configured
    cand = np.flatnonzero(passing(conf, request))
    k = request.workers
    if cand.size >= k:  # every passing node holds at least one worker
        return None
    slots = sum(_capacity(conf, request, cand, k)[0]) if cand.size else 0
    if slots >= k:
        return None
    refusal = refuse(conf, request, slots, "BadConstraints")
    if cand.size:
        refusal = replace(refusal, detail=refusal.detail + (Shortfall("workers", k, slots, slots),))
    return refusal
