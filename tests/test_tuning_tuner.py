"""The tuner: baseline first, budgets and strategies, feasibility, best and Pareto."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaasd.tuning.pareto import chebyshev, hypervolume_2d, pareto_front
from oaasd.tuning.tuner import Trial, Tuner, space_fingerprint

QUANT = {
    "parameters": [
        {"name": "method", "type": "categorical", "choices": ["minmax", "smoothquant"]},
        {"name": "alpha", "type": "float", "low": 0.1, "high": 0.9,
         "condition": {"parent": "method", "equals": "smoothquant"}},
        {"name": "bits", "type": "ordinal", "choices": [4, 8, 16], "default": 16},
    ],
    "objectives": [{"metric": "latency_ms", "sense": "minimize"}],
    "constraints": [{"metric": "accuracy", "op": ">=", "value": 0.99, "relative_to": "baseline"}],
    "number_of_trials": 12, "worker_num": 3, "sampler": "gp", "seed": 0,
}


def evaluate(c: dict) -> dict:
    accuracy = {4: 0.90, 8: 0.985, 16: 0.99}[c["bits"]] + (0.004 if c.get("alpha", 0) > 0.5 else 0)
    return {"accuracy": accuracy, "latency_ms": {4: 1.0, 8: 2.0, 16: 4.0}[c["bits"]] + c.get("alpha", 0.0)}


def drive(tuner: Tuner, finish_all: bool = True) -> list[Trial]:
    """Launch what the tuner asks for and complete it at once, until it stops."""
    trials: list[Trial] = []
    for _ in range(100):
        new = tuner.suggest(trials)
        if not new:
            break
        for s in new:
            trials.append(Trial(len(trials), s.config, "COMPLETED", evaluate(s.config), s.baseline))
    return trials


def test_the_baseline_runs_first_and_alone_then_the_budget_is_spent():
    t = Tuner.from_json(QUANT)
    first = t.suggest([])
    assert len(first) == 1 and first[0].baseline and first[0].config == {"method": "minmax", "bits": 16}
    assert t.suggest([Trial(0, first[0].config, "RUNNING", baseline=True)]) == []
    trials = drive(t)
    assert len(trials) == 12 and t.stop_reason(trials) == "NumberOfTrials"
    assert t.suggest(trials) == []
    best = t.best(trials)
    # the fastest config within 1% of the baseline's 0.99: 8 bits with alpha > 0.5 (0.989 >= 0.9801)
    assert best is not None and not best.baseline and best.config["bits"] == 8
    assert t.is_feasible(best.metrics, trials)


def test_async_fills_free_workers_and_sync_works_in_rounds():
    base = Trial(0, {"method": "minmax", "bits": 16}, "COMPLETED", {"accuracy": 0.99, "latency_ms": 4.0}, True)
    running = Trial(1, {"method": "minmax", "bits": 8}, "RUNNING")
    done = Trial(1, running.config, "COMPLETED", evaluate(running.config))
    a = Tuner.from_json({**QUANT, "parallel_strategy": "async"})
    assert len(a.suggest([base])) == 3
    assert len(a.suggest([base, running])) == 2 and a.room([base, running]) == 2
    s = Tuner.from_json({**QUANT, "parallel_strategy": "sync"})
    assert s.room([base]) == 3
    # a round of 3 handed out one by one: one is out, two more belong to it, whether or not the first ended
    assert len(s.suggest([base, running])) == 2 and len(s.suggest([base, done])) == 2
    full = [base, running, Trial(2, {"method": "minmax", "bits": 4}, "RUNNING"),
            Trial(3, {"method": "smoothquant", "alpha": 0.5, "bits": 4}, "COMPLETED", evaluate({"bits": 4}))]
    assert s.room(full) == 0 and s.suggest(full) == []  # the round is out: wait until all of it ended
    ended = [full[0], done, *(Trial(t.trial_id, t.config, "TIMEOUT") for t in full[2:])]
    assert s.room(ended) == 3  # observed or timed out: the next round


def test_the_sampler_computes_only_what_is_asked_for():
    t = Tuner.from_json({**QUANT, "parallel_strategy": "async", "sampler": "random"})
    asked: list[int] = []
    real = t.sampler.suggest
    t.sampler.suggest = lambda history, pending, n: asked.append(n) or real(history, pending, n)
    base = Trial(0, {"method": "minmax", "bits": 16}, "COMPLETED", {"accuracy": 0.99, "latency_ms": 4.0}, True)
    assert len(t.suggest([base], n=1)) == 1 and len(t.suggest([base], n=5)) == 3 and len(t.suggest([base])) == 3
    assert asked == [1, 3, 3]


def test_budget_never_exceeded_and_time_budget_stops():
    t = Tuner.from_json({**QUANT, "number_of_trials": 3, "time_budget_s": 60})
    trials = drive(t)
    assert len(trials) == 3
    assert t.stop_reason(trials[:2], elapsed_s=61) == "TimeBudget"


def test_first_feasible_stops_but_not_on_the_baseline():
    t = Tuner.from_json({**QUANT, "stop_when": "first_feasible", "worker_num": 1})
    trials = drive(t)
    assert t.stop_reason(trials) == "FirstFeasible"
    assert t.is_feasible(trials[-1].metrics, trials) and len(trials) >= 2


def test_a_failed_baseline_stops_the_tuning():
    t = Tuner.from_json(QUANT)
    trials = [Trial(0, t.baseline_config(), "FAILED", baseline=True)]
    assert t.stop_reason(trials) == "BaselineFailed" and t.suggest(trials) == []


def test_failed_trials_count_as_tried_and_are_never_best():
    t = Tuner.from_json({**QUANT, "constraints": []})
    trials = [Trial(0, {"method": "minmax", "bits": 4}, "FAILED"),
              Trial(1, {"method": "minmax", "bits": 8}, "COMPLETED", {"latency_ms": 2.0}),
              Trial(2, {"method": "minmax", "bits": 16}, "COMPLETED", {"latency_ms": float("nan")})]
    obs = t.observations(trials)
    assert [o.values for o in obs] == [None, (2.0,), None]
    assert t.best(trials).trial_id == 1


def test_the_baseline_config_may_lie_outside_the_space():
    t = Tuner.from_json({**QUANT, "baseline": {"config": {"precision": "fp32"}}})
    assert t.suggest([])[0].config == {"precision": "fp32"}
    base = Trial(0, {"precision": "fp32"}, "COMPLETED", {"accuracy": 0.99, "latency_ms": 5.0}, True)
    assert t.observations([base]) == []  # it anchors the constraint but is not a point of the space
    assert t.thresholds([base]) == [pytest.approx(0.9801)]


def test_early_stopping_goes_through_the_description():
    t = Tuner.from_json({**QUANT, "early_stopping": {"rule": "median", "metric": "accuracy",
                                                      "sense": "maximize", "min_trials": 2}})
    assert t.intermediate_metric() == "accuracy"
    others = {1: [(1, 0.9), (2, 0.95)], 2: [(1, 0.92), (2, 0.96)]}
    assert t.should_stop(3, [(1, 0.2), (2, 0.3)], others).stop
    assert not t.should_stop(4, [(1, 0.93), (2, 0.97)], others).stop
    assert not Tuner.from_json(QUANT).should_stop(3, [(1, 0.2)], others).stop


def test_multi_objective_best_is_the_feasible_pareto_front():
    t = Tuner.from_json({**QUANT, "objectives": [{"metric": "latency_ms"}, {"metric": "accuracy", "sense": "maximize"}],
                         "constraints": []})
    trials = [Trial(i, c, "COMPLETED", m) for i, (c, m) in enumerate([
        ({"method": "minmax", "bits": 4}, {"latency_ms": 1.0, "accuracy": 0.90}),
        ({"method": "minmax", "bits": 8}, {"latency_ms": 2.0, "accuracy": 0.98}),
        ({"method": "minmax", "bits": 16}, {"latency_ms": 4.0, "accuracy": 0.97}),  # dominated by 8 bits
    ])]
    assert [x.trial_id for x in t.pareto(trials)] == [0, 1]


def test_fingerprint_ignores_budget_but_not_the_space():
    a = Tuner.from_json(QUANT).description
    b = Tuner.from_json({**QUANT, "number_of_trials": 99, "seed": 5}).description
    c = Tuner.from_json({**QUANT, "parameters": QUANT["parameters"][:1]}).description
    assert space_fingerprint(a) == space_fingerprint(b) != space_fingerprint(c)


def test_use_history_feeds_earlier_trials_to_the_sampler():
    t = Tuner.from_json({**QUANT, "use_history": True, "constraints": [], "sampler": "random"})
    prior = [Trial(f"old{i}", {"method": "minmax", "bits": b}, "COMPLETED", {"latency_ms": 1.0})
             for i, b in enumerate((4, 8, 16))]
    out = t.suggest([], prior=prior)
    assert all(s.config["method"] == "smoothquant" for s in out)  # the minmax configs were all tried


# -- Pareto -----------------------------------------------------------------------

def brute_front(P: np.ndarray) -> list[int]:
    return [i for i in range(len(P))
            if not any((P[j] <= P[i]).all() and (P[j] < P[i]).any() for j in range(len(P)))]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=30))
def test_pareto_front_matches_brute_force(rows):
    P = np.array(rows, float)
    assert list(pareto_front(P, ["minimize"] * 3)) == brute_front(P)
    assert list(pareto_front(-P, ["maximize"] * 3)) == brute_front(P)


def test_pareto_front_examples():
    P = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [2, 2], [6, 6]])
    assert list(pareto_front(P, ["minimize", "minimize"])) == [0, 1, 2, 4]
    assert list(pareto_front(P, ["maximize", "minimize"])) == [2, 5]
    assert hypervolume_2d(np.array([[1, 2], [2, 1]]), ["minimize", "minimize"], [3, 3]) == 3.0


def test_chebyshev_is_minimized_on_the_front():
    P = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.6], [0.9, 0.9]])
    for w in ([0.5, 0.5], [0.9, 0.1], [0.1, 0.9]):
        assert int(np.argmin(chebyshev(P, ["minimize", "minimize"], np.array(w)))) in (0, 1, 2)
