"""The search space: encode/decode round-trips, conditions, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaasd.tuning.description import TuningDescription
from oaasd.tuning.space import Space

PARAMS = [
    {"name": "lr", "type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    {"name": "x", "type": "float", "low": -2.0, "high": 3.0},
    {"name": "layers", "type": "int", "low": 1, "high": 12},
    {"name": "batch", "type": "int", "low": 8, "high": 4096, "log": True},
    {"name": "bits", "type": "ordinal", "choices": [2, 4, 8, 16], "default": 8},
    {"name": "method", "type": "categorical", "choices": ["minmax", "smoothquant", "awq"]},
    {"name": "alpha", "type": "float", "low": 0.1, "high": 0.9,
     "condition": {"parent": "method", "equals": "smoothquant"}},
    {"name": "group", "type": "ordinal", "choices": [32, 64, 128],
     "condition": {"parent": "method", "in": ["awq", "smoothquant"]}},
    {"name": "clip", "type": "categorical", "choices": [True, False],
     "condition": {"parent": "group", "equals": 128}},  # a grandchild
]
SPACE = Space(TuningDescription.model_validate({"parameters": PARAMS, "objectives": [{"metric": "f"}]}).parameters)


@st.composite
def configs(draw):
    """Valid configurations of SPACE, built value by value."""
    c = {
        "lr": draw(st.floats(1e-5, 1e-1)),
        "x": draw(st.floats(-2.0, 3.0)),
        "layers": draw(st.integers(1, 12)),
        "batch": draw(st.integers(8, 4096)),
        "bits": draw(st.sampled_from([2, 4, 8, 16])),
        "method": draw(st.sampled_from(["minmax", "smoothquant", "awq"])),
    }
    if c["method"] == "smoothquant":
        c["alpha"] = draw(st.floats(0.1, 0.9))
    if c["method"] != "minmax":
        c["group"] = draw(st.sampled_from([32, 64, 128]))
        if c["group"] == 128:
            c["clip"] = draw(st.booleans())
    return c


def same(a: dict, b: dict) -> bool:
    """Equal keys; discrete values exactly, floats to 1e-12 relative."""
    if a.keys() != b.keys():
        return False
    return all(math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-15) if isinstance(a[k], float)
               else (type(a[k]), a[k]) == (type(b[k]), b[k]) for k in a)


@settings(max_examples=200, deadline=None)
@given(configs())
def test_encode_then_decode_round_trips(c):
    assert not SPACE.validate(c)
    z = SPACE.encode(c)
    assert z.shape == (SPACE.n_dims,) and z.min() >= 0.0 and z.max() <= 1.0
    assert same(SPACE.decode(z), c)
    assert np.array_equal(SPACE.snap(z[None, :])[0], z)  # an encoding is already snapped


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=SPACE.n_dims, max_size=SPACE.n_dims))
def test_any_point_of_the_cube_decodes_to_a_valid_config(z):
    c = SPACE.decode(np.array(z))
    assert SPACE.validate(c) == []
    assert same(SPACE.decode(SPACE.encode(c)), c)


def test_inactive_parameters_are_absent_and_encoded_as_their_default():
    a = {"lr": 1e-3, "x": 0.0, "layers": 3, "batch": 64, "bits": 8, "method": "minmax"}
    assert SPACE.validate(a) == []
    assert SPACE.validate({**a, "alpha": 0.5}) == ["parameter 'alpha' is inactive but present"]
    assert SPACE.validate({**a, "method": "smoothquant"})[0] == "parameter 'alpha' is active but missing"
    z = SPACE.encode(a)
    assert np.array_equal(z[SPACE.dims[6].start:], SPACE.default_row[SPACE.dims[6].start:])
    # two configs that differ only in inactive parameters cannot exist; their encodings are equal
    b = SPACE.decode(np.where(np.arange(SPACE.n_dims) >= SPACE.dims[6].start, 0.3, z))
    assert b == SPACE.decode(z)


def test_sampled_configs_respect_conditions_and_cover_the_choices():
    rng = np.random.default_rng(0)
    sample = SPACE.sample(rng, 600)
    assert all(SPACE.validate(c) == [] for c in sample)
    methods = [c["method"] for c in sample]
    assert {m: methods.count(m) for m in set(methods)}.keys() == {"minmax", "smoothquant", "awq"}
    assert all(("alpha" in c) == (c["method"] == "smoothquant") for c in sample)
    assert all(("clip" in c) == (c.get("group") == 128) for c in sample)
    layers = np.bincount([c["layers"] for c in sample])[1:]
    assert layers.min() > 25  # every integer gets its share, the ends included
    lr = np.log10([c["lr"] for c in sample])
    assert abs(np.median(lr) + 3.0) < 0.3  # log-uniform: median near 1e-3


def test_default_config_applies_conditions():
    assert SPACE.default_config() == {"lr": pytest.approx(1e-3), "x": 0.5, "layers": 6, "batch": 181,
                                      "bits": 8, "method": "minmax"}


def test_neighbors_move_one_discrete_step():
    z = SPACE.encode({"lr": 1e-3, "x": 0.0, "layers": 3, "batch": 64, "bits": 8, "method": "minmax"})
    nb = [SPACE.decode(r) for r in SPACE.neighbors(z)]
    assert {"lr": 1e-3, "x": 0.0, "layers": 4, "batch": 64, "bits": 8, "method": "minmax"} in [
        {**c, "lr": 1e-3, "x": 0.0} for c in nb]
    assert any(c["method"] == "smoothquant" and "alpha" in c for c in nb)
    assert all(SPACE.validate(c) == [] for c in nb)
