"""Scoring and selection: which nodes, and which cores, a request should take.

Scorers rank nodes for one more worker; ``rank`` takes the best rows, ties by
node order; ``pack_slots``/``spread_slots`` share a gang's workers over the
ranked rows; ``pack_cores`` chooses cores for per-process shares (best fit);
``match`` assigns many requests at once (linear_sum_assignment). Everything
here is numpy over arrays ``placement`` hands in, and never writes to them.

A scorer is ``(table, request, weights=None) -> (n,) float64`` in [0, 1],
higher is better, computed for every row (rows that fail a check get a score
too; ``placement`` masks them out). Utilisation is measured *after* placing
one worker, as Kubernetes' NodeResourcesFit does. ``weights`` is ``(r,)``
float per resource in ``placement.RESOURCES`` order (default 1, 1, 1); a zero
weight ignores that resource, and a node that has none of a resource
(``total == 0``, e.g. no GPUs) is scored on the resources it has.

The fits of ROHE are scorers too: ``first`` is constant (ties go to node
order), ``best`` prefers the least absolute leftover after placing, ``worst``
the most. Leftover is measured against the largest node of the cluster, so
it is absolute, unlike ``most_allocated`` which is relative to each node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # annotations only: placement imports this module
    from oaasd.placement import NodeTable, Request

DEFAULT_WEIGHTS = np.ones(3)
DEFAULT_WEIGHTS.flags.writeable = False

Scorer = Callable[..., np.ndarray]
_NO_ROOM = np.iinfo(np.int64).max


def as_weights(weights: np.ndarray | None) -> np.ndarray:
    """Validated per-resource weights: (r,) float64, non-negative."""
    if weights is None:
        return DEFAULT_WEIGHTS
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (3,) or not (w.min() >= 0 and np.isfinite(w.sum())):
        raise ValueError(f"weights must be 3 non-negative numbers, got {weights!r}")
    return w


def node_weights(table: NodeTable, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights normalised per node and per cluster, cached on the table per weights.

    Returns per_node: (n, r) float64, each row summing to 1 over the weighted
    resources the node has (0 for none); row_sum: (n,) float64 (1 or 0);
    cluster: (r,) float64 summing to 1 over resources some node has.
    """
    key = None if weights is None else tuple(np.asarray(weights, np.float64).ravel().tolist())
    hit = table.weight_cache.get(key)
    if hit is None:
        w = as_weights(weights)
        wm = table.has * w  # a node is scored only on the resources it has
        den = wm.sum(1, keepdims=True)
        per_node = np.asfortranarray(np.divide(wm, den, out=np.zeros(wm.shape), where=den > 0))
        wc = w * (table.cap_max > 0)
        cluster = wc / wc.sum() if wc.sum() > 0 else wc
        hit = table.weight_cache[key] = (per_node, per_node.sum(1), cluster)
    return hit


def _free_after(table: NodeTable, request: Request, scale: np.ndarray) -> np.ndarray:
    """Free amount left after one more worker, times ``scale``, floored at 0: (n, r) float64."""
    left = (table.free - request.demand) * scale
    return np.maximum(left, 0.0, out=left)  # free <= total, so at most 1 per resource


def first(table: NodeTable, request: Request, weights: np.ndarray | None = None) -> np.ndarray:
    """First fit: every node scores the same, so node order decides: (n,) float64."""
    return np.ones(len(table.names))


def worst(table: NodeTable, request: Request, weights: np.ndarray | None = None) -> np.ndarray:
    """Worst fit: most absolute leftover after placing scores highest: (n,) float64."""
    cluster = node_weights(table, weights)[2]
    return _free_after(table, request, table.inv_cap_max) @ cluster


def best(table: NodeTable, request: Request, weights: np.ndarray | None = None) -> np.ndarray:
    """Best fit: least absolute leftover after placing scores highest: (n,) float64."""
    return 1.0 - worst(table, request, weights)


