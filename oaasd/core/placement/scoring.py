"""Scoring and selection: which nodes, and which cores, a request should take.

Scorers rank nodes for one more worker; ``rank`` takes the best rows, ties by
node order; ``pack_slots``/``spread_slots`` share a gang's workers over the
ranked rows; ``pack_cores`` chooses cores for per-process shares (best fit);
``match`` assigns many requests at once (linear_sum_assignment). Everything
here is numpy over arrays ``placement`` hands in, and never writes to them.

A scorer is ``(table, request, weights=None) -> (n,) float64`` in [0, 1],
higher is better, computed for every row (rows that fail a check get a score
too; ``placement`` masks them out). The built-in ones also take ``rows``
(m,) and score only those: each row's score is a fixed sequence of
elementwise steps on that row alone (no BLAS, no reduction across rows), so
a subset scores bit for bit as it does within the whole table, and
``placement`` scores only the rows that pass its checks. Utilisation is measured *after* placing
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

from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

if TYPE_CHECKING:  # annotations only: placement imports this module
    from oaasd.core.placement.place import NodeTable, Request

DEFAULT_WEIGHTS = np.ones(3)
DEFAULT_WEIGHTS.flags.writeable = False

Scorer = Callable[..., np.ndarray]


class Factors(NamedTuple):
    """Per-weights factors of the scorers (``node_weights``).

    per_node: (n, r) float64, each row summing to 1 over the weighted
    resources the node has (0 for none); row_sum: (n,) float64 (1 or 0);
    cluster: (r,) float64 summing to 1 over resources some node has;
    absolute: cluster / largest capacity, per resource (r floats), and
    absolute_vec the same as (r,) float64; relative: per_node / the node's own
    total, (n, r) float64.
    """

    per_node: np.ndarray
    row_sum: np.ndarray
    cluster: np.ndarray
    absolute: tuple[float, ...]
    absolute_vec: np.ndarray
    relative: np.ndarray


_NO_ROOM = np.iinfo(np.int64).max


def as_weights(weights: np.ndarray | None) -> np.ndarray:
    """Validated per-resource weights: (r,) float64, non-negative."""
    if weights is None:
        return DEFAULT_WEIGHTS
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (3,) or not (w.min() >= 0 and np.isfinite(w.sum())):
        raise ValueError(f"weights must be 3 non-negative numbers, got {weights!r}")
    return w


def node_weights(table: NodeTable, weights: np.ndarray | None) -> Factors:
    """The scorers' per-weights factors, cached on the table (its totals never change)."""
    key = None if weights is None else tuple(np.asarray(weights, np.float64).ravel().tolist())
    hit = table.weight_cache.get(key)
    if hit is None:
        w = as_weights(weights)
        wm = table.has * w  # a node is scored only on the resources it has
        den = wm.sum(1, keepdims=True)
        per_node = np.asfortranarray(np.divide(wm, den, out=np.zeros(wm.shape), where=den > 0))
        wc = w * (table.cap_max > 0)
        cluster = wc / wc.sum() if wc.sum() > 0 else wc
        absolute = cluster * table.inv_cap_max
        hit = table.weight_cache[key] = Factors(
            per_node, per_node.sum(1), cluster, tuple(absolute.tolist()), absolute,
            np.asfortranarray(per_node * table.inv_total))
    return hit


def _left(table: NodeTable, request: Request, rows: np.ndarray | None) -> np.ndarray:
    """Free amount of each resource left after one more worker, floored at 0: (m, r) int64.

    Every row on its own (no reduction across rows), so scoring a subset of
    rows gives, bit for bit, the same numbers as scoring them all.
    """
    left = _per_row(table.free, rows) - request.demand
    return np.maximum(left, 0, out=left)


