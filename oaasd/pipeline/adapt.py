"""One step of the adaptation loop, and its replay over a recorded load series.

The daemon's periodic loop observes the load, calls :func:`plan` and applies
the decision; :func:`replay` runs the same step over a whole series offline
(the example, the trace simulator) and checks each decision against the load
that actually came.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from oaasd.pipeline.model import Decision, Pipeline
from oaasd.pipeline.options import batch_wait_ms
from oaasd.pipeline.predictors import Predictor
from oaasd.pipeline.solver import solve

Solver = Callable[..., Decision]  # solve, solve_greedy: (pipeline, load, fill_load_rps=)


class Outcome(NamedTuple):
    """How a decision fares at a load: latency, capacity, and whether both hold."""

    latency_ms: float
    capacity_rps: float
    meets_slo: bool


class ReplayStep(NamedTuple):
    """One interval of a replay: what was seen, forecast, decided and happened."""

    t: int
    observed_rps: float
    predicted_rps: float
    actual_rps: float
    decision: Decision
    outcome: Outcome


def decide(pipeline: Pipeline, forecast_rps: float, headroom: float = 0.0,
           solver: Solver = solve) -> tuple[float, Decision]:
    """Decide for a forecast, with ``headroom`` both ways: replicas sized for
    ``forecast * (1 + headroom)``, batch-fill wait at ``forecast / (1 +
    headroom)``, so a forecast off by that factor either way keeps the plan.
    Returns (capacity load, decision)."""
    if headroom < 0:
        raise ValueError(f"headroom must be >= 0, got {headroom}")
    high = forecast_rps * (1.0 + headroom)
    return high, solver(pipeline, high, fill_load_rps=forecast_rps / (1.0 + headroom))


def plan(pipeline: Pipeline, history: Sequence[float], predictor: Predictor,
         horizon: int = 1, headroom: float = 0.0,
         solver: Solver = solve) -> tuple[float, Decision]:
    """One step of the periodic loop: forecast the load ``horizon`` intervals
    after ``history`` and :func:`decide` for it. Returns (forecast, decision)."""
    forecast = predictor.predict(history, horizon)
    return forecast, decide(pipeline, forecast, headroom, solver)[1]


def outcome_at(pipeline: Pipeline, decision: Decision, load_rps: float) -> Outcome:
    """Evaluate ``decision`` at the load that actually arrives (same model as
    the solver: profiled latency + batch-fill wait at that load)."""
    latency = 0.0
    for st in decision.stages:
        latency = latency + (st.latency_ms + batch_wait_ms(st.batch, load_rps))
    capacity = min(st.capacity_rps for st in decision.stages)
    return Outcome(latency, capacity, latency <= pipeline.slo_ms and capacity >= load_rps)


def replay(pipeline: Pipeline, series: Sequence[float], predictor: Predictor,
           horizon: int = 1, headroom: float = 0.0, warmup: int = 1,
           solver: Solver = solve) -> list[ReplayStep]:
    """Run the step of :func:`plan` after each observation t >= warmup - 1 and
    check the decision against the load ``horizon`` intervals later."""
    forecasts = predictor.rolling(series, horizon)  # == predict on each prefix
    steps = []
    for t in range(max(warmup, 1) - 1, len(series) - horizon):
        decision = decide(pipeline, float(forecasts[t]), headroom, solver)[1]
        actual = float(series[t + horizon])
        steps.append(ReplayStep(t, float(series[t]), float(forecasts[t]), actual, decision,
                                outcome_at(pipeline, decision, actual)))
    return steps
