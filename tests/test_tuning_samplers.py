"""Sampler contract (every sampler), and what the GP must achieve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oaasd.tuning.description import TuningDescription
from oaasd.tuning.samplers import GPSampler, Observation, RandomSampler, SobolSampler
from oaasd.tuning.space import Space

MIXED = [
    {"name": "x", "type": "float", "low": -5, "high": 5},
    {"name": "n", "type": "int", "low": 1, "high": 20},
    {"name": "opt", "type": "categorical", "choices": ["sgd", "adam"]},
    {"name": "momentum", "type": "float", "low": 0, "high": 1, "condition": {"parent": "opt", "equals": "sgd"}},
    {"name": "beta", "type": "ordinal", "choices": [0.9, 0.99, 0.999], "condition": {"parent": "opt", "equals": "adam"}},
]
SMALL = [  # 3 * 2 = 6 configurations in all
    {"name": "k", "type": "int", "low": 1, "high": 3},
    {"name": "c", "type": "categorical", "choices": ["a", "b"]},
]
SAMPLERS = {"random": RandomSampler, "sobol": SobolSampler, "gp": GPSampler}


def space(params: list[dict]) -> Space:
    return Space(TuningDescription.model_validate({"parameters": params, "objectives": [{"metric": "f"}]}).parameters)


def mixed_f(c: dict) -> float:
    f = (c["x"] - 1.0) ** 2 + 0.1 * (c["n"] - 7) ** 2
    return f + (1.0 + (c["momentum"] - 0.9) ** 2 if c["opt"] == "sgd" else [0.5, 0.0, 0.3][[0.9, 0.99, 0.999].index(c["beta"])])


def run(sampler, f, evals: int, batch: int = 1) -> list[Observation]:
    history: list[Observation] = []
    while len(history) < evals:
        for c in sampler.suggest(history, [], batch):
            history.append(Observation(c, (f(c),)))
    return history


@pytest.mark.parametrize("name", SAMPLERS)
def test_suggestions_are_valid_distinct_and_deterministic(name):
    sp = space(MIXED)
    history = run(SAMPLERS[name](sp, seed=3), mixed_f, 8)
    pending = [history[0].config | {"x": 0.123}]
    a = SAMPLERS[name](sp, seed=3).suggest(history, pending, 4)
    b = SAMPLERS[name](sp, seed=3).suggest(history, pending, 4)
    assert a == b
    assert len(a) == 4 and all(sp.validate(c) == [] for c in a)
    keys = [sp.key(c) for c in a] + [sp.key(c) for c in pending] + [sp.key(o.config) for o in history]
    assert len(set(keys)) == len(keys)
    assert SAMPLERS[name](sp, seed=4).suggest(history, pending, 4) != a


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_finite_space_is_exhausted_without_repeats_then_reused(name):
    sp = space(SMALL)
    s = SAMPLERS[name](sp, seed=0)
    history = run(s, lambda c: c["k"] + (c["c"] == "b"), 6, batch=2)
    assert len({sp.key(o.config) for o in history}) == 6
    # everything evaluated: repeats of evaluated configs, but never of pending ones
    pending = [{"k": 1, "c": "a"}]
    more = s.suggest(history, pending, 3)
    assert len(more) == 3 and pending[0] not in more and len({sp.key(c) for c in more}) == 3
    # more pending than the space holds: fewer come back
    assert len(s.suggest([], [{"k": k, "c": c} for k in (1, 2, 3) for c in "ab"], 2)) == 0


def test_gp_finds_the_optimum_region_of_a_1d_function():
    sp = space([{"name": "x", "type": "float", "low": 0.0, "high": 1.0}])
    f = lambda c: math.sin(12 * c["x"]) * c["x"] + 0.5 * (c["x"] - 0.3) ** 2  # noqa: E731
    xs = np.linspace(0, 1, 100001)
    fs = np.sin(12 * xs) * xs + 0.5 * (xs - 0.3) ** 2
    history = run(GPSampler(sp, seed=1), f, 15)
    best = min(history, key=lambda o: o.values[0])
    assert abs(best.config["x"] - xs[fs.argmin()]) < 0.01
    assert best.values[0] - fs.min() < 1e-3


def test_gp_beats_random_on_a_mixed_conditional_space():
    sp = space(MIXED)
    gp = min(o.values[0] for o in run(GPSampler(sp, seed=0), mixed_f, 30))
    rnd = min(o.values[0] for o in run(RandomSampler(sp, seed=0), mixed_f, 30))
    assert gp < 0.1 and gp < rnd


def test_gp_batch_is_diverse():
    sp = space([{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                {"name": "y", "type": "float", "low": 0.0, "high": 1.0}])
    f = lambda c: (c["x"] - 0.7) ** 2 + (c["y"] - 0.2) ** 2  # noqa: E731
    s = GPSampler(sp, seed=0)
    history = run(s, f, 10)
    batch = s.suggest(history, [], 4)
    Z = sp.encode_many(batch)
    gaps = [np.linalg.norm(Z[i] - Z[j]) for i in range(4) for j in range(i)]
    assert min(gaps) > 1e-3


def test_gp_respects_a_constraint():
    """Minimize x + y subject to x * y >= 0.25: the best reported point is feasible."""
    sp = space([{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                {"name": "y", "type": "float", "low": 0.0, "high": 1.0}])
    s = GPSampler(sp, seed=2)
    history: list[Observation] = []
    while len(history) < 25:
        for c in s.suggest(history, [], 1):
            history.append(Observation(c, (c["x"] + c["y"],), (c["x"] * c["y"] - 0.25,)))
    feasible = [o for o in history if o.feasible]
    assert feasible
    best = min(feasible, key=lambda o: o.values[0])
    assert best.slacks[0] >= 0 and best.values[0] < 1.05  # optimum: x = y = 0.5, sum 1.0
    late = history[10:]  # it learned where the boundary is: late points hug it (the optimum lies on it)
    assert np.median([abs(o.slacks[0]) for o in late]) < 0.02


def test_gp_multi_objective_spreads_along_the_front():
    sp = space([{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                {"name": "y", "type": "float", "low": 0.0, "high": 1.0}])
    s = GPSampler(sp, senses=("minimize", "maximize"), seed=0)
    history: list[Observation] = []
    while len(history) < 20:
        for c in s.suggest(history, [], 2):
            history.append(Observation(c, (c["x"] ** 2 + 0.1 * c["y"], 1 - (1 - c["x"]) ** 2 - 0.1 * c["y"])))
    from oaasd.tuning.pareto import pareto_front
    front = pareto_front(np.array([o.values for o in history]), ["minimize", "maximize"])
    xs = sorted(history[i].config["x"] for i in front)
    assert len(front) >= 4 and xs[-1] - xs[0] > 0.3
