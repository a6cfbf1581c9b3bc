"""Greedy local search: a fast heuristic for pipelines too large to solve exactly.

Start from the best configuration ignoring the SLO (coordinate ascent), then
repair: while the latency is over the budget, make the single-stage swap that
loses the least objective per millisecond saved; then climb again with
single-stage swaps that keep the latency within the budget. Latency is
separable, so the repair always reaches the least-latency configuration if
it must: the greedy finds a feasible configuration whenever one exists. It
is also the exact solver's first incumbent.
"""

from __future__ import annotations

import numpy as np

from oaasd.pipeline.model import Decision, Pipeline
from oaasd.pipeline.options import (
    StageOptions,
    accumulator,
    admissible,
    build_decision,
    final_accuracy,
    latency_budget,
    option_tables,
    score,
)


def _swaps(pipeline: Pipeline, tables: list[StageOptions], allowed: list[np.ndarray],
           choice: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every single-stage swap of ``choice``, scored in the canonical order.

    Returns (stage, option, latency_ms, objective), each of shape (K,), K the
    number of allowed options over all stages.
    """
    kind = pipeline.accuracy_combine
    stage = np.concatenate([np.full(len(a), s) for s, a in enumerate(allowed)])
    option = np.concatenate(allowed)
    ident, op = accumulator(kind)
    lat = np.zeros(len(option))
    cost = np.zeros(len(option))
    g = np.full(len(option), ident)
    for s, t in enumerate(tables):
        pick = np.where(stage == s, option, choice[s])
        lat = lat + t.latency_ms[pick]
        g = op(g, t.accuracy[pick])
        cost = cost + t.cost[pick]
    return stage, option, lat, pipeline.alpha * final_accuracy(kind, g, len(tables)) - cost


def _lat_obj(pipeline: Pipeline, tables: list[StageOptions],
             choice: list[int]) -> tuple[float, float]:
    s = score(pipeline, tables, tuple(choice))
    return s.latency_ms, s.objective


def greedy_choice(pipeline: Pipeline, tables: list[StageOptions], allowed: list[np.ndarray],
                  budget_ms: float, max_rounds: int = 10_000) -> tuple[int, ...]:
    """A configuration within ``budget_ms`` if any exists (see module doc)."""
    choice = [int(a[0]) for a in allowed]
    for _ in range(max_rounds):  # ascent, SLO ignored
        stage, option, _, obj = _swaps(pipeline, tables, allowed, choice)
        best = int(np.argmax(obj))
        if obj[best] <= score(pipeline, tables, tuple(choice)).objective:
            break
        choice[stage[best]] = int(option[best])
    if np.isfinite(budget_ms):  # zero load: leave batches that never fill first
        for s, (t, a) in enumerate(zip(tables, allowed)):
            if np.isinf(t.latency_ms[choice[s]]):
                choice[s] = int(a[np.argmin(t.latency_ms[a])])
    for _ in range(max_rounds):  # repair: cheapest objective loss per ms saved
        lat_now, obj_now = _lat_obj(pipeline, tables, choice)
        if lat_now <= budget_ms:
            break
        stage, option, lat, obj = _swaps(pipeline, tables, allowed, choice)
        saved = lat_now - lat
        ok = saved > 0
        if not ok.any():  # only rounding left: take each stage's fastest option
            choice = [int(a[np.argmin(t.latency_ms[a])]) for t, a in zip(tables, allowed)]
            break
        loss = np.where(ok, (obj_now - obj) / np.where(ok, saved, 1.0), np.inf)
        best = int(np.argmin(loss))
        choice[stage[best]] = int(option[best])
    for _ in range(max_rounds):  # ascent within the budget
        obj_now = score(pipeline, tables, tuple(choice)).objective
        stage, option, lat, obj = _swaps(pipeline, tables, allowed, choice)
        obj = np.where(lat <= budget_ms, obj, -np.inf)
        best = int(np.argmax(obj))
        if obj[best] <= obj_now:
            break
        choice[stage[best]] = int(option[best])
    return tuple(choice)


def solve_greedy(pipeline: Pipeline, load_rps: float, *,
                 fill_load_rps: float | None = None) -> Decision:
    """Heuristic decision for ``load_rps``; feasible whenever one exists."""
    tables = option_tables(pipeline, load_rps, fill_load_rps)
    _, allowed = admissible(tables)
    budget = latency_budget(pipeline, tables, allowed)
    choice = greedy_choice(pipeline, tables, allowed, budget)
    return build_decision(pipeline, tables, choice, load_rps, fill_load_rps, "greedy")
