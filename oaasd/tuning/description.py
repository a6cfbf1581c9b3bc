"""The tuning task description: the JSON a user submits, as pydantic models.

Every model forbids unknown keys. An invalid description raises a pydantic
``ValidationError`` whose message names the offending parameter (the API
turns it into a 422). The models hold data only; ``space.Space`` gives the
parameters their geometry.

Shape of the JSON::

    {"parameters": [
        {"name": "method", "type": "categorical",
         "choices": ["minmax", "smoothquant"], "default": "minmax"},
        {"name": "alpha", "type": "float", "low": 0.1, "high": 0.9,
         "condition": {"parent": "method", "equals": "smoothquant"}}],
     "objectives": [{"metric": "latency_ms", "sense": "minimize"}],
     "constraints": [{"metric": "accuracy", "op": ">=", "value": 0.99,
                      "relative_to": "baseline"}],
     "number_of_trials": 40, "worker_num": 2, "sampler": "gp", "seed": 0}
"""

from __future__ import annotations

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
    model_validator,
)

Choice = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]
Sense = Literal["minimize", "maximize"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def choice_key(value: Any) -> tuple[str, Any]:
    """Return a hashable key that tells ``1``, ``1.0`` and ``True`` apart."""
    return (type(value).__name__, value)


class Condition(_Model):
    """Makes a parameter active only when its parent equals ``equals`` or is ``in`` a set."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    parent: Name
    equals: Choice | None = None
    in_: list[Choice] | None = Field(default=None, alias="in", min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        if (self.equals is None) == (self.in_ is None):
            raise ValueError(f"condition on {self.parent!r} needs exactly one of 'equals' or 'in'")
        return self

    @property
    def values(self) -> tuple[Choice, ...]:
        """The parent values that make the child active."""
        return (self.equals,) if self.in_ is None else tuple(self.in_)


class _Param(_Model):
    name: Name
    condition: Condition | None = None


class FloatParam(_Param):
    """A real number in ``[low, high]``, searched on a log scale when ``log``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    default: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_bounds(self)
        if self.default is None:
            mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
            object.__setattr__(self, "default", mid)
        elif not (self.low <= self.default <= self.high):
            raise ValueError(f"parameter {self.name!r}: default {self.default} is outside [{self.low}, {self.high}]")
        return self


class IntParam(_Param):
    """An integer in ``[low, high]``, searched on a log scale when ``log``."""

    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    log: bool = False
    default: StrictInt | None = None

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_bounds(self)
        if self.default is None:
            mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
            object.__setattr__(self, "default", int(round(mid)))
        elif not (self.low <= self.default <= self.high):
            raise ValueError(f"parameter {self.name!r}: default {self.default} is outside [{self.low}, {self.high}]")
        return self


class OrdinalParam(_Param):
    """One of ordered ``choices``; neighbours in the list are considered close."""

    type: Literal["ordinal"]
    choices: list[Choice]
    default: Choice | None = None

    @model_validator(mode="after")
    def _check(self) -> OrdinalParam:
        _check_choices(self)
        return self


class CategoricalParam(_Param):
    """One of unordered ``choices``."""

    type: Literal["categorical"]
    choices: list[Choice]
    default: Choice | None = None

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        _check_choices(self)
        return self


Parameter = Annotated[
    Union[FloatParam, IntParam, OrdinalParam, CategoricalParam], Field(discriminator="type")
]


def _check_bounds(p: FloatParam | IntParam) -> None:
    if not (math.isfinite(p.low) and math.isfinite(p.high)):
        raise ValueError(f"parameter {p.name!r}: bounds must be finite numbers")
    if not p.low < p.high:
        raise ValueError(f"parameter {p.name!r}: low ({p.low}) must be less than high ({p.high})")
    if p.log and p.low <= 0:
        raise ValueError(f"parameter {p.name!r}: a log scale needs low > 0 (got {p.low})")


def _check_choices(p: OrdinalParam | CategoricalParam) -> None:
    if not p.choices:
        raise ValueError(f"parameter {p.name!r}: choices must not be empty")
    keys = [choice_key(c) for c in p.choices]
    if len(set(keys)) != len(keys):
        raise ValueError(f"parameter {p.name!r}: choices must be distinct")
    if p.default is None:
        object.__setattr__(p, "default", p.choices[0])
    elif choice_key(p.default) not in keys:
        raise ValueError(f"parameter {p.name!r}: default {p.default!r} is not one of the choices")


class Objective(_Model):
    """A reported metric to minimize or maximize."""

    metric: Name
    sense: Sense = "minimize"


class Constraint(_Model):
    """``metric op value``, or ``metric op value * baseline[metric]`` when relative to the baseline."""

    metric: Name
    op: Literal[">=", "<="]
    value: float
    relative_to: Literal["baseline"] | None = None


class Baseline(_Model):
    """The first trial: its metrics anchor the relative constraints.

    ``config`` is passed to the trial verbatim (it may lie outside the space,
    e.g. ``{"precision": "fp32"}``); when absent the baseline runs the
    parameters' defaults.
    """

    config: dict[str, Any] | None = None


class NoEarlyStopping(_Model):
    """Every trial runs to its end."""

    rule: Literal["none"]


class MedianStopping(_Model):
    """Stop a trial whose best value is worse than the median of the others' running averages."""

    rule: Literal["median"]
    metric: Name | None = None
    sense: Sense | None = None
    grace_steps: Annotated[float, Field(ge=0)] = 1
    min_trials: Annotated[int, Field(ge=1)] = 3


class AshaStopping(_Model):
    """Asynchronous successive halving: rungs at ``min_resource * eta**k`` steps."""

    rule: Literal["asha"]
    metric: Name | None = None
    sense: Sense | None = None
    min_resource: Annotated[float, Field(gt=0)] = 1
    eta: Annotated[float, Field(gt=1)] = 3
    max_resource: Annotated[float, Field(gt=0)] | None = None
    min_trials: Annotated[int, Field(ge=1)] = 1


EarlyStopping = Annotated[
    Union[NoEarlyStopping, MedianStopping, AshaStopping], Field(discriminator="rule")
]


class TuningDescription(_Model):
    """A whole tuning: space, objectives, constraints, budget and strategy."""

    name: str | None = None
    parameters: Annotated[list[Parameter], Field(min_length=1)]
    objectives: Annotated[list[Objective], Field(min_length=1)]
    constraints: list[Constraint] = []
    baseline: Baseline | None = None
    number_of_trials: Annotated[int, Field(ge=1, le=100_000)] = 50
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    worker_num: Annotated[int, Field(ge=1, le=4096)] = 1
    parallel_strategy: Literal["sync", "async"] = "async"
    stop_when: Literal["budget", "first_feasible"] = "budget"
    seed: StrictInt = 0
    use_history: bool = False
    # External workers only: a handed-out trial not observed within this many
    # seconds ends TIMEOUT (daemon-run trials use the template's time_limit_s).
    trial_timeout_s: Annotated[float, Field(gt=0)] | None = None
    sampler: Literal["random", "sobol", "gp"] = "gp"
    early_stopping: EarlyStopping = NoEarlyStopping(rule="none")
    # The trial task template (command, resources, ...), validated by the
    # daemon's own task schema; the tuning core never looks inside.
    trial: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> TuningDescription:
        _check_names(self)
        _check_conditions(self.parameters)
        _check_early_stopping(self)
        return self

    @property
    def needs_baseline(self) -> bool:
        """Whether a baseline trial must run first (some constraint is relative to it)."""
        return any(c.relative_to == "baseline" for c in self.constraints)


def _check_names(d: TuningDescription) -> None:
    seen: set[str] = set()
    for p in d.parameters:
        if p.name in seen:
            raise ValueError(f"parameter {p.name!r}: duplicate name")
        seen.add(p.name)
    metrics = [o.metric for o in d.objectives]
    for m in metrics:
        if metrics.count(m) > 1:
            raise ValueError(f"objective {m!r}: listed twice")


def _check_conditions(params: list[Any]) -> None:
    by_name = {p.name: p for p in params}
    for p in params:
        if p.condition is None:
            continue
        parent = by_name.get(p.condition.parent)
        if parent is None:
            raise ValueError(f"parameter {p.name!r}: condition parent {p.condition.parent!r} is not a parameter")
        if parent.name == p.name:
            raise ValueError(f"parameter {p.name!r}: condition refers to itself")
        if isinstance(parent, FloatParam):
            raise ValueError(f"parameter {p.name!r}: condition parent {parent.name!r} is a float; use int, ordinal or categorical")
        for v in p.condition.values:
            if not _parent_can_take(parent, v):
                raise ValueError(f"parameter {p.name!r}: condition value {v!r} is not a value of {parent.name!r}")
    for p in params:  # follow parents; a chain longer than the list is a cycle
        seen, cur = [p.name], p
        while cur.condition is not None:
            cur = by_name[cur.condition.parent]
            if cur.name in seen:
                cycle = " -> ".join(seen[seen.index(cur.name):] + [cur.name])
                raise ValueError(f"parameter {cur.name!r}: condition cycle {cycle}")
            seen.append(cur.name)


def _parent_can_take(parent: Any, v: Any) -> bool:
    if isinstance(parent, IntParam):
        return isinstance(v, int) and not isinstance(v, bool) and parent.low <= v <= parent.high
    return choice_key(v) in {choice_key(c) for c in parent.choices}


def _check_early_stopping(d: TuningDescription) -> None:
    es = d.early_stopping
    if isinstance(es, NoEarlyStopping) or es.sense is not None:
        return
    metric = es.metric or d.objectives[0].metric
    if metric not in {o.metric for o in d.objectives}:
        raise ValueError(f"early_stopping: metric {metric!r} is not an objective, so give its 'sense'")


def early_stopping_target(d: TuningDescription) -> tuple[str, Sense] | None:
    """The intermediate metric watched by early stopping and its sense, or None."""
    es = d.early_stopping
    if isinstance(es, NoEarlyStopping):
        return None
    metric = es.metric or d.objectives[0].metric
    sense = es.sense or next(o.sense for o in d.objectives if o.metric == metric)
    return metric, sense
