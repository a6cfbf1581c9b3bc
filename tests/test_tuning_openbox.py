"""OpenBox's task description: normalized into the native one, malformed ones name the OpenBox field."""

from __future__ import annotations

import json

import pytest

from oaasd.errors import ValidationFailedError
from oaasd.tuning.openbox import is_openbox, normalize
from oaasd.tuning.trials import parse_description

METHOD = {"type": "cat", "choice": ["minmax", "smoothquant"], "default": "minmax"}
ALPHA = {"type": "float", "bound": [0.1, 0.9]}
ON = {"type": "equal", "parent": "method", "child": "alpha", "value": "smoothquant"}


def ob(parameter=None, **extra) -> dict:
    return {"parameter": parameter or {"method": METHOD, "alpha": ALPHA}, **extra}


@pytest.mark.parametrize("given, want", [
    ({"x": {"type": "float", "bound": [-5, 10], "default": 0}},
     [{"name": "x", "type": "float", "low": -5.0, "high": 10.0, "log": False, "default": 0.0}]),
    ({"lr": {"type": "float", "bound": [1e-5, 1e-1], "log": True}},
     [{"name": "lr", "type": "float", "low": 1e-5, "high": 0.1, "log": True}]),
    ({"n": {"type": "int", "bound": [1, 64], "log": True, "default": 8}},
     [{"name": "n", "type": "int", "low": 1, "high": 64, "log": True, "default": 8}]),
    ({"c": {"type": "cat", "choice": ["a", "b"]}}, [{"name": "c", "type": "categorical", "choices": ["a", "b"]}]),
    ({"o": {"type": "ord", "choice": [4, 8, 16], "default": 8}},
     [{"name": "o", "type": "ordinal", "choices": [4, 8, 16], "default": 8}]),
])
def test_each_parameter_type_normalizes(given, want):
    out, desc = normalize({"parameter": given})
    assert out["parameters"] == want
    assert [p.name for p in desc.parameters] == [w["name"] for w in want]


@pytest.mark.parametrize("extra, want", [
    ({}, {"objectives": [{"metric": "objs.0", "sense": "minimize"}], "constraints": []}),
    ({"task_type": "soc", "num_constraints": 2},
     {"objectives": [{"metric": "objs.0", "sense": "minimize"}],
      "constraints": [{"metric": "constraints.0", "op": "<=", "value": 0.0},
                      {"metric": "constraints.1", "op": "<=", "value": 0.0}]}),
    ({"task_type": "moc", "num_objectives": 2},
     {"objectives": [{"metric": "objs.0", "sense": "minimize"}, {"metric": "objs.1", "sense": "minimize"}],
      "constraints": []}),
    ({"objectives": [{"metric": "acc", "sense": "maximize"}], "constraints": [{"metric": "ms", "op": "<=", "value": 5}]},
     {"objectives": [{"metric": "acc", "sense": "maximize"}], "constraints": [{"metric": "ms", "op": "<=", "value": 5}]}),
    ({"number_of_trials": 30, "time_budget": 600, "worker_num": 4, "parallel_strategy": "sync", "use_history": True},
     {"number_of_trials": 30, "time_budget_s": 600.0, "worker_num": 4, "parallel_strategy": "sync",
      "use_history": True}),
    ({"parallel_strategy": "serial"}, {"worker_num": 1, "parallel_strategy": "sync"}),
    ({"seed": 3, "sampler": "random", "name": "q", "trial": {"command": ["true"]}},
     {"seed": 3, "sampler": "random", "name": "q", "trial": {"command": ["true"]}}),
])
def test_task_keys_normalize(extra, want):
    out, _ = normalize(ob(**extra))
    assert {k: out[k] for k in want} == want


@pytest.mark.parametrize("cond, want", [
    ({"c": ON}, {"parent": "method", "equals": "smoothquant"}),
    ([ON], {"parent": "method", "equals": "smoothquant"}),
    ({"c": {**ON, "type": "in", "value": ["smoothquant", "minmax"]}}, {"parent": "method", "in": ["smoothquant", "minmax"]}),
])
def test_conditions_normalize(cond, want):
    out, desc = normalize(ob(condition=cond))
    alpha = next(p for p in out["parameters"] if p["name"] == "alpha")
    assert alpha["condition"] == want
    assert next(p for p in desc.parameters if p.name == "alpha").condition is not None


