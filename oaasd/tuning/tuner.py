"""The pure brain of one tuning: what to launch next, what counts, when to stop.

The daemon keeps trials in SQLite and hands them in as ``Trial`` rows on
every call; a ``Tuner`` holds nothing a restart would lose except the GP's
warm start (a cost, not a result). Trial states are the daemon's task states
(``PENDING RUNNING COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL``): PENDING
and RUNNING trials are *pending*, COMPLETED ones with every objective and
constraint metric are *observations*, anything else only marks its
configuration as tried. Stop reasons are CamelCase codes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from oaasd.states import ACTIVE, TuningReason
from oaasd.tuning.description import TuningDescription, early_stopping_target
from oaasd.tuning.pareto import pareto_front
from oaasd.tuning.pruners import Decision, make_pruner
from oaasd.tuning.samplers import Observation, make_sampler
from oaasd.tuning.space import Space


@dataclass(frozen=True)
class Trial:
    """One trial as stored by the daemon; ``metrics`` is its final ``OAAS_RESULT``."""

    trial_id: Any
    config: dict[str, Any]
    state: str
    metrics: Mapping[str, float] | None = None
    baseline: bool = False


@dataclass(frozen=True)
class Suggestion:
    """A configuration to launch; ``baseline`` marks the trial the relative constraints refer to."""

    config: dict[str, Any]
    baseline: bool = False


@dataclass
class Tuner:
    """Suggestions, observations, early stopping and the best result of one tuning."""

    description: TuningDescription
    space: Space = field(init=False)

    def __post_init__(self) -> None:
        d = self.description
        self.space = Space(d.parameters)
        self.senses = [o.sense for o in d.objectives]
        self.sampler = make_sampler(d.sampler, self.space, self.senses, d.seed)
        self.pruner = make_pruner(d.early_stopping)

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> Tuner:
        """A tuner from the submitted JSON (raises pydantic ``ValidationError`` when invalid)."""
        if isinstance(data, (str, bytes)):
            return cls(TuningDescription.model_validate_json(data))
        return cls(TuningDescription.model_validate(data))

    # -- what to launch ---------------------------------------------------------
    def baseline_config(self) -> dict[str, Any]:
        """The configuration of the baseline trial."""
        b = self.description.baseline
        return dict(b.config) if b is not None and b.config is not None else self.space.default_config()

    def room(self, trials: Sequence[Trial]) -> int:
        """How many new trials may start now (0: wait, or nothing left to start).

        The baseline runs first and alone. ``async`` keeps ``worker_num``
        trials open. ``sync`` works in rounds of ``worker_num`` trials (the
        non-baseline trials in order of creation, chunked): a round is handed
        out trial by trial, and the next one starts only once every trial of
        the round has ended.
        """
        d = self.description
        if self.stop_reason(trials) is not None:
            return 0
        if d.needs_baseline:
            base = [t for t in trials if t.baseline]
            if not base:
                return 1
            if base[0].state in ACTIVE:
                return 0
        others = [t for t in trials if not t.baseline]
        active = sum(t.state in ACTIVE for t in others)
        if d.parallel_strategy == "sync":
            started = len(others) % d.worker_num  # trials of the current round handed out so far
            free = 0 if started == 0 and active else d.worker_num - started
        else:
            free = d.worker_num - active
        return max(0, min(free, d.number_of_trials - len(trials)))

    def suggest(self, trials: Sequence[Trial], prior: Sequence[Trial] = (), n: int | None = None) -> list[Suggestion]:
        """At most ``n`` (default: all there is ``room`` for) configurations to launch now.

        Given every trial so far (and earlier tunings' trials as ``prior``).
        The sampler computes exactly as many as are returned.
        """
        room = self.room(trials)
        n = room if n is None else min(n, room)
        if n <= 0:
            return []
        if self.description.needs_baseline and not any(t.baseline for t in trials):
            return [Suggestion(self.baseline_config(), baseline=True)]
        history = self.observations(trials)
        if self.description.use_history:
            history = self.observations(prior, baseline_from=trials) + history
        pending = [t.config for t in trials if t.state in ACTIVE and self._in_space(t)]
        return [Suggestion(c) for c in self.sampler.suggest(history, pending, n)]

    def _in_space(self, t: Trial) -> bool:
        return not self.space.validate(t.config)

    # -- what counts ------------------------------------------------------------
    def thresholds(self, trials: Sequence[Trial]) -> list[float] | None:
        """Each constraint's absolute bound, or None while the baseline has no result."""
        base = next((t for t in trials if t.baseline), None)
        out = []
        for c in self.description.constraints:
            if c.relative_to is None:
                out.append(c.value)
                continue
            if base is None or base.state != "COMPLETED" or not base.metrics or c.metric not in base.metrics:
                return None
            out.append(c.value * float(base.metrics[c.metric]))
        return out

    def slacks(self, metrics: Mapping[str, float], thresholds: Sequence[float]) -> tuple[float, ...]:
        """Per constraint, how far ``metrics`` are inside (>= 0) or outside (< 0) the bound."""
        out = []
        for c, bound in zip(self.description.constraints, thresholds):
            v = float(metrics[c.metric])
            out.append(v - bound if c.op == ">=" else bound - v)
        return tuple(out)

    def is_feasible(self, metrics: Mapping[str, float] | None, trials: Sequence[Trial]) -> bool:
        """Whether final ``metrics`` satisfy every constraint (False while thresholds are unknown)."""
        bounds = self.thresholds(trials)
        if bounds is None or not self._complete(metrics):
            return False
        return all(s >= 0 for s in self.slacks(metrics, bounds))

    def _complete(self, metrics: Mapping[str, float] | None) -> bool:
        d = self.description
        names = [o.metric for o in d.objectives] + [c.metric for c in d.constraints]
        return metrics is not None and all(
            isinstance(metrics.get(m), (int, float)) and np.isfinite(metrics[m]) for m in names)

    def observations(self, trials: Sequence[Trial], baseline_from: Sequence[Trial] | None = None) -> list[Observation]:
        """The finished trials whose configuration lies in the space, as sampler history."""
        bounds = self.thresholds(baseline_from if baseline_from is not None else trials)
        out = []
        for t in trials:
            if t.state in ACTIVE or not self._in_space(t):
                continue
            if t.state == "COMPLETED" and self._complete(t.metrics) and bounds is not None:
                values = tuple(float(t.metrics[o.metric]) for o in self.description.objectives)
                out.append(Observation(t.config, values, self.slacks(t.metrics, bounds)))
            else:
                out.append(Observation(t.config, None))
        return out

    # -- results ------------------------------------------------------------------
    def feasible_trials(self, trials: Sequence[Trial]) -> list[Trial]:
        """Completed trials of the space that satisfy every constraint.

        The baseline is the reference, not a candidate: it is never among them.
        """
        return [t for t in trials if t.state == "COMPLETED" and not t.baseline and self._in_space(t)
                and self.is_feasible(t.metrics, trials)]

    def best(self, trials: Sequence[Trial]) -> Trial | None:
        """The best feasible trial of the first objective (the earliest on ties), or None."""
        ok = self.feasible_trials(trials)
        if not ok:
            return None
        o = self.description.objectives[0]
        sign = 1.0 if o.sense == "minimize" else -1.0
        return min(ok, key=lambda t: sign * float(t.metrics[o.metric]))

    def pareto(self, trials: Sequence[Trial]) -> list[Trial]:
        """The feasible trials no other feasible trial dominates on all objectives."""
        ok = self.feasible_trials(trials)
        if not ok:
            return []
        pts = np.array([[float(t.metrics[o.metric]) for o in self.description.objectives] for t in ok])
        return [ok[i] for i in pareto_front(pts, self.senses)]

    # -- when to stop ---------------------------------------------------------------
    def stop_reason(self, trials: Sequence[Trial], elapsed_s: float = 0.0) -> str | None:
        """Why the tuning launches nothing more, or None while it goes on.

        ``TimeBudget``, ``BaselineFailed``, ``FirstFeasible``, ``NumberOfTrials``
        (every trial launched; the running ones may still finish).
        """
        d = self.description
        if d.time_budget_s is not None and elapsed_s >= d.time_budget_s:
            return TuningReason.TIME_BUDGET
        base = next((t for t in trials if t.baseline), None)
        if d.needs_baseline and base is not None and base.state not in ACTIVE and self.thresholds(trials) is None:
            return TuningReason.BASELINE_FAILED
        if d.stop_when == "first_feasible" and self.feasible_trials(trials):
            return TuningReason.FIRST_FEASIBLE
        if len(trials) >= d.number_of_trials:
            return TuningReason.NUMBER_OF_TRIALS
        return None

    def should_stop(self, trial_id: Any, intermediate: Sequence[tuple[float, float]],
                    others: Mapping[Any, Sequence[tuple[float, float]]]) -> Decision:
        """Early-stopping decision for a running trial from its ``OAAS_METRIC`` series."""
        target = early_stopping_target(self.description)
        if target is None:
            return Decision(False, "early stopping is off")
        return self.pruner.should_stop(trial_id, intermediate, others, target[1])

    def intermediate_metric(self) -> str | None:
        """The ``OAAS_METRIC`` key early stopping watches, or None."""
        target = early_stopping_target(self.description)
        return None if target is None else target[0]


def space_fingerprint(description: TuningDescription) -> str:
    """A hash of the parameters' names and types and of the objectives.

    Tunings with equal fingerprints can share history (``use_history``):
    bounds and choices may differ, as the tuner keeps only the earlier
    configurations that lie in its own space.
    """
    data = {"parameters": sorted((p.name, p.type) for p in description.parameters),
            "objectives": [(o.metric, o.sense) for o in description.objectives]}
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]
