"""Batch placement: many single-worker requests matched to nodes at once.

``assign_batch`` is the alternative to ``passes.place_queue`` where queue
order strands requests on scarce labelled or GPU nodes: each round matches a
chunk of requests x node-slots with ``match`` (scipy's
linear_sum_assignment) on a working copy, then commits in queue order the
pairs that still fit. Imported by its users only (scipy.optimize costs ~0.6 s
of start-up the daemon does not need).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from oaasd.core.placement.checks import Refusal, fine_fit, passing
from oaasd.core.placement.scoring import scorer
from oaasd.core.placement.select import build_placement, place
from oaasd.core.placement.table import NodeTable, Placement, Request, reserve

_ONE = np.ones(1, np.int64)


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
            out[todo[rows[i]]] = p = build_placement(work, req, row, _ONE)
            reserve(work, req, p)
            placed[rows[i]] = True
    return placed


def _fits(table: NodeTable, request: Request, rows: np.ndarray) -> bool:
    """Whether one worker still fits each of ``rows`` (labels and state already checked)."""
    if (table.free[rows] < request.demand).any():
        return False
    return not (request.cores or request.gpu_milli) or bool(fine_fit(table, request, rows).all())


def match(cost: np.ndarray, slots: np.ndarray,
          max_columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Assign rows to columns, at most slots[j] rows to column j: most rows first, then least cost.

    cost: (q, n) float64 in [0, 1], inf where row i cannot take column j;
    slots: (n,) int64. One linear_sum_assignment over rows x column-slots; with
    more than ``max_columns`` slots (default 2q + 64) only the cheapest columns
    and each row's cheapest column are offered. Returns (rows, cols) int64.
    """
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
