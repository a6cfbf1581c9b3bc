"""Exact and reference solvers for one pipeline at one load.

``solve`` is exact: it returns a configuration of the same objective value
(and the same feasibility, shortfall and violation) as ``solve_exhaustive``,
which tries every combination with itertools. How:

1. Each option's replica count is forced (see :mod:`.options`), so a stage
   is a list of (latency, accuracy, weighted cost) points.
2. Admissible options are those achieving the least shortfall; the latency
   budget is the SLO, or the least achievable latency if the SLO cannot be
   met. Ranking configurations by the documented key then amounts to
   maximising the objective subject to latency <= budget.
3. The objective ``alpha * A - C`` is not separable (A is a product by
   default), so a dynamic program over stages keeps, per prefix of stages,
   the Pareto front of partial configurations in (latency up = bad,
   accuracy accumulator down = bad, cost up = bad): a dominated prefix can
   never complete into a better configuration than its dominator, because
   every step (add, multiply, min) is monotone, in floating point too.
4. Prefixes are also dropped when no completion fits the budget, or when an
   upper bound on their best completion (from backward 2-D fronts of the
   remaining stages: least latency, best accuracy, least cost, and for
   sum/mean the best separable value) is below the incumbent, first given
   by the greedy.
5. The complete configurations left are scored in the canonical order and
   the best by the ranking key is returned.
"""

from __future__ import annotations

import itertools

import numpy as np

from oaasd.pipeline.greedy import greedy_choice, solve_greedy
from oaasd.pipeline.model import Decision, Pipeline, SolveRequest
from oaasd.pipeline.options import (
    StageOptions,
    accumulator,
    admissible,
    build_decision,
    final_accuracy,
    latency_budget,
    option_tables,
    rank_key,
    score,
    score_rows,
)
from oaasd.pipeline.pareto import pareto_keep, staircase, staircase_lookup

__all__ = ["solve", "solve_exhaustive", "solve_greedy", "solve_request", "exact_choice",
           "exhaustive_choice"]

# Bounds are computed in a different float order than the canonical score:
# widen them by this relative slack so they stay true upper bounds.
_SLACK = 1e-9


def solve(pipeline: Pipeline, load_rps: float, *,
          fill_load_rps: float | None = None) -> Decision:
    """Exact decision for ``load_rps``: same objective as ``solve_exhaustive``.

    ``fill_load_rps`` (default ``load_rps``) is the load the batch-fill wait
    is computed at; see :func:`.options.option_tables`.
    """
    tables = option_tables(pipeline, load_rps, fill_load_rps)
    return build_decision(pipeline, tables, exact_choice(pipeline, tables), load_rps,
                          fill_load_rps, "exact")


def solve_request(request: SolveRequest) -> Decision:
    """Answer a ``POST /v1/pipelines/solve`` body (already validated)."""
    solver = solve if request.method == "exact" else solve_greedy
    return solver(request.pipeline, request.load_rps, fill_load_rps=request.fill_load_rps)


def solve_exhaustive(pipeline: Pipeline, load_rps: float, *,
                     fill_load_rps: float | None = None) -> Decision:
    """Reference decision: every combination of options, ranked by the key."""
    tables = option_tables(pipeline, load_rps, fill_load_rps)
    return build_decision(pipeline, tables, exhaustive_choice(pipeline, tables), load_rps,
                          fill_load_rps, "exhaustive")


def exhaustive_choice(pipeline: Pipeline, tables: list[StageOptions]) -> tuple[int, ...]:
    """Best configuration by ``rank_key`` over all prod(k_s) combinations."""
    rows = [t.rows() for t in tables]
    best, best_key = None, None
    for choice in itertools.product(*(range(len(t)) for t in tables)):
        s = score_rows(pipeline, [r[o] for r, o in zip(rows, choice)])
        key = rank_key(pipeline, s, choice)
        if best_key is None or key < best_key:
            best, best_key = choice, key
    return best


class _Stage:
    """One stage's surviving options: arrays (k,) sorted by option index."""

    def __init__(self, table: StageOptions, idx: np.ndarray):
        self.index = idx
        self.lat = table.latency_ms[idx]
        self.acc = table.accuracy[idx]
        self.cost = table.cost[idx]


def _prune_stage(table: StageOptions, idx: np.ndarray) -> _Stage:
    """Drop options dominated in (latency, accuracy, cost) within the stage."""
    st = _Stage(table, idx)
    keep = pareto_keep(st.lat, st.acc, st.cost)
    return _Stage(table, idx[keep])


def exact_choice(pipeline: Pipeline, tables: list[StageOptions]) -> tuple[int, ...]:
    """Best configuration by ``rank_key``, by the pruned DP of the module doc."""
    _, allowed = admissible(tables)
    budget = latency_budget(pipeline, tables, allowed)
    stages = [_prune_stage(t, a) for t, a in zip(tables, allowed)]
    # The greedy's configuration is within the budget: a valid lower bound.
    lb = score(pipeline, tables, greedy_choice(pipeline, tables, allowed, budget)).objective
    if np.isinf(budget):
        # Some stage can only batch at zero load: every configuration waits
        # forever, latency no longer ranks, and the problem is unconstrained.
        for st in stages:
            st.lat = np.zeros_like(st.lat)
        budget = 0.0
    (lat, g, cost), parents = _forward(pipeline, stages, budget, lb)
    acc = final_accuracy(pipeline.accuracy_combine, g, len(stages))
    obj = pipeline.alpha * acc - cost
    # rank_key order within the budget: -objective, latency, cost, -accuracy, position
    best = int(np.lexsort((np.arange(len(obj)), -acc, cost, lat, -obj))[0])
    choice = []
    for st, (prev, opt) in zip(reversed(stages), reversed(parents)):
        choice.append(int(st.index[opt[best]]))
        best = int(prev[best])
    return tuple(reversed(choice))