NUM = {"type": "int", "bound": [1, 4]}


@pytest.mark.parametrize("body, field", [
    (ob({"lr": {"type": "float", "bound": [1.0, 0.5]}}), "parameter.lr.bound"),
    (ob({"lr": {"type": "float", "bound": [0.0, 1.0], "log": True}}), "parameter.lr.bound"),
    (ob({"lr": {"type": "float", "bound": [1.0]}}), "parameter.lr.bound"),
    (ob({"lr": {"type": "float"}}), "parameter.lr.bound"),
    (ob({"lr": {"type": "float", "bound": ["a", 1]}}), "parameter.lr.bound.0"),
    (ob({"n": {"type": "int", "bound": [1.5, 4]}}), "parameter.n.bound"),
    (ob({"lr": {"type": "float", "bound": [0, 1], "default": 2}}), "parameter.lr.default"),
    (ob({"n": {"type": "int", "bound": [1, 4], "default": 2.5}}), "parameter.n.default"),
    (ob({"lr": {"type": "float", "bound": [0, 1], "choice": [1]}}), "parameter.lr.choice"),
    (ob({"c": {"type": "cat"}}), "parameter.c.choice"),
    (ob({"c": {"type": "cat", "choice": []}}), "parameter.c.choice"),
    (ob({"c": {"type": "cat", "choice": ["a", "a"]}}), "parameter.c.choice"),
    (ob({"c": {"type": "cat", "choice": ["a"], "default": "z"}}), "parameter.c.default"),
    (ob({"c": {"type": "ord", "choice": [1, 2], "bound": [1, 2]}}), "parameter.c.bound"),
    (ob({"c": {"type": "cat", "choice": ["a"], "log": True}}), "parameter.c.log"),
    (ob({"c": {"type": "str", "choice": ["a"]}}), "parameter.c.type"),
    (ob({"c": {"type": "cat", "choice": ["a"], "q": 2}}), "parameter.c.q"),
    (ob({"1bad": {"type": "cat", "choice": ["a"]}}), "parameter.1bad.[key]"),
    (ob(condition={"c": {**ON, "child": "beta"}}), "condition.c.child"),
    (ob(condition={"c": {**ON, "parent": "meth"}}), "condition.c.parent"),
    (ob(condition={"c": {**ON, "value": "awq"}}), "condition.c.value"),
    (ob(condition={"c": {**ON, "value": ["smoothquant"]}}), "condition.c.value"),
    (ob(condition={"c": {**ON, "type": "in", "value": "smoothquant"}}), "condition.c.value"),
    (ob(condition={"c": {**ON, "type": "notequal"}}), "condition.c.type"),
    (ob(condition={"c": {**ON, "parent": "alpha", "child": "method", "value": 0.5}}), "condition.c.parent"),
    (ob(condition={"c": ON, "d": ON}), "condition.d.child"),
    (ob(condition=[ON, {**ON, "value": "x"}]), "condition.1.child"),
    (ob(task_type="soc", num_objectives=2), "task_type"),
    (ob(task_type="moc"), "task_type"),
    (ob(task_type="mixed"), "task_type"),
    (ob(num_objectives=0), "num_objectives"),
    (ob(num_constraints=-1), "num_constraints"),
    (ob(parallel_strategy="serial", worker_num=3), "parallel_strategy"),
    (ob(parallel_strategy="batch"), "parallel_strategy"),
    (ob(time_budget=0), "time_budget"),
    (ob(number_of_trials=0), "number_of_trials"),
    (ob(worker_num=0), "worker_num"),
    (ob(unknown_key=1), "unknown_key"),
    ({"parameter": {}}, "parameter"),
])
def test_bad_descriptions_name_the_openbox_field(body, field):
    with pytest.raises(ValidationFailedError) as e:
        normalize(body)
    fields = [d["field"] for d in e.value.detail]
    assert field in fields, e.value.detail


