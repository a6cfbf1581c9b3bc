"""The vocabulary of trials shared by the tuning driver and the external workers.

Trial states as the tuner sees them, the trial template of a daemon-run
tuning, how a ``POST /v1/tunings`` body is parsed, and the views of
tunings and trials. Pure functions over rows and ``Tuner``s: no store, no
asyncio.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import ValidationError

from oaasd.errors import ValidationFailedError, pydantic_detail
from oaasd.models import TaskSpec, parse_model
from oaasd.states import State, TuningReason
from oaasd.tuning import Trial, Tuner, TuningDescription
from oaasd.tuning.openbox import is_openbox, normalize

FAILED_STATES = (State.FAILED.value, State.TIMEOUT.value, State.NODE_FAIL.value, State.OUT_OF_MEMORY.value)
CANCEL_ACTIVE = (TuningReason.TIME_BUDGET, TuningReason.FIRST_FEASIBLE)  # running trials no longer matter
RESOURCE_KEYS = ("cpus", "memory_mb", "gpus", "cores")  # template shorthands for ``resources``


def trial_template(raw: dict[str, Any] | None) -> TaskSpec | None:
    """The task template of a tuning's trials (None: external workers run them); 422 naming ``trial.<field>``.

    Accepts the task schema, plus resource keys at the top level
    (``cpu_milli``, ``cpus``, ``memory_mb``, ``gpus``) as in
    ``examples/quantize/tuning.json``.
    """
    if raw is None:
        return None
    spec = dict(raw)
    for key in ("trial_config", "idempotency_key"):
        if key in spec:
            raise ValidationFailedError("invalid tuning", [{"field": f"trial.{key}", "type": "forbidden",
                                                            "problem": "set by the daemon per trial"}])
    resources = dict(spec.get("resources") or {})
    if "cpu_milli" in spec:
        milli = spec.pop("cpu_milli")
        resources["cpus"] = milli / 1000 if isinstance(milli, (int, float)) and not isinstance(milli, bool) else milli
    for key in RESOURCE_KEYS:
        if key in spec:
            resources[key] = spec.pop(key)
    if resources:
        spec["resources"] = resources
    try:
        return TaskSpec.model_validate(spec, strict=True)
    except ValidationError as exc:
        detail = [{**d, "field": f"trial.{d['field']}"} for d in pydantic_detail(exc)]
        raise ValidationFailedError("invalid trial task template", detail) from None


def to_trial(row: dict[str, Any]) -> Trial:
    """A stored trial row as the tuner's ``Trial``."""
    return Trial(row["trial_id"], row["config"], row["state"], row["result"], row["baseline"])


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """The list view of a tuning row."""
    out = {k: row[k] for k in ("id", "name", "user", "state", "reason", "created_at", "ended_at")}
    out["elapsed_s"] = (row["ended_at"] or time.time()) - row["created_at"]
    return out


def series_of(metrics: list[dict[str, Any]], metric: str) -> list[tuple[float, float]]:
    """``(step, value)`` of one intermediate metric; ``step`` defaults to the line's position."""
    out = []
    for i, m in enumerate(metrics, start=1):
        v, s = m.get(metric), m.get("step", i)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(s, (int, float)):
            out.append((float(s), float(v)))
    return out


def numbers(rows: list[dict[str, Any]]) -> dict[int, int]:
    """Each trial's per-tuning number (0, 1, 2, ... in creation order) from its tuning's ``trials`` rows.

    A tuning's trials are never deleted and ``trials`` lists them oldest first,
    so a trial keeps its number for the tuning's life.
    """
    return {r["trial_id"]: i for i, r in enumerate(rows)}


def trial_view(r: dict[str, Any], number: int | None = None) -> dict[str, Any]:
    """One trial as the tuning view shows it (daemon-run: task and node; external: worker)."""
    state = "PRUNED" if r["pruned"] and r["state"] == State.CANCELLED else r["state"]
    end = r["ended_at"] if r["ended_at"] is not None else (None if r["started_at"] is None else time.time())
    duration = r.get("elapsed_s")
    if duration is None and r["started_at"] is not None:
        duration = end - r["started_at"]
    return {"trial_id": r["trial_id"], "number": number, "task_id": r["task_id"], "config": r["config"],
            "baseline": r["baseline"], "state": state, "reason": r["prune_reason"] if state == "PRUNED" else r["reason"],
            "message": r["message"], "metrics": r["result"], "node": r["node"], "worker_id": r.get("worker_id"),
            "started_at": r["started_at"], "ended_at": r["ended_at"], "duration_s": duration}


def brief(r: dict[str, Any], tuner: Tuner) -> dict[str, Any]:
    """A trial as the best and the Pareto front show it, by the first objective."""
    o = tuner.description.objectives[0]
    value = (r["result"] or {}).get(o.metric)
    return {"trial_id": r["trial_id"], "number": r.get("number"), "task_id": r["task_id"], "config": r["config"],
            "metrics": r["result"], "metric": o.metric, "value": value}


def best_of(tuner: Tuner, trials: list[Trial], by_id: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The best feasible trial; when none is feasible, the best completed one, marked so."""
    best = tuner.best(trials)
    if best is not None:
        return {**brief(by_id[best.trial_id], tuner), "feasible": True}
    o = tuner.description.objectives[0]
    done = [t for t in trials if t.state == State.COMPLETED and not t.baseline and t.metrics
            and isinstance(t.metrics.get(o.metric), (int, float))]
    if not done:
        return None
    sign = 1.0 if o.sense == "minimize" else -1.0
    t = min(done, key=lambda t: sign * float(t.metrics[o.metric]))
    return {**brief(by_id[t.trial_id], tuner), "feasible": False}


def parse_description(body: bytes) -> tuple[dict[str, Any], TuningDescription, TaskSpec | None]:
    """The stored JSON, the validated description and the trial template of a ``POST /v1/tunings``.

    An OpenBox description (see ``openbox``) is stored normalized, so the view echoes the native form.
    """
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raw = None  # parse_model reports it
    if is_openbox(raw):
        normalized, desc = normalize(raw)
        return normalized, desc, trial_template(desc.trial)
    desc = parse_model(TuningDescription, body)
    return json.loads(body), desc, trial_template(desc.trial)

