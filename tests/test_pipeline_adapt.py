"""The adaptation step and its replay over the example's load surge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oaasd.pipeline import Pipeline, solve, solve_greedy
from oaasd.pipeline.adapt import decide, outcome_at, plan, replay
from oaasd.pipeline.predictors import HoltPredictor, WindowMaxPredictor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline"


@pytest.fixture(scope="module")
def example():
    pipeline = Pipeline.model_validate_json((EXAMPLE / "profile.json").read_text())
    load = np.array(json.loads((EXAMPLE / "load.json").read_text())["load_rps"])
    return pipeline, load


def test_plan_is_forecast_then_decide(example) -> None:
    pipeline, load = example
    history = load[:130]
    forecast, decision = plan(pipeline, history, HoltPredictor(), horizon=2, headroom=0.1)
    assert forecast == HoltPredictor().predict(history, 2)
    assert decision.load_rps == pytest.approx(forecast * 1.1)
    assert decision.fill_load_rps == pytest.approx(forecast / 1.1)
    assert decision == solve(pipeline, forecast * 1.1, fill_load_rps=forecast / 1.1)
    _, greedy = decide(pipeline, forecast, 0.1, solver=solve_greedy)
    assert greedy.method == "greedy"
    with pytest.raises(ValueError, match="headroom"):
        decide(pipeline, 10.0, -0.1)


def test_outcome_at_the_actual_load(example) -> None:
    pipeline, _ = example
    d = solve(pipeline, 40.0)
    same = outcome_at(pipeline, d, 40.0)
    assert same.latency_ms == d.latency_ms and same.meets_slo
    slower_fill = outcome_at(pipeline, d, 20.0)  # batches of 2 wait 50 ms instead of 25
    assert slower_fill.latency_ms == pytest.approx(d.latency_ms + 25.0 * sum(
        s.batch > 1 for s in d.stages))
    assert not outcome_at(pipeline, d, 400.0).meets_slo  # capacity short


def test_surge_goes_lighter_wider_and_back(example) -> None:
    pipeline, load = example
    steps = replay(pipeline, load, WindowMaxPredictor(window=3), horizon=1, headroom=0.2,
                   warmup=6)
    by_t = {s.t: s.decision for s in steps}
    before = [by_t[t] for t in range(20, 110)]
    surge = [by_t[t] for t in range(145, 195)]
    after = [by_t[t] for t in range(260, 350)]

    def share(decisions, stage, variant):
        return np.mean([d.stages[stage].variant == variant for d in decisions])

    assert share(before, 0, "yolov5m") > 0.7 and share(after, 0, "yolov5m") > 0.7
    assert share(surge, 0, "yolov5n") == 1.0
    for i in range(3):
        assert np.median([d.stages[i].batch for d in surge]) > np.median(
            [d.stages[i].batch for d in before])
        assert np.median([d.stages[i].replicas for d in surge]) > np.median(
            [d.stages[i].replicas for d in before])
    assert np.mean([s.outcome.meets_slo for s in steps]) > 0.9