# OpenBox's own task config (its ``parameters`` object, as get_config_space_from_dict reads it)
OPENBOX_OWN = {
    "optimizer": "SMBO", "advisor_type": "default", "surrogate_type": "gp", "logging_dir": "logs", "task_id": "hp1",
    "parameters": {"x1": {"type": "float", "bound": [-5, 10], "default": 0},
                   "x2": {"type": "real", "bound": [0, 15], "log": "false"},
                   "n": {"type": "integer", "bound": [1, 10], "default": 5, "log": "false", "q": 1},
                   "act": {"type": "cate", "choice": ["relu", "tanh"]},
                   "fixed": {"type": "const", "value": "adam"}},
    "conditions": {"c": {"type": "equal", "parent": "act", "child": "n", "value": "relu"}},
    "max_runs": 50, "time_limit_per_trial": 5, "random_state": 1,
}


def test_openbox_own_spellings_normalize():
    out, desc = normalize(OPENBOX_OWN)
    by = {p["name"]: p for p in out["parameters"]}
    assert by["x2"] == {"name": "x2", "type": "float", "low": 0.0, "high": 15.0, "log": False}
    assert by["n"]["type"] == "int" and by["n"]["condition"] == {"parent": "act", "equals": "relu"}
    assert by["act"]["type"] == "categorical" and by["fixed"] == {"name": "fixed", "type": "categorical",
                                                                  "choices": ["adam"]}
    assert (out["number_of_trials"], out["trial_timeout_s"], out["seed"], out["name"]) == (50, 5, 1, "hp1")
    assert "optimizer" not in out and desc.number_of_trials == 50


@pytest.mark.parametrize("patch, field", [
    ({"parameters": {"x": {"type": "float", "bound": [2, 1]}}}, "parameters.x.bound"),
    ({"parameters": {"x": {"type": "float", "bound": [0, 1], "q": 0.1}}}, "parameters.x.q"),
    ({"parameters": {"x": {"type": "const"}}}, "parameters.x.value"),
    ({"parameters": {"x": {"type": "float", "bound": [0, 1], "log": "maybe"}}}, "parameters.x.log"),
    ({"conditions": {"c": {"type": "equal", "parent": "act", "child": "zz", "value": "relu"}}}, "conditions.c.child"),
    ({"number_of_trials": 5}, "max_runs"),
])
def test_openbox_own_spellings_are_named_in_errors(patch, field):
    with pytest.raises(ValidationFailedError) as e:
        normalize({**OPENBOX_OWN, **patch})
    assert field in [d["field"] for d in e.value.detail], e.value.detail


def test_condition_cycles_are_refused():
    a, b = {"type": "cat", "choice": ["x", "y"]}, {"type": "cat", "choice": ["x", "y"]}
    cond = {"ab": {"type": "equal", "parent": "a", "child": "b", "value": "x"},
            "ba": {"type": "equal", "parent": "b", "child": "a", "value": "x"}}
    with pytest.raises(ValidationFailedError, match="OpenBox") as e:
        normalize({"parameter": {"a": a, "b": b}, "condition": cond})
    assert [d["field"] for d in e.value.detail] == ["condition"] and "cycle" in str(e.value.detail)


def test_dialect_is_detected_by_its_keys_and_the_native_one_is_untouched():
    assert is_openbox(ob()) and not is_openbox({"parameters": [], "parameter": {}}) and not is_openbox([1])
    assert is_openbox({"parameters": {}}) and not is_openbox({"parameters": []})
    raw, desc, template = parse_description(json.dumps(ob(condition={"c": ON})).encode())
    assert raw["parameters"][1]["condition"] == {"parent": "method", "equals": "smoothquant"}
    assert template is None and desc.objectives[0].metric == "objs.0"
    native = {"parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
              "objectives": [{"metric": "loss"}]}
    raw, desc, _ = parse_description(json.dumps(native).encode())
    assert raw == native


def test_the_normalized_description_is_itself_a_valid_native_one():
    out, desc = normalize(ob(condition={"c": ON}, task_type="moc", num_objectives=3, num_constraints=1,
                             time_budget=5))
    again, _, _ = parse_description(json.dumps(out).encode())
    assert again == out and len(desc.objectives) == 3 and desc.time_budget_s == 5.0
