"""Early stopping of trials from their intermediate values (pure).

A trial's series is ``[(step, value), ...]`` as reported by ``OAAS_METRIC``
lines; ``others`` maps every other trial of the tuning (running, finished or
stopped) to its series. Each rule answers
``should_stop(trial_id, intermediate, others, sense) -> Decision(stop, reason)``;
the reason is written for a person either way.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from oaasd.tuning.description import AshaStopping, MedianStopping

Series = Sequence[tuple[float, float]]


class Decision(NamedTuple):
    """Whether to stop a trial, and why (also when it goes on)."""

    stop: bool
    reason: str


def _better(a: float, b: float, sense: str) -> bool:
    return a < b if sense == "minimize" else a > b


def _sorted(series: Series) -> list[tuple[float, float]]:
    return sorted((float(s), float(v)) for s, v in series if v is not None and math.isfinite(v))


class NoStopping:
    """Never stops a trial."""

    def should_stop(self, trial_id: Any, intermediate: Series, others: Mapping[Any, Series], sense: str) -> Decision:
        return Decision(False, "early stopping is off")


class MedianRule:
    """Stop when the best value so far is worse than the median of the others' running averages.

    At the trial's latest step ``s``: the others that reached ``s`` each give
    the mean of their values up to ``s``. No decision before ``grace_steps``
    or with fewer than ``min_trials`` such others.
    """

    def __init__(self, grace_steps: float = 1, min_trials: int = 3):
        self.grace_steps, self.min_trials = grace_steps, min_trials

    def should_stop(self, trial_id: Any, intermediate: Series, others: Mapping[Any, Series], sense: str) -> Decision:
        own = _sorted(intermediate)
        if not own:
            return Decision(False, "no intermediate value yet")
        step = own[-1][0]
        if step < self.grace_steps:
            return Decision(False, f"step {step:g} is within the grace of {self.grace_steps:g} steps")
        vals = [v for _, v in own]
        best = min(vals) if sense == "minimize" else max(vals)
        averages = []
        for tid, series in others.items():
            ser = _sorted(series)
            if tid == trial_id or not ser or ser[-1][0] < step:
                continue
            averages.append(float(np.mean([v for s, v in ser if s <= step] or [ser[0][1]])))
        if len(averages) < self.min_trials:
            return Decision(False, f"only {len(averages)} other trials reached step {step:g} (need {self.min_trials})")
        median = float(np.median(averages))
        if _better(median, best, sense):
            return Decision(True, f"median rule: best {best:.6g} by step {step:g} is worse than the median "
                                  f"{median:.6g} of {len(averages)} trials' running averages")
        return Decision(False, f"best {best:.6g} by step {step:g} is no worse than the median {median:.6g}")


class Asha:
    """Asynchronous successive halving.

    Rungs sit at ``min_resource * eta**k`` steps (below ``max_resource``).
    When a report carries a trial past a rung, its value there (the first
    reported at or after the rung) is ranked among all trials that reached
    the rung; it goes on only in the top ``max(1, m // eta)`` of those ``m``.
    """

    def __init__(self, min_resource: float = 1, eta: float = 3, max_resource: float | None = None,
                 min_trials: int = 1):
        self.min_resource, self.eta = min_resource, eta
        self.max_resource, self.min_trials = max_resource, min_trials

    def rungs(self, up_to: float) -> list[float]:
        """Rung steps not above ``up_to`` (and below ``max_resource``)."""
        out, r = [], float(self.min_resource)
        while r <= up_to and (self.max_resource is None or r < self.max_resource):
            out.append(r)
            r *= self.eta
        return out

    def should_stop(self, trial_id: Any, intermediate: Series, others: Mapping[Any, Series], sense: str) -> Decision:
        own = _sorted(intermediate)
        if not own:
            return Decision(False, "no intermediate value yet")
        last = own[-1][0]
        prev = own[-2][0] if len(own) > 1 else -math.inf
        crossed = [r for r in self.rungs(last) if prev < r]
        if not crossed:
            return Decision(False, f"step {last:g} reached no new rung")
        rung = crossed[-1]
        value = _value_at(own, rung)
        rivals = [_value_at(_sorted(s), rung) for tid, s in others.items() if tid != trial_id]
        rivals = [v for v in rivals if v is not None]
        m = len(rivals) + 1
        if m < self.min_trials:
            return Decision(False, f"only {m} trials reached rung {rung:g} (need {self.min_trials})")
        keep = max(1, int(m // self.eta))
        rank = sum(_better(v, value, sense) for v in rivals)  # trials strictly better
        if rank >= keep:
            return Decision(True, f"asha: value {value:.6g} at rung {rung:g} ranks {rank + 1} of {m}; "
                                  f"only the top {keep} go on")
        return Decision(False, f"asha: value {value:.6g} at rung {rung:g} ranks {rank + 1} of {m}, in the top {keep}")


def _value_at(series: list[tuple[float, float]], rung: float) -> float | None:
    """The first value reported at or after ``rung``, or None if the series stops short."""
    for s, v in series:
        if s >= rung:
            return v
    return None


def make_pruner(spec: Any):
    """The early-stopping rule a description's ``early_stopping`` names."""
    if isinstance(spec, MedianStopping):
        return MedianRule(spec.grace_steps, spec.min_trials)
    if isinstance(spec, AshaStopping):
        return Asha(spec.min_resource, spec.eta, spec.max_resource, spec.min_trials)
    return NoStopping()
