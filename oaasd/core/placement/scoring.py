"""Scorers: how well each node suits one more worker of a request.

A scorer is ``(table, request, weights=None) -> (n,) float64`` in [0, 1],
higher is better, computed for every row (rows that fail a check get a score
too; ``select`` masks them out). The built-in ones also take ``rows``
(m,) and score only those: each row's score is a fixed sequence of
elementwise steps on that row alone (no BLAS, no reduction across rows), so
a subset scores bit for bit as it does within the whole table, and
``select.place`` scores only the rows that pass its checks. Utilisation is
measured *after* placing one worker, as Kubernetes' NodeResourcesFit does.
``weights`` is ``(r,)`` float per resource in ``table.RESOURCES`` order
(default 1, 1, 1); a zero weight ignores that resource, and a node that has
none of a resource (``total == 0``, e.g. no GPUs) is scored on the resources
it has. Everything here is numpy over the table's arrays, never written to.

The fits of ROHE are scorers too: ``first`` is constant (ties go to node
order), ``best`` prefers the least absolute leftover after placing, ``worst``
the most. Leftover is measured against the largest node of the cluster, so
it is absolute, unlike ``most_allocated`` which is relative to each node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from oaasd.core.placement.table import NodeTable, Request

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
