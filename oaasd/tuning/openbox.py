"""OpenBox's task description, accepted as its users write it and normalized into the native one.

A body is in the OpenBox dialect when it has a ``parameter`` object (keyed
by name) and no ``parameters`` list. Shape::

    {"parameter": {
        "method": {"type": "cat", "choice": ["minmax", "smoothquant"], "default": "minmax"},
        "alpha":  {"type": "float", "bound": [0.1, 0.9]},
        "bits":   {"type": "ord", "choice": [4, 8, 16]},
        "lr":     {"type": "float", "bound": [1e-5, 1e-1], "log": true}},
     "condition": {"alpha_on": {"type": "equal", "parent": "method", "child": "alpha",
                                "value": "smoothquant"}},
     "number_of_trials": 40, "time_budget": 3600, "task_type": "soc",
     "num_objectives": 1, "num_constraints": 1,
     "parallel_strategy": "async", "worker_num": 2, "use_history": false}

``condition`` may also be a list of such objects (then named by position). Objectives are named
``objs.0``, ``objs.1``, ... (minimized, as OpenBox minimizes) and constraints
``constraints.0``, ... (feasible when ``<= 0``, as OpenBox counts them),
unless the native ``objectives`` / ``constraints`` lists are given instead.
The native keys ``name``, ``seed``, ``sampler``, ``early_stopping``,
``baseline``, ``trial``, ``trial_timeout_s`` and ``stop_when`` pass through.

OpenBox's own task-config spellings are accepted too (``ALIASES``: a
``parameters`` *object*, ``conditions``, ``max_runs``, ...; type aliases in
``TYPES``); the keys in ``IGNORED`` pick OpenBox's own machinery and are left
out.

Every error names the field as the user wrote it (``parameter.lr.bound``,
``condition.alpha_on.value``) in the same 422 as the native dialect.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from oaasd.errors import ValidationFailedError, pydantic_detail
from oaasd.tuning.description import Choice, Name, TuningDescription, choice_key

Number = Union[StrictInt, StrictFloat]
TYPES = {"float": "float", "real": "float", "int": "int", "integer": "int", "cat": "categorical",
         "cate": "categorical", "categorical": "categorical", "ord": "ordinal", "ordinal": "ordinal",
         "const": "categorical", "constant": "categorical"}
NUMERIC = ("float", "int")
# OpenBox's own names for keys this dialect spells otherwise: (alias, key)
ALIASES = (("parameters", "parameter"), ("conditions", "condition"), ("max_runs", "number_of_trials"),
           ("num_objs", "num_objectives"), ("random_state", "seed"), ("time_limit_per_trial", "trial_timeout_s"))
# Keys of an OpenBox task config that choose OpenBox's own machinery: accepted and left out.
IGNORED = ("optimizer", "advisor_type", "surrogate_type", "acq_type", "acq_optimizer_type", "logging_dir",
           "visualization", "task_id", "task_name", "batch_strategy")
PASS_THROUGH = ("name", "seed", "sampler", "early_stopping", "baseline", "trial", "trial_timeout_s", "stop_when",
                "objectives", "constraints")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OBParameter(_Model):
    """One entry of ``parameter``: ``bound`` for float/int, ``choice`` for cat/ord."""

    type: Literal["float", "real", "int", "integer", "cat", "cate", "categorical", "ord", "ordinal",
                  "const", "constant"]
    bound: list[Number] | None = None
    choice: list[Choice] | None = None
    value: Choice | None = None  # const
    default: Choice | None = None
    log: StrictBool | Literal["true", "false", "True", "False"] = False
    q: Number | None = None


class OBCondition(_Model):
    """``child`` is active only when ``parent`` equals ``value`` (``equal``) or is in it (``in``)."""

    type: Literal["equal", "in"]
    parent: Name
    child: Name
    value: Choice | list[Choice]


class OBDescription(_Model):
    """The whole OpenBox task description (plus the native keys that pass through)."""

    parameter: Annotated[dict[Name, OBParameter], Field(min_length=1)]
    condition: dict[StrictStr, OBCondition] = {}  # a list is keyed by position first
    number_of_trials: StrictInt | None = None
    time_budget: Number | None = None
    task_type: Literal["soc", "moc"] | None = None
    num_objectives: StrictInt | None = None
    num_constraints: StrictInt = 0
    parallel_strategy: Literal["sync", "async", "serial"] | None = None
    worker_num: StrictInt | None = None
    use_history: StrictBool | None = None
    name: Any = None
    seed: Any = None
    sampler: Any = None
    early_stopping: Any = None
    baseline: Any = None
    trial: Any = None
    trial_timeout_s: Any = None
    stop_when: Any = None
    objectives: Any = None
    constraints: Any = None


def is_openbox(raw: Any) -> bool:
    """Whether a parsed body is in the OpenBox dialect: a ``parameter`` (or ``parameters``) *object* keyed by name."""
    if not isinstance(raw, dict):
        return False
    return ("parameter" in raw and "parameters" not in raw) or isinstance(raw.get("parameters"), dict)


def _unalias(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """OpenBox's own key names mapped to this dialect's; returns the body and {key: the name the user wrote}."""
    body = {k: v for k, v in raw.items() if k not in IGNORED}
    if "name" not in body and isinstance(raw.get("task_name", raw.get("task_id")), (str, int, float)):
        body["name"] = str(raw.get("task_name", raw.get("task_id")))
    wrote: dict[str, str] = {}
    for alias, key in ALIASES:
        if alias in body:
            if key in body:
                raise ValidationFailedError("invalid OpenBox tuning description", [
                    {"field": alias, "problem": f"give {alias!r} or {key!r}, not both", "type": "value_error"}])
            body[key] = body.pop(alias)
            wrote[key] = alias
    return body, wrote


def _renamed(detail: list[dict[str, Any]], wrote: dict[str, str]) -> list[dict[str, Any]]:
    """Fields named with the keys the user wrote (``parameters.lr.bound`` when it was ``parameters``)."""
    out = []
    for d in detail:
        head, dot, rest = d["field"].partition(".")
        out.append({**d, "field": wrote.get(head, head) + dot + rest})
    return out


class _Problems:
    def __init__(self) -> None:
        self.detail: list[dict[str, Any]] = []

    def add(self, field: str, problem: str) -> None:
        self.detail.append({"field": field, "problem": problem, "type": "value_error"})


def normalize(raw: dict[str, Any]) -> tuple[dict[str, Any], TuningDescription]:
    """The native description of an OpenBox one (as JSON, and validated); 422 naming the OpenBox field."""
    raw, wrote = _unalias(raw)
    try:
        return _normalize(raw)
    except ValidationFailedError as exc:
        raise ValidationFailedError(str(exc), _renamed(exc.detail, wrote)) from None


def _normalize(raw: dict[str, Any]) -> tuple[dict[str, Any], TuningDescription]:
    if isinstance(raw.get("condition"), list):
        raw = {**raw, "condition": {str(i): c for i, c in enumerate(raw["condition"])}}
    try:
        ob = OBDescription.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise ValidationFailedError("invalid OpenBox tuning description", _clean(pydantic_detail(exc))) from None
    bad = _Problems()
    params = {name: _parameter(name, p, bad) for name, p in ob.parameter.items()}
    _conditions(ob, params, bad)
    out: dict[str, Any] = {"parameters": [p for p in params.values() if p is not None]}
    out.update(_objectives(ob, bad))
    _budget(ob, out, bad)
    if bad.detail:
        raise ValidationFailedError("invalid OpenBox tuning description", bad.detail)
    for key in PASS_THROUGH:
        if key in raw and key not in ("objectives", "constraints"):
            out[key] = raw[key]
    return out, _validate_native(out)


def _clean(detail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop pydantic's union tags from field paths (``bound.0.int`` is ``bound.0``), one entry per field."""
    out: dict[str, dict[str, Any]] = {}
    for d in detail:
        parts = d["field"].split(".")
        keep = {"parameter": 3, "condition": 3}.get(parts[0], 1)
        head, tail = parts[:keep], parts[keep:]
        if tail and tail[0].isdigit():
            head.append(tail[0])
        out.setdefault(".".join(head), {**d, "field": ".".join(head)})
    return list(out.values())


