"""Inference-pipeline optimiser: variant, batch and replicas per stage under an SLO.

Pure functions over pydantic models and numpy arrays (no I/O, no asyncio):
the daemon's periodic loop, ``POST /v1/pipelines/solve``, the trace
simulator and the benchmarks all call these.

- :func:`solve` - exact decision for one load (``solve_exhaustive`` is the
  reference it is tested against, ``solve_greedy`` the fast heuristic);
- :mod:`.predictors` - next-interval load forecasts and their backtest;
- :func:`plan` - one step of the periodic loop (forecast, then solve), and
  :func:`replay` the same over a recorded series.
"""

from oaasd.pipeline.adapt import Outcome, ReplayStep, decide, outcome_at, plan, replay
from oaasd.pipeline.model import (
    Decision,
    InfeasibleReason,
    Pipeline,
    Profile,
    SolveRequest,
    Stage,
    StageDecision,
    Variant,
)
from oaasd.pipeline.predictors import (
    HoltPredictor,
    LastValuePredictor,
    Predictor,
    PredictorSpec,
    SeasonalPredictor,
    WindowMaxPredictor,
    backtest,
)
from oaasd.pipeline.solver import solve, solve_exhaustive, solve_greedy, solve_request

__all__ = [
    "Decision",
    "Outcome",
    "ReplayStep",
    "decide",
    "outcome_at",
    "plan",
    "replay",
    "HoltPredictor",
    "InfeasibleReason",
    "LastValuePredictor",
    "Pipeline",
    "Predictor",
    "PredictorSpec",
    "Profile",
    "SeasonalPredictor",
    "SolveRequest",
    "Stage",
    "StageDecision",
    "Variant",
    "WindowMaxPredictor",
    "backtest",
    "solve",
    "solve_exhaustive",
    "solve_greedy",
    "solve_request",
]
