"""The tuning description: valid JSON parses, invalid spaces name the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from oaasd.tuning.description import TuningDescription, early_stopping_target

ROOT = Path(__file__).resolve().parents[1]


def describe(*params: dict, **extra) -> dict:
    return {"parameters": list(params), "objectives": [{"metric": "loss"}], **extra}


FLOAT_X = {"name": "x", "type": "float", "low": 0.0, "high": 1.0}
METHOD = {"name": "method", "type": "categorical", "choices": ["minmax", "smoothquant"]}
ALPHA = {"name": "alpha", "type": "float", "low": 0.1, "high": 0.9,
         "condition": {"parent": "method", "equals": "smoothquant"}}


def test_a_full_description_parses_with_defaults_filled():
    d = TuningDescription.model_validate(describe(
        FLOAT_X, METHOD, ALPHA,
        {"name": "bits", "type": "ordinal", "choices": [4, 8, 16], "default": 8},
        {"name": "batch", "type": "int", "low": 1, "high": 256, "log": True},
        constraints=[{"metric": "accuracy", "op": ">=", "value": 0.99, "relative_to": "baseline"}],
        early_stopping={"rule": "asha", "min_resource": 1, "eta": 3},
        worker_num=4, parallel_strategy="sync", sampler="gp", seed=7))
    by_name = {p.name: p for p in d.parameters}
    assert by_name["x"].default == 0.5
    assert by_name["batch"].default == 16          # geometric mean on a log scale
    assert by_name["method"].default == "minmax"   # first choice
    assert d.needs_baseline
    assert early_stopping_target(d) == ("loss", "minimize")


def test_condition_accepts_in_a_set():
    d = TuningDescription.model_validate(describe(
        METHOD, {**ALPHA, "condition": {"parent": "method", "in": ["smoothquant", "minmax"]}}))
    assert d.parameters[1].condition.values == ("smoothquant", "minmax")


@pytest.mark.parametrize("params, name, words", [
    ([{**FLOAT_X, "low": 1.0, "high": 1.0}], "x", "less than high"),
    ([{**FLOAT_X, "low": 2.0, "high": 1.0}], "x", "less than high"),
    ([{**FLOAT_X, "log": True}], "x", "low > 0"),
    ([{"name": "n", "type": "int", "low": 5, "high": 1}], "n", "less than high"),
    ([{"name": "n", "type": "int", "low": 0, "high": 9, "log": True}], "n", "low > 0"),
    ([{**FLOAT_X, "default": 3.0}], "x", "outside"),
    ([{"name": "n", "type": "int", "low": 1, "high": 9, "default": 10}], "n", "outside"),
    ([{"name": "c", "type": "categorical", "choices": []}], "c", "empty"),
    ([{"name": "o", "type": "ordinal", "choices": []}], "o", "empty"),
    ([{"name": "c", "type": "categorical", "choices": ["a", "a"]}], "c", "distinct"),
    ([{"name": "c", "type": "categorical", "choices": ["a", "b"], "default": "z"}], "c", "not one of"),
    ([FLOAT_X, {**FLOAT_X, "low": 0.5}], "x", "duplicate"),
    ([METHOD, {**ALPHA, "condition": {"parent": "methd", "equals": "smoothquant"}}], "alpha", "not a parameter"),
    ([METHOD, {**ALPHA, "condition": {"parent": "method", "equals": "awq"}}], "alpha", "not a value"),
    ([{**ALPHA, "condition": {"parent": "alpha", "equals": 1}}], "alpha", "itself"),
    ([FLOAT_X, {**ALPHA, "condition": {"parent": "x", "equals": 1}}], "alpha", "float"),
])
def test_invalid_spaces_name_the_parameter(params, name, words):
    with pytest.raises(ValidationError) as e:
        TuningDescription.model_validate(describe(*params))
    text = str(e.value)
    assert repr(name) in text and words in text


def test_a_condition_cycle_names_its_parameters():
    a = {"name": "a", "type": "categorical", "choices": ["x", "y"], "condition": {"parent": "b", "equals": "x"}}
    b = {"name": "b", "type": "categorical", "choices": ["x", "y"], "condition": {"parent": "a", "equals": "x"}}
    with pytest.raises(ValidationError, match=r"condition cycle (a -> b -> a|b -> a -> b)"):
        TuningDescription.model_validate(describe(a, b))


@pytest.mark.parametrize("patch", [
    {"surprise": 1},
    {"parameters": [{**FLOAT_X, "step": 0.1}]},
    {"sampler": "tpe"},
    {"parallel_strategy": "eager"},
    {"worker_num": 0},
    {"objectives": []},
    {"objectives": [{"metric": "loss", "sense": "lower"}]},
    {"constraints": [{"metric": "acc", "op": ">", "value": 1}]},
    {"early_stopping": {"rule": "asha", "eta": 1}},
])
def test_unknown_keys_and_bad_values_are_refused(patch):
    with pytest.raises(ValidationError):
        TuningDescription.model_validate({**describe(FLOAT_X), **patch})


def test_early_stopping_on_a_non_objective_needs_its_sense():
    with pytest.raises(ValidationError, match="early_stopping"):
        TuningDescription.model_validate(describe(FLOAT_X, early_stopping={"rule": "median", "metric": "acc"}))
    d = TuningDescription.model_validate(describe(
        FLOAT_X, early_stopping={"rule": "median", "metric": "acc", "sense": "maximize"}))
    assert early_stopping_target(d) == ("acc", "maximize")


def test_the_quantize_example_is_a_valid_description():
    data = json.loads((ROOT / "examples" / "quantize" / "tuning.json").read_text())
    d = TuningDescription.model_validate(data)
    assert d.needs_baseline and d.trial["command"][-1].endswith("trial.py")