def _parameter(name: str, p: OBParameter, bad: _Problems) -> dict[str, Any] | None:
    where = f"parameter.{name}"
    kind = TYPES[p.type]
    out: dict[str, Any] = {"name": name, "type": kind}
    log = p.log if isinstance(p.log, bool) else p.log.lower() == "true"
    if p.q is not None and not (kind == "int" and p.q == 1):
        bad.add(f"{where}.q", "quantization is not supported (only q: 1 on an int, which changes nothing)")
        return None
    if p.type in ("const", "constant"):
        if p.value is None:
            bad.add(f"{where}.value", "a constant takes its 'value'")
            return None
        return {**out, "choices": [p.value]}
    if p.value is not None:
        bad.add(f"{where}.value", "only a const parameter takes 'value'")
    if kind in NUMERIC:
        if p.choice is not None:
            bad.add(f"{where}.choice", f"a {p.type} parameter takes 'bound', not 'choice'")
        if not _bound_ok(where, kind, log, p.bound, bad):
            return None
        low, high = p.bound  # type: ignore[misc]
        out.update(low=float(low) if kind == "float" else low, high=float(high) if kind == "float" else high,
                   log=log)
        if p.default is not None:
            ok = _number(p.default) and (kind == "float" or isinstance(p.default, int))
            if not ok or not low <= p.default <= high:
                bad.add(f"{where}.default", f"default {p.default!r} is not a {kind} in [{low}, {high}]")
                return None
            out["default"] = float(p.default) if kind == "float" else p.default
        return out
    for key in ("bound", "log"):
        if getattr(p, key) not in (None, False, "false", "False"):
            bad.add(f"{where}.{key}", f"a {p.type} parameter takes 'choice', not {key!r}")
    if not p.choice:
        bad.add(f"{where}.choice", "give a non-empty list of choices")
        return None
    keys = [choice_key(c) for c in p.choice]
    if len(set(keys)) != len(keys):
        bad.add(f"{where}.choice", "choices must be distinct")
        return None
    out["choices"] = list(p.choice)
    if p.default is not None:
        if choice_key(p.default) not in keys:
            bad.add(f"{where}.default", f"default {p.default!r} is not one of the choices")
            return None
        out["default"] = p.default
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bound_ok(where: str, kind: str, log: bool, b: list[Any] | None, bad: _Problems) -> bool:
    if b is None or len(b) != 2:
        bad.add(f"{where}.bound", "give [lower, upper]")
        return False
    if kind == "int" and not all(isinstance(v, int) for v in b):
        bad.add(f"{where}.bound", "an int parameter's bounds must be integers")
        return False
    if not all(math.isfinite(v) for v in b):
        bad.add(f"{where}.bound", "bounds must be finite numbers")
        return False
    if not b[0] < b[1]:
        bad.add(f"{where}.bound", f"lower ({b[0]}) must be less than upper ({b[1]})")
        return False
    if log and b[0] <= 0:
        bad.add(f"{where}.bound", f"a log scale needs lower > 0 (got {b[0]})")
        return False
    return True