def least_allocated(table: NodeTable, request: Request, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean free fraction after placing (spreads load): (n,) float64."""
    per_node = node_weights(table, weights)[0]
    return (_free_after(table, request, table.inv_total) * per_node).sum(1)


def most_allocated(table: NodeTable, request: Request, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean used fraction after placing (packs load): (n,) float64."""
    row_sum = node_weights(table, weights)[1]
    return row_sum - least_allocated(table, request, weights)


def balanced(table: NodeTable, request: Request, weights: np.ndarray | None = None) -> np.ndarray:
    """One minus the weighted std of per-resource utilisation after placing: (n,) float64."""
    per_node = node_weights(table, weights)[0]
    used = 1.0 - _free_after(table, request, table.inv_total)
    dev = used - (used * per_node).sum(1)[:, None]
    return 1.0 - np.sqrt((dev * dev * per_node).sum(1))


SCORERS: dict[str, Scorer] = {
    "first": first,
    "best": best,
    "worst": worst,
    "least_allocated": least_allocated,
    "most_allocated": most_allocated,
    "balanced": balanced,
}


def scorer(fit: str) -> Scorer:
    """The scorer named ``fit`` (a key of SCORERS); ValueError for an unknown name."""
    try:
        return SCORERS[fit]
    except KeyError:
        raise ValueError(f"unknown fit {fit!r}; one of {', '.join(SCORERS)}") from None


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


def match(cost: np.ndarray, slots: np.ndarray,
          max_columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Assign rows to columns, at most slots[j] rows to column j: most rows first, then least cost.

    cost: (q, n) float64 in [0, 1], inf where row i cannot take column j;
    slots: (n,) int64. One linear_sum_assignment over rows x column-slots; with
    more than ``max_columns`` slots (default 2q + 64) only the cheapest columns
    and each row's cheapest column are offered. Returns (rows, cols) int64.
    """
    from scipy.optimize import linear_sum_assignment  # lazy: ~0.6 s of start-up

    q = len(cost)
    slots = np.minimum(slots, q)
    budget = 2 * q + 64 if max_columns is None else max_columns
    if slots.sum() > budget:
        order = np.argsort(cost.min(0), kind="stable")
        keep = np.zeros(len(slots), bool)
        keep[order[np.cumsum(slots[order]) <= budget]] = True
        placeable = np.isfinite(cost).any(1)
        keep[cost[placeable].argmin(1)] = True  # every row keeps its best column
        slots = np.where(keep, slots, 0)
    col = np.repeat(np.arange(len(slots)), slots)  # one column per slot
    if not (q and col.size):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c = cost[:, col]
    finite = np.isfinite(c)
    # A cost above any sum of finite costs: one more placed row always wins.
    rows, s = linear_sum_assignment(np.where(finite, c, q + 1.0))
    ok = finite[rows, s]
    return rows[ok], col[s[ok]]


def pack_cores(core_free: np.ndarray, shares: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack up to ``limit`` workers per row onto cores, best-fit decreasing.

    core_free: (m, c) int64; shares: (p,) int64 largest first; limit: (m,) int64.
    Each share goes to the tightest core that holds it (lowest index on ties).
    Returns packed: (m,) int64 workers that fit, and use: (m, c) int64 taken.
    Loops over workers and shares, never over rows.
    """
    if shares[0] == shares[-1]:
        return _pack_equal(core_free, int(shares[0]), len(shares), limit)
    rem = core_free.copy()
    packed = np.zeros(len(core_free), np.int64)
    for w in range(int(limit.max(initial=0))):
        rows = np.flatnonzero((packed == w) & (limit > w))  # every earlier worker fitted
        if not rows.size:
            break
        trial = rem[rows]
        ok = np.ones(len(rows), bool)
        at = np.arange(len(rows))
        for s in shares.tolist():
            fits = trial >= s
            j = np.where(fits, trial, _NO_ROOM).argmin(1)  # tightest core
            ok &= fits[at, j]
            trial[at, j] -= s  # rows that failed are discarded below
        rem[rows[ok]] = trial[ok]
        packed[rows[ok]] += 1
    return packed, core_free - rem


def _pack_equal(core_free: np.ndarray, share: int, p: int,
                limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pack_cores`` in closed form when all p shares are equal.

    Best fit then fills the tightest core that holds a share until it holds
    no more (it only gets tighter), then the next: cores in ascending free
    order (stable), core j taking free_j // share shares.
    """
    per = core_free // share  # (m, c) shares each core can take
    packed = np.minimum(per.sum(1) // p, limit)
    at = np.arange(len(core_free))[:, None]
    order = np.argsort(core_free, axis=1, kind="stable")
    per = per[at, order]
    before = np.cumsum(per, 1) - per
    use = np.empty_like(core_free)
    use[at, order] = np.minimum(np.maximum((packed * p)[:, None] - before, 0), per) * share
    return packed, use


def cores_fit(core_free: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Rows whose cores take one worker's shares under ``pack_cores``: (m,) bool.

    core_free: (m, c) int64; shares: (p,) int64 largest first.
    """
    roomy = np.count_nonzero(core_free >= shares[0], axis=1)  # cores that take the largest
    # With p roomy cores best fit never runs out of room; with none it never
    # fits; only the rows in between need the packing itself.
    fits = roomy >= len(shares)
    unsure = np.flatnonzero(~fits & (roomy > 0))
    if unsure.size and shares[0] == shares[-1]:  # equal shares: each core takes free // share
        fits[unsure] = (core_free[unsure] // shares[0]).sum(1) >= len(shares)
    elif unsure.size:
        packed, _ = pack_cores(core_free[unsure], shares, np.ones(unsure.size, np.int64))
        fits[unsure] = packed == 1
    return fits
