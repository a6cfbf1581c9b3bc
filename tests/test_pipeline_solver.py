"""The pipeline solver: exact equals exhaustive, infeasibility, tie-break, greedy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oaasd.pipeline import Decision, Pipeline, solve, solve_exhaustive, solve_greedy
from oaasd.pipeline.options import option_tables, replicas_needed
from oaasd.pipeline.synthetic import random_load, random_pipeline

COMBINES = ["product", "sum", "mean", "min"]


def same_objective(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def assert_equivalent(exact, ref) -> None:
    assert exact.feasible == ref.feasible
    assert exact.shortfall_rps == ref.shortfall_rps
    assert exact.violation_ms == ref.violation_ms
    assert same_objective(exact.objective, ref.objective), (exact.objective, ref.objective)


# Small discrete value sets on purpose: they make ties, exact SLO hits and
# equal latency sums common, which is where a pruned search goes wrong.
@st.composite
def pipelines(draw, combine: str) -> tuple[dict, float, float | None]:
    n_stages = draw(st.integers(1, 4))
    stages = []
    for s in range(n_stages):
        variants = []
        for v in range(draw(st.integers(1, 3 if n_stages < 4 else 2))):
            batches = draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=3,
                                    unique=True))
            profiles = [{"batch": b,
                         "latency_ms": draw(st.sampled_from([1.0, 2.0, 2.5, 5.0, 10.0, 0.1, 0.3])),
                         "throughput_rps": draw(st.sampled_from([10.0, 30.0, 100.0, 250.0, 0.7]))}
                        for b in batches]
            variants.append({"name": f"v{v}", "profiles": profiles,
                             "accuracy": draw(st.sampled_from([0.0, 0.5, 0.7, 0.9, 1.0, 0.33])),
                             "cores": draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
                             "gpus": draw(st.sampled_from([0.0, 1.0]))})
        low = draw(st.integers(1, 3))
        stages.append({"name": f"s{s}", "variants": variants, "min_replicas": low,
                       "max_replicas": draw(st.integers(low, 12))})
    spec = {"name": "h", "stages": stages, "accuracy_combine": combine,
            "slo_ms": draw(st.sampled_from([1.0, 3.0, 5.0, 10.0, 20.0, 50.0, 0.4])),
            "alpha": draw(st.sampled_from([0.0, 1.0, 10.0])),
            "beta": draw(st.sampled_from([0.0, 0.01, 0.1])),
            "gamma": draw(st.sampled_from([0.0, 0.001, 0.05])),
            "gpu_weight_cores": draw(st.sampled_from([0.0, 4.0]))}
    load = draw(st.one_of(st.sampled_from([0.0, 1.0, 30.0, 100.0, 1000.0]),
                          st.floats(0.01, 3000.0, allow_nan=False)))
    fill = draw(st.sampled_from([None, None, 0.5, 2.0]))
    return spec, load, None if fill is None else load * fill


@pytest.mark.parametrize("combine", COMBINES)
def test_exact_equals_exhaustive_hypothesis(combine: str) -> None:
    @settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pipelines(combine))
    def check(case) -> None:
        spec, load, fill = case
        pipeline = Pipeline.model_validate(spec)
        assert_equivalent(solve(pipeline, load, fill_load_rps=fill),
                          solve_exhaustive(pipeline, load, fill_load_rps=fill))

    check()


@pytest.mark.parametrize("combine", COMBINES)
def test_exact_equals_exhaustive_realistic(combine: str) -> None:
    """Seeded random pipelines shaped like real profiles (3 stages x 12 options)."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        pipeline = random_pipeline(rng, 3, n_variants=3, batches=(1, 4, 16, 64),
                                   max_replicas=int(rng.integers(2, 33)),
                                   accuracy_combine=combine)
        load = random_load(rng, pipeline)
        assert_equivalent(solve(pipeline, load), solve_exhaustive(pipeline, load))


def _pipeline(stages, slo_ms=100.0, **kw) -> Pipeline:
    return Pipeline.model_validate({"name": "t", "stages": stages, "slo_ms": slo_ms, **kw})


def _stage(name, variants, **kw):
    return {"name": name, "variants": variants, **kw}


def _variant(name, accuracy, profiles, cores=1.0, gpus=0.0):
    return {"name": name, "accuracy": accuracy, "cores": cores, "gpus": gpus,
            "profiles": [{"batch": b, "latency_ms": lat, "throughput_rps": t}
                         for b, lat, t in profiles]}


def test_option_arithmetic_by_hand() -> None:
    p = _pipeline([_stage("a", [_variant("x", 0.9, [(1, 10.0, 100.0), (4, 20.0, 200.0)],
                                         cores=2.0)], max_replicas=3)],
                  beta=0.5, gamma=0.25)
    (t,) = option_tables(p, 250.0)
    assert list(t.replicas) == [3, 2]  # ceil(250/100) = 3, ceil(250/200) = 2
    assert list(t.needed) == [3, 2]
    assert t.wait_ms[1] == pytest.approx(1000 * 3 / 250)  # 12 ms to fill a batch of 4
    assert t.latency_ms[1] == pytest.approx(32.0)
    assert list(t.cost) == [0.5 * 6 + 0.25 * 1, 0.5 * 4 + 0.25 * 4]
    assert replicas_needed(300.0, 100.0) == 3
    assert replicas_needed(0.0, 100.0) == 0