def _conditions(ob: OBDescription, params: dict[str, dict[str, Any] | None], bad: _Problems) -> None:
    for key, c in ob.condition.items():
        where = f"condition.{key}"
        child, parent = params.get(c.child), params.get(c.parent)
        if c.child not in params:
            bad.add(f"{where}.child", f"{c.child!r} is not a parameter")
            continue
        if c.parent not in params:
            bad.add(f"{where}.parent", f"{c.parent!r} is not a parameter")
            continue
        if child is None or parent is None:
            continue  # the parameter itself is already reported
        if c.parent == c.child:
            bad.add(f"{where}.parent", "a condition cannot refer to its own child")
            continue
        if "condition" in child:
            bad.add(f"{where}.child", f"{c.child!r} already has a condition (one per parameter)")
            continue
        if parent["type"] == "float":
            bad.add(f"{where}.parent", f"{c.parent!r} is a float; use int, ord or cat")
            continue
        if c.type == "equal":
            if isinstance(c.value, list):
                bad.add(f"{where}.value", "an 'equal' condition takes one value (use type 'in' for a list)")
                continue
            values, cond = [c.value], {"parent": c.parent, "equals": c.value}
        else:
            if not isinstance(c.value, list) or not c.value:
                bad.add(f"{where}.value", "an 'in' condition takes a non-empty list of values")
                continue
            values, cond = list(c.value), {"parent": c.parent, "in": list(c.value)}
        wrong = [v for v in values if not _can_take(parent, v)]
        if wrong:
            bad.add(f"{where}.value", f"{wrong[0]!r} is not a value of {c.parent!r}")
            continue
        child["condition"] = cond


