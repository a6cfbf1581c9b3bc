"""Pareto fronts and scalarizations of several objectives.

Arrays: ``points: (m, k)`` objective values, one row per trial, ``senses``
one ``"minimize"``/``"maximize"`` per column.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

CHEBYSHEV_RHO = 0.05


def to_minimize(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """``(m, k)`` values with maximized columns negated, so smaller is better everywhere."""
    points = np.asarray(points, float).reshape(len(points), -1)
    sign = np.array([-1.0 if s == "maximize" else 1.0 for s in senses])
    return points * sign


def pareto_front(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of ``points: (m, k)``.

    A row is dominated when another is at least as good in every column and
    strictly better in one; equal rows do not dominate each other.
    """
    P = to_minimize(points, senses)
    if len(P) == 0:
        return np.empty(0, dtype=np.int64)
    le = (P[:, None, :] <= P[None, :, :]).all(axis=2)   # le[i, j]: i at least as good as j
    lt = (P[:, None, :] < P[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    return np.flatnonzero(~dominated)


def normalize(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """``(m, k)`` values to minimize, scaled to [0, 1] per column over the rows given."""
    P = to_minimize(points, senses)
    lo, hi = P.min(axis=0), P.max(axis=0)
    return (P - lo) / np.where(hi > lo, hi - lo, 1.0)


def chebyshev(points: np.ndarray, senses: Sequence[str], weights: np.ndarray) -> np.ndarray:
    """``(m,)`` augmented Chebyshev scalarization (to minimize) with ``weights: (k,)``.

    ``max_i w_i y_i + rho * sum_i w_i y_i`` on normalized values: every
    Pareto-optimal point minimizes it for some weights, even on a concave front.
    """
    Y = normalize(points, senses)
    W = Y * np.asarray(weights, float)
    return W.max(axis=1) + CHEBYSHEV_RHO * W.sum(axis=1)


def random_weights(rng: np.random.Generator, k: int) -> np.ndarray:
    """Weights drawn uniformly from the simplex."""
    return rng.dirichlet(np.ones(k))


def hypervolume_2d(points: np.ndarray, senses: Sequence[str], reference: Sequence[float]) -> float:
    """Area dominated by two-objective ``points`` and bounded by ``reference`` (benchmarks)."""
    P = to_minimize(points, senses)
    ref = to_minimize(np.asarray(reference, float)[None, :], senses)[0]
    P = P[(P < ref).all(axis=1)]
    if len(P) == 0:
        return 0.0
    P = P[pareto_front(P, ["minimize", "minimize"])]
    P = P[np.argsort(P[:, 0])]
    xs = np.append(P[1:, 0], ref[0])
    return float(np.sum((xs - P[:, 0]) * (ref[1] - P[:, 1])))