def _per_row(a: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """A per-node (n,) or column-major (n, r) array, for ``rows`` only when given."""
    if rows is None:
        return a
    return a.take(rows) if a.ndim == 1 else a.T.take(rows, 1).T  # gathers whole columns


def _weighted(cols: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """sum_r cols[:, r] * factors[r], added in resource order: (m,) float64.

    factors: (r,) or (m, r). Elementwise steps, never a BLAS product or a
    reduction, whose rounding could depend on the layout or the row count. A
    zero factor adds an exact +0.0 (every term is >= 0), so ``absolute_left``
    may skip it and still match bit for bit.
    """
    terms = cols * factors
    acc = terms[:, 0] + terms[:, 1]  # r >= 2 (RESOURCES): no copy of the first term
    for r in range(2, terms.shape[1]):
        acc += terms[:, r]
    return acc


def first(table: NodeTable, request: Request, weights: np.ndarray | None = None,
          rows: np.ndarray | None = None) -> np.ndarray:
    """First fit: every node scores the same, so node order decides: (m,) float64."""
    return np.ones(len(table.names) if rows is None else len(rows))


def worst(table: NodeTable, request: Request, weights: np.ndarray | None = None,
          rows: np.ndarray | None = None) -> np.ndarray:
    """Worst fit: most absolute leftover after placing scores highest: (m,) float64."""
    return _weighted(_left(table, request, rows), node_weights(table, weights).absolute_vec)


def absolute_left(row: list[int], demand: list[int], factors: tuple[float, ...]) -> float:
    """``worst``'s score of one node, in Python floats: bit for bit the same number.

    row: the node's free amounts; demand: one worker's; factors:
    ``node_weights(...).absolute``. The same steps as ``_left`` and
    ``_weighted`` (IEEE doubles both, no fused multiply-add in either).
    """
    acc = None
    for f, x, a in zip(row, demand, factors):
        if a == 0.0:
            continue
        term = max(f - x, 0) * a
        acc = term if acc is None else acc + term
    return 0.0 if acc is None else acc


def best(table: NodeTable, request: Request, weights: np.ndarray | None = None,
         rows: np.ndarray | None = None) -> np.ndarray:
    """Best fit: least absolute leftover after placing scores highest: (m,) float64."""
    left = worst(table, request, weights, rows)
    return np.subtract(1.0, left, out=left)


def least_allocated(table: NodeTable, request: Request, weights: np.ndarray | None = None,
                    rows: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean free fraction after placing (spreads load): (m,) float64."""
    relative = _per_row(node_weights(table, weights).relative, rows)
    return _weighted(_left(table, request, rows), relative)


def most_allocated(table: NodeTable, request: Request, weights: np.ndarray | None = None,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean used fraction after placing (packs load): (m,) float64."""
    row_sum = _per_row(node_weights(table, weights).row_sum, rows)
    return row_sum - least_allocated(table, request, weights, rows)


def balanced(table: NodeTable, request: Request, weights: np.ndarray | None = None,
             rows: np.ndarray | None = None) -> np.ndarray:
    """One minus the weighted std of per-resource utilisation after placing: (m,) float64."""
    per = _per_row(node_weights(table, weights).per_node, rows)
    used = 1.0 - _left(table, request, rows) * _per_row(table.inv_total, rows)
    dev = used - _weighted(used, per)[:, None]
    return 1.0 - np.sqrt(_weighted(dev * dev, per))


SCORERS: dict[str, Scorer] = {
    "first": first,
    "best": best,
    "worst": worst,
    "least_allocated": least_allocated,
    "most_allocated": most_allocated,
    "balanced": balanced,
}


BUILTIN = frozenset(SCORERS.values())  # finite, in [0, 1], and take ``rows``


def score_rows(score_of: Scorer, table: NodeTable, request: Request, weights: np.ndarray | None,
               rows: np.ndarray) -> np.ndarray:
    """The scores of ``rows`` alone: (m,) float64, equal to ``score_of(table, ...)[rows]``.

    A built-in scorer computes only those rows when they are fewer than half
    the table (gathering them costs more than scoring contiguous columns).
    """
    if score_of in BUILTIN and 2 * len(rows) < len(table.names):
        return score_of(table, request, weights, rows)
    return score_of(table, request, weights)[rows]


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


def pack_equal_row(cores: list[int], share: int, count: int) -> list[int]:
    """``_pack_equal`` for one row in plain ints: the millicores ``count`` equal shares
    take from each of ``cores`` (free per core; the caller knows they fit)."""
    use = [0] * len(cores)
    for j in sorted(range(len(cores)), key=cores.__getitem__):  # tightest core first, stable
        n = cores[j] // share
        if n >= count:
            use[j] = count * share
            break
        use[j] = n * share
        count -= n
    return use


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