def _can_take(parent: dict[str, Any], v: Any) -> bool:
    if parent["type"] == "int":
        return isinstance(v, int) and not isinstance(v, bool) and parent["low"] <= v <= parent["high"]
    return choice_key(v) in {choice_key(c) for c in parent["choices"]}


def _objectives(ob: OBDescription, bad: _Problems) -> dict[str, Any]:
    n = ob.num_objectives
    if ob.objectives is not None:
        declared = ob.objectives if isinstance(ob.objectives, list) else []
        if n is not None and len(declared) != n:
            bad.add("num_objectives", f"{n} objectives declared but 'objectives' lists {len(declared)}")
        n = len(declared)
    if ob.task_type == "soc" and n not in (None, 1):
        bad.add("task_type", f"'soc' has one objective, not {n} (use 'moc')")
    if ob.task_type == "moc" and (n is None or n < 2):
        bad.add("task_type", "'moc' needs num_objectives >= 2")
    if n is not None and not 1 <= n <= 16:
        bad.add("num_objectives", "must be between 1 and 16")
    if not 0 <= ob.num_constraints <= 64:
        bad.add("num_constraints", "must be between 0 and 64")
    objectives = ob.objectives if ob.objectives is not None else \
        [{"metric": f"objs.{i}", "sense": "minimize"} for i in range(max(1, min(n or 1, 16)))]
    if ob.constraints is not None:
        if ob.num_constraints and isinstance(ob.constraints, list) and len(ob.constraints) != ob.num_constraints:
            bad.add("num_constraints", f"{ob.num_constraints} constraints declared but 'constraints' lists "
                    f"{len(ob.constraints)}")
        constraints = ob.constraints
    else:
        constraints = [{"metric": f"constraints.{i}", "op": "<=", "value": 0.0}
                       for i in range(max(0, min(ob.num_constraints, 64)))]
    return {"objectives": objectives, "constraints": constraints}


def _budget(ob: OBDescription, out: dict[str, Any], bad: _Problems) -> None:
    if ob.number_of_trials is not None:
        out["number_of_trials"] = ob.number_of_trials
    if ob.time_budget is not None:
        out["time_budget_s"] = float(ob.time_budget)
    if ob.use_history is not None:
        out["use_history"] = ob.use_history
    if ob.worker_num is not None:
        out["worker_num"] = ob.worker_num
    if ob.parallel_strategy == "serial":
        if ob.worker_num not in (None, 1):
            bad.add("parallel_strategy", f"'serial' runs one trial at a time, but worker_num is {ob.worker_num}")
        out["worker_num"], out["parallel_strategy"] = 1, "sync"
    elif ob.parallel_strategy is not None:
        out["parallel_strategy"] = ob.parallel_strategy


NATIVE_FIELDS = {"time_budget_s": "time_budget", "parallel_strategy": "parallel_strategy"}


def _validate_native(out: dict[str, Any]) -> TuningDescription:
    """Check the normalized description as the native dialect is checked; errors renamed to OpenBox fields."""
    try:
        return TuningDescription.model_validate_json(json.dumps(out), strict=True)
    except ValidationError as exc:
        detail = []
        for d in pydantic_detail(exc):
            parts = d["field"].split(".")
            if parts[0] == "parameters" and len(parts) > 1 and parts[1].isdigit():
                name = out["parameters"][int(parts[1])]["name"]
                field = f"parameter.{name}" + "".join(f".{p}" for p in parts[3:])
            elif parts == ["body"] and "condition" in d["problem"]:
                field = "condition"  # a whole-description check: a cycle of conditions
            else:
                field = NATIVE_FIELDS.get(parts[0], parts[0]) + "".join(f".{p}" for p in parts[1:])
            detail.append({**d, "field": field})
        raise ValidationFailedError("invalid OpenBox tuning description", detail) from None