def _forward(pipeline: Pipeline, stages: list[_Stage], budget: float, lb: float):
    """The DP over stages: complete configurations within ``budget`` that may
    beat ``lb``, as ((lat, g, cost) arrays (m,), per-stage (prev, option))."""
    bounds = _Bounds(pipeline, stages, budget)
    tol = _SLACK * (1.0 + abs(lb) + bounds.scale)
    ident, op = accumulator(pipeline.accuracy_combine)
    lat, g, cost = np.zeros(1), np.full(1, ident), np.zeros(1)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    for s, st in enumerate(stages):
        m, k = len(lat), len(st.lat)
        # Expansion in (prefix, option) order keeps states in lexicographic
        # order of their option tuples: array position is the tie-break.
        lat = (lat[:, None] + st.lat[None, :]).ravel()
        g = op(g[:, None], st.acc[None, :]).ravel()
        cost = (cost[:, None] + st.cost[None, :]).ravel()
        prev, opt = np.divmod(np.arange(m * k), k)
        ok = bounds.least_latency(lat, s + 1) <= budget
        if s + 1 < len(stages):  # the last stage's states are complete: no pruning
            ok &= bounds.upper(lat, g, cost, s + 1) >= lb - tol
            sel = np.flatnonzero(ok)
            sel = sel[pareto_keep(lat[sel], g[sel], cost[sel])]
        else:
            sel = np.flatnonzero(ok)
        lat, g, cost = lat[sel], g[sel], cost[sel]
        parents.append((prev[sel], opt[sel]))
    return (lat, g, cost), parents


class _Bounds:
    """Backward 2-D fronts over suffixes of stages, used only as bounds."""

    def __init__(self, pipeline: Pipeline, stages: list[_Stage], budget: float):
        self.pipeline, self.budget = pipeline, budget
        kind = pipeline.accuracy_combine
        self.kind, self.n = kind, len(stages)
        ident, self.op = accumulator(kind)
        self.min_lat = [float(st.lat.min()) for st in stages]
        self.scale = pipeline.alpha * max(1.0, float(self.n)) + sum(
            float(np.abs(st.cost).max()) for st in stages)
        # Suffix s covers stages s..n-1; suffix n is empty.
        self.cost_front = [None] * (self.n + 1)
        self.acc_front = [None] * (self.n + 1)
        self.value_front = [None] * (self.n + 1)
        self.cost_front[self.n] = (np.zeros(1), np.zeros(1))
        self.acc_front[self.n] = (np.zeros(1), np.full(1, ident))
        self.value_front[self.n] = (np.zeros(1), np.zeros(1))
        per = pipeline.alpha / (self.n if kind == "mean" else 1)
        prefix_min = np.concatenate([[0.0], np.cumsum(self.min_lat)])
        for s in range(self.n - 1, -1, -1):
            st, cap = stages[s], budget - prefix_min[s] + 1e-9 * (1 + abs(budget))
            self.cost_front[s] = staircase(*self._join(st.lat, st.cost, self.cost_front[s + 1],
                                                       np.add), cap, larger_better=False)
            self.acc_front[s] = staircase(*self._join(st.lat, st.acc, self.acc_front[s + 1],
                                                      self.op), cap, larger_better=True)
            if kind in ("sum", "mean"):
                self.value_front[s] = staircase(*self._join(
                    st.lat, per * st.acc - st.cost, self.value_front[s + 1], np.add),
                    cap, larger_better=True)

    @staticmethod
    def _join(lat, val, front, op):
        flat, fval = front
        return ((lat[:, None] + flat[None, :]).ravel(), op(val[:, None], fval[None, :]).ravel())

    def least_latency(self, lat: np.ndarray, s: int) -> np.ndarray:
        """Latency of each prefix completed by the fastest option of stages s..n-1."""
        for j in range(s, self.n):
            lat = lat + self.min_lat[j]  # canonical order: exact, not a bound
        return lat

    def upper(self, lat, g, cost, s: int) -> np.ndarray:
        """Upper bound on the objective of any completion within the budget
        (-inf where no completion fits)."""
        room = (self.budget - lat) * (1 + 1e-12) + 1e-9 * (1 + abs(self.budget))
        best_cost, found = staircase_lookup(self.cost_front[s], room)
        best_acc, _ = staircase_lookup(self.acc_front[s], room)
        acc = final_accuracy(self.kind, self.op(g, best_acc), self.n)
        ub = self.pipeline.alpha * acc - cost - best_cost
        if self.kind in ("sum", "mean"):
            per = self.pipeline.alpha / (self.n if self.kind == "mean" else 1)
            value, _ = staircase_lookup(self.value_front[s], room)
            ub = np.minimum(ub, per * g - cost + value)
        return np.where(found, ub, -np.inf)
