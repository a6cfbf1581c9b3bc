"""Pareto fronts in two and three criteria, as whole-array operations.

Criteria are (latency: smaller is better, accuracy: larger is better, cost:
smaller is better). Among exactly equal points the earliest (smallest array
position) is kept, which is how the exact solver preserves the documented
tie-break.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 256


def pareto_keep(lat: np.ndarray, acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Mask (n,) bool of the points no other point dominates.

    Point j dominates i when lat_j <= lat_i, acc_j >= acc_i, cost_j <= cost_i
    and j comes first in the order (lat, -acc, cost, position). Points are
    swept in that order; each block of 256 is checked against a 2-D
    (acc, cost) staircase of every earlier point, then pairwise within the
    block. Cost is O(n log n + n * block).
    """
    n = len(lat)
    if n <= 1:
        return np.ones(n, dtype=bool)
    order = np.lexsort((np.arange(n), cost, -acc, lat))
    a, c = acc[order], cost[order]
    dominated = np.zeros(n, dtype=bool)
    stair_a = np.empty(0)  # staircase of earlier points: acc ascending, cost ascending
    stair_c = np.empty(0)
    for start in range(0, n, _BLOCK):
        ba, bc = a[start:start + _BLOCK], c[start:start + _BLOCK]
        hit = np.zeros(len(ba), dtype=bool)
        if len(stair_a):
            pos = np.searchsorted(stair_a, ba, side="left")
            inside = pos < len(stair_a)
            hit[inside] = stair_c[pos[inside]] <= bc[inside]
        earlier = np.tri(len(ba), k=-1, dtype=bool).T  # earlier[j, i]: j before i
        hit |= (earlier & (ba[:, None] >= ba[None, :]) & (bc[:, None] <= bc[None, :])).any(0)
        dominated[start:start + len(ba)] = hit
        stair_a, stair_c = _merge_staircase(stair_a, stair_c, ba[~hit], bc[~hit])
    keep = np.empty(n, dtype=bool)
    keep[order] = ~dominated
    return keep


def _merge_staircase(sa, sc, ba, bc):
    """2-D front (max acc, min cost) of the union, as acc ascending, cost ascending."""
    a, c = np.concatenate([sa, ba]), np.concatenate([sc, bc])
    order = np.lexsort((c, -a))  # acc descending, then cost ascending
    a, c = a[order], c[order]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], c[:-1]]))
    keep = c < best_before
    return a[keep][::-1], c[keep][::-1]


def staircase(lat: np.ndarray, val: np.ndarray, cap: float, larger_better: bool):
    """2-D front of (lat, val) with lat <= cap: lat ascending, val strictly improving.

    Returns (lat, val) arrays; the best value reachable within a latency x is
    the value of the last point with lat <= x.
    """
    inside = lat <= cap
    lat, val = lat[inside], val[inside]
    sign = -1.0 if larger_better else 1.0
    order = np.lexsort((sign * val, lat))
    lat, val = lat[order], val[order]
    if len(val) == 0:
        return lat, val
    key = sign * val
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], key[:-1]]))
    keep = key < best_before
    return lat[keep], val[keep]


def staircase_lookup(front, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best value of ``front`` within latency ``x`` (elementwise), and a mask
    of where any point fits (elsewhere the value is a finite placeholder)."""
    flat, fval = front
    pos = np.searchsorted(flat, x, side="right") - 1
    found = pos >= 0
    if len(fval) == 0:
        return np.zeros(len(x)), found
    return fval[np.maximum(pos, 0)], found