def test_accuracy_combinations_by_hand() -> None:
    stages = [_stage("a", [_variant("x", 0.9, [(1, 1.0, 1000.0)])]),
              _stage("b", [_variant("y", 0.8, [(1, 1.0, 1000.0)])])]
    expect = {"product": 0.72, "sum": 1.7, "mean": 0.85, "min": 0.8}
    for combine, acc in expect.items():
        d = solve(_pipeline(stages, accuracy_combine=combine, beta=0.1), 10.0)
        assert d.accuracy == pytest.approx(acc)
        assert d.objective == pytest.approx(acc - 0.1 * 2)
        assert d.cost_cores == 2.0 and d.feasible


def test_picks_accuracy_within_slo_and_lighter_under_load() -> None:
    big = _variant("big", 0.95, [(1, 40.0, 25.0), (8, 120.0, 66.0)], cores=4.0)
    small = _variant("small", 0.80, [(1, 5.0, 200.0), (8, 15.0, 530.0)], cores=1.0)
    p = _pipeline([_stage("s", [small, big], max_replicas=8)], slo_ms=60.0, beta=0.001)
    low = solve(p, 20.0)
    assert (low.stages[0].variant, low.stages[0].batch) == ("big", 1) and low.feasible
    high = solve(p, 1500.0)  # big would need 60 replicas (> 8): only small keeps up
    assert high.stages[0].variant == "small" and high.stages[0].batch == 8
    assert high.stages[0].replicas == 3 and high.feasible


def test_infeasible_slo_returns_least_violation() -> None:
    p = _pipeline([_stage("a", [_variant("x", 0.9, [(1, 30.0, 100.0)]),
                                _variant("y", 0.5, [(1, 20.0, 100.0)])]),
                   _stage("b", [_variant("z", 0.9, [(1, 25.0, 100.0), (2, 26.0, 190.0)])])],
                  slo_ms=40.0)
    d = solve(p, 50.0)
    assert not d.feasible
    assert d.latency_ms == 45.0 and d.violation_ms == 5.0
    assert [s.variant for s in d.stages] == ["y", "z"] and d.stages[1].batch == 1
    assert [r.reason for r in d.reasons] == ["SloUnmet"]
    assert (d.reasons[0].requested, d.reasons[0].limit) == (45.0, 40.0)
    assert_equivalent(d, solve_exhaustive(p, 50.0))


def test_capped_replicas_minimise_shortfall_first() -> None:
    p = _pipeline([_stage("a", [_variant("x", 0.9, [(1, 5.0, 100.0)]),
                                _variant("y", 0.5, [(4, 50.0, 300.0)])], max_replicas=2)],
                  slo_ms=20.0)
    d = solve(p, 1000.0)  # x carries 200 rps, y 600 rps: y, despite the SLO
    assert not d.feasible and d.stages[0].variant == "y"
    assert d.shortfall_rps == 400.0
    assert {r.reason for r in d.reasons} == {"ReplicasCapped", "SloUnmet"}
    capped = next(r for r in d.reasons if r.reason == "ReplicasCapped")
    assert (capped.stage, capped.requested, capped.limit) == ("a", 4, 2)
    assert_equivalent(d, solve_exhaustive(p, 1000.0))


def test_ties_broken_by_listed_order_deterministically() -> None:
    twin = [(1, 5.0, 100.0), (2, 6.0, 180.0)]
    p = _pipeline([_stage("a", [_variant("first", 0.9, twin), _variant("second", 0.9, twin)]),
                   _stage("b", [_variant("only", 0.9, [(1, 1.0, 500.0)])])], beta=0.01)
    for solver in (solve, solve_exhaustive):
        d = solver(p, 50.0)
        assert d.stages[0].variant == "first"
        assert d == solver(p, 50.0)


def test_zero_load_prefers_batch_one() -> None:
    p = _pipeline([_stage("a", [_variant("x", 0.9, [(1, 5.0, 100.0), (8, 9.0, 400.0)])],
                          min_replicas=2)], gamma=0.0)
    d = solve(p, 0.0)
    assert d.feasible and d.stages[0].batch == 1 and d.stages[0].replicas == 2


def test_load_must_be_finite_and_non_negative() -> None:
    p = _pipeline([_stage("a", [_variant("x", 0.9, [(1, 5.0, 100.0)])])])
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="load_rps"):
            solve(p, bad)


def test_greedy_feasible_when_a_feasible_config_exists() -> None:
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        p = random_pipeline(rng, int(rng.integers(2, 7)), accuracy_combine=COMBINES[seed % 4])
        load = random_load(rng, p)
        exact, greedy = solve(p, load), solve_greedy(p, load)
        assert greedy.feasible == exact.feasible
        assert greedy.shortfall_rps == exact.shortfall_rps
        assert greedy.objective <= exact.objective + 1e-9 * (1 + abs(exact.objective))


def test_exact_at_eight_stages_matches_or_beats_greedy_quickly() -> None:
    rng = np.random.default_rng(7)
    p = random_pipeline(rng, 8)
    load = random_load(rng, p)
    d = solve(p, load)
    assert len(d.stages) == 8
    assert d.objective >= solve_greedy(p, load).objective - 1e-12


def test_zero_load_without_batch_one_waits_forever_and_round_trips() -> None:
    p = _pipeline([_stage("a", [_variant("x", 0.9, [(4, 5.0, 100.0)])])], slo_ms=10.0)
    d = solve(p, 0.0)
    assert not d.feasible and math.isinf(d.latency_ms) and math.isinf(d.violation_ms)
    assert [r.reason for r in d.reasons] == ["SloUnmet"]
    assert '"Infinity"' in d.model_dump_json()
    assert Decision.model_validate_json(d.model_dump_json()) == d
