"""The pipeline adaptation loops: one asyncio task per registered pipeline.

Each interval a loop reads the load from its source (URLs under its owner's
outbound policy, files on a pool of their own), forecasts and solves (the
pure :func:`oaasd.pipeline.plan`, on the ``SOLVE`` pool so the event loop
never waits on the solver), applies the configuration through its
actuator when something is to do, and appends one ``adaptations`` row. A
failing source or actuator is recorded in that row and tried again next
interval; only a bug (an unexpected exception) stops the daemon.

Storage (migration in :mod:`oaasd.schema`; the SQL of this feature lives
here and in :mod:`oaasd.pipeline.actuators`):
- ``pipelines``: the registration as validated JSON, owner, ``RUNNING`` or
  ``STOPPED``, and ``applied`` (per stage, what the command actuator last
  applied successfully, so a restart does not re-run unchanged stages);
- ``adaptations``: appended, never updated; the last ``KEEP_ADAPTATIONS``
  per pipeline are kept. A restart reloads the predictor's history and the
  last configuration from them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oaasd.config import Settings
from oaasd.errors import NotFoundError, StorageFullError, ValidationFailedError
from oaasd.models import parse_model
from oaasd.pipeline import Decision, Pipeline, PredictorSpec, plan, solve, solve_greedy
from oaasd.pipeline.actuators import (
    ActuatorSpec,
    Replicas,
    StageConfig,
    TasksActuator,
    run_commands,
)
from oaasd.pipeline.predictors import LastValuePredictor
from oaasd.pipeline.sources import (
    FileSource,
    LoadSourceError,
    SourceSpec,
    read_load,
    registrable,
)
from oaasd.ports import Intake
from oaasd.service.auth import Users
from oaasd.service.background import Background
from oaasd.service.outbound import Client, privileged
from oaasd.service.pools import SOLVE
from oaasd.store.db import Store
from oaasd.store.pipelines import PipelineStore
from oaasd.states import PipelineState

log = logging.getLogger("oaasd.pipelines")

MIN_INTERVAL_S = 0.2
HISTORY = 2000  # observations the predictor sees
KEEP_ADAPTATIONS = 10_000  # per pipeline
STATES = tuple(PipelineState)


class Registration(BaseModel):
    """Body of ``POST /v1/pipelines``: what to adapt, from which load, how to apply it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Pipeline
    source: SourceSpec
    actuator: ActuatorSpec
    interval_s: float = Field(default=30.0, ge=MIN_INTERVAL_S, le=86400, allow_inf_nan=False)
    predictor: PredictorSpec = Field(default_factory=LastValuePredictor)
    headroom: float = Field(default=0.0, ge=0, le=10, allow_inf_nan=False,
                            description="replicas for forecast x (1 + headroom), batch fill at forecast / (1 + headroom)")
    method: Literal["exact", "greedy"] = "exact"


def parse_registration(body: bytes, load_dir) -> Registration:
    """A validated registration; 422 naming the field, ``source.path`` when it leaves ``load_dir``."""
    reg = parse_model(Registration, body)
    if isinstance(reg.source, FileSource) and not registrable(reg.source.path, load_dir):
        raise ValidationFailedError("invalid Registration", [{
            "field": "source.path", "type": "outside_load_dir",
            "problem": f"a file source must lie inside the load directory {load_dir}"}])
    return reg


@dataclass
class Live:
    """A running pipeline's loop and what it remembers between intervals."""

    id: int
    name: str
    user: str
    reg: Registration
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    last: list[StageConfig] | None = None  # the configuration chosen last
    applied: dict[str, StageConfig] = field(default_factory=dict)  # command actuator: applied per stage
    replicas: Replicas | None = None
    task: asyncio.Task | None = None
    acting: asyncio.Future | None = None  # a tasks reconcile in flight (finished even when the loop stops)


class Pipelines:
    """Every RUNNING pipeline of the daemon and its loop."""

    def __init__(self, store: Store, intake: Intake, users: Users, settings: Settings, outbound: Client,
                 fatal: Callable[[str], None]):
        self.store = store
        self.rows = PipelineStore(store)
        self.intake = intake
        self.users = users
        self.settings = settings  # read at each use: a reload changes who is an admin
        self.outbound = outbound
        self.live: dict[int, Live] = {}
        self.bg = Background(fatal)
        self.load_dir = Path(settings.server.state_dir).absolute() / "loads"  # file sources must lie in it

    # ---- life cycle -------------------------------------------------
    async def create(self, reg: Registration, owner: str) -> int:
        """Commit a pipeline RUNNING and start its loop; return its id."""
        pipeline_id = await self.rows.create(reg.pipeline.name, owner, _stored(reg))
        self._start(Live(pipeline_id, reg.pipeline.name, owner, reg))
        return pipeline_id

    def privileged(self, user: str) -> bool:
        """Whether ``user``'s sources are fetched under the admins' outbound policy."""
        return privileged(self.settings, user)

    def check_destinations(self, reg: Registration, owner: str) -> None:
        """Refuse (422 naming the field) a source or callback URL the outbound policy forbids as written."""
        admin, policy = self.privileged(owner), self.outbound.policy
        if not isinstance(reg.source, FileSource):
            policy.check_registered(reg.source.url, f"source.{reg.source.kind}.url", admin)
        if isinstance(reg.actuator, TasksActuator) and reg.actuator.template.callback_url is not None:
            policy.check_registered(reg.actuator.template.callback_url, "actuator.tasks.template.callback_url", admin)

    async def resume(self) -> None:
        """At start: restart the loop of every RUNNING pipeline from the store."""
        self.load_dir.mkdir(parents=True, exist_ok=True)
        for row in await self.rows.running():
            try:
                reg = Registration.model_validate_json(row["spec"])
            except ValidationError as exc:  # stored by an older version: stop it, keep the daemon up
                log.error("pipeline %d: stored registration no longer valid, stopped: %s", row["id"], exc)
                await self.delete(row["id"])
                continue
            p = Live(row["id"], row["name"], row["user"], reg)
            p.history.extend(await self.rows.observed(p.id, HISTORY))
            p.last = _configs(await self.rows.last_configuration(p.id))
            p.applied = {c.stage: c for c in _configs(row["applied"]) or []}
            self._start(p)
            log.info("pipeline %d: resumed with %d observations", p.id, len(p.history))

    def _start(self, p: Live) -> None:
        if isinstance(p.reg.actuator, TasksActuator):
            p.replicas = Replicas(self.store, self.intake, self.users, p.id, p.name, p.user, p.reg.actuator)
        self.live[p.id] = p
        p.task = self.bg.spawn(self._loop(p), f"pipeline-{p.id}")

    async def _loop(self, p: Live) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_once(p)
            except StorageFullError:  # the state disk is full: skip this interval, keep the loop
                log.warning("pipeline %d: interval skipped, state disk full", p.id)
            await asyncio.sleep(max(0.0, p.reg.interval_s - (time.monotonic() - started)))

    async def delete(self, pipeline_id: int) -> None:
        """Stop a pipeline's loop, cancel its tasks (``tasks`` actuator) and mark it STOPPED."""
        p = self.live.pop(pipeline_id, None)
        if p is not None:
            await _halt(p)
            if p.replicas is not None:
                await p.replicas.stop()

        # After the loop is halted: the single writer commits its last row before this one.
        await self.rows.stop(pipeline_id)

    async def stop(self) -> None:
        """Daemon shutdown: halt every loop, leave the pipelines RUNNING (a restart resumes them)."""
        await asyncio.gather(*(_halt(p) for p in self.live.values()))
        self.live.clear()
        await self.outbound.close()

    # ---- one interval -----------------------------------------------
    async def run_once(self, p: Live) -> dict[str, Any]:
        """Observe, forecast, solve, apply when needed, and store the adaptation; return its row."""
        row: dict[str, Any] = {"at": time.time(), "changed": False}
        try:
            observed = await read_load(p.reg.source, self.outbound, self.load_dir, self.privileged(p.user))
        except LoadSourceError as exc:
            row["source_error"] = str(exc)
            await self._record(p.id, row)
            return row
        p.history.append(observed)
        step = functools.partial(plan, p.reg.pipeline, tuple(p.history), p.reg.predictor, 1, p.reg.headroom,
                                 solve if p.reg.method == "exact" else solve_greedy)
        forecast, decision = await SOLVE.run(step)
        wanted = stage_configs(p.reg.pipeline, decision)
        row.update(_decision_row(decision), observed_rps=observed, predicted_rps=forecast,
                   configuration=[c._asdict() for c in wanted], changed=wanted != p.last)
        p.last = wanted
        row["actuator"] = await self._actuate(p, wanted)
        await self._record(p.id, row)
        return row

    async def _actuate(self, p: Live, wanted: list[StageConfig]) -> dict[str, Any] | None:
        """Apply what differs from what is in place; None when nothing does."""
        if p.replicas is not None:
            p.acting = asyncio.ensure_future(p.replicas.reconcile(wanted))
            outcome = await asyncio.shield(p.acting)  # a stop waits for it: no task left unrecorded
            p.acting = None
            return outcome
        changed = [c for c in wanted if p.applied.get(c.stage) != c]
        if not changed:
            return None
        outcome = await run_commands(p.reg.actuator, p.id, changed)
        for cfg, result in zip(changed, outcome["stages"]):
            if result["ok"]:
                p.applied[cfg.stage] = cfg
        await self.rows.set_applied(p.id, json.dumps([c._asdict() for c in p.applied.values()]))
        return outcome

    async def _record(self, pipeline_id: int, row: dict[str, Any]) -> None:
        values = (row["at"], row.get("observed_rps"), row.get("predicted_rps"),
                  _json(row.get("configuration")), row.get("latency_ms"), row.get("accuracy"),
                  row.get("cost_cores"), row.get("objective"), row.get("feasible"), _json(row.get("reasons")),
                  int(row["changed"]), _json(row.get("actuator")), row.get("source_error"))
        await self.rows.record(pipeline_id, values, KEEP_ADAPTATIONS)

    # ---- views --------------------------------------------------------
    async def row(self, pipeline_id: int) -> dict[str, Any]:
        """A pipeline's stored row, or 404."""
        row = await self.rows.get(pipeline_id)
        if row is None:
            raise NotFoundError(f"no pipeline {pipeline_id}", [{"field": "id", "problem": "unknown pipeline id"}])
        return row

    async def summaries(self, *, user: str | None, state: str | None, before: int | None,
                   limit: int) -> list[dict[str, Any]]:
        """Summaries newest first, filtered by owner and state, ids below ``before``."""
        rows = await self.rows.page(user=user, state=state, before=before, limit=limit)
        return [summarize(r) for r in rows]

    async def view(self, row: dict[str, Any], limit: int) -> dict[str, Any]:
        """Summary, registration, current configuration and the last ``limit`` adaptations."""
        rows, last, count = await self.rows.adaptations(row["id"], limit)
        out = summarize(row)
        out["registration"] = json.loads(row["spec"])
        out["configuration"] = None if last is None else json.loads(last)
        out["applied"] = None if row["applied"] is None else json.loads(row["applied"])
        if out["actuator"] == "tasks":
            out["tasks"] = await self.rows.live_replicas(row["id"])
        out["adaptation_count"] = count
        out["adaptations"] = [_adaptation_view(a) for a in rows]
        return out


async def _halt(p: Live) -> None:
    """Cancel a loop and wait for it, and for a tasks reconcile it was in."""
    p.task.cancel()
    await asyncio.gather(p.task, return_exceptions=True)
    if p.acting is not None:
        for result in await asyncio.gather(p.acting, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("pipeline %d: reconcile failed while stopping: %r", p.id, result)


def stage_configs(pipeline: Pipeline, decision: Decision) -> list[StageConfig]:
    """The per-stage configuration of a decision, with per-replica cores and GPUs."""
    out = []
    for stage, st in zip(pipeline.stages, decision.stages):
        variant = next(v for v in stage.variants if v.name == st.variant)
        out.append(StageConfig(st.stage, st.variant, st.batch, st.replicas, variant.cores, variant.gpus))
    return out


def _stored(reg: Registration) -> str:
    """The registration as stored: every default spelled out, except a template's unset ``resources``."""
    data = reg.model_dump(mode="json")
    if isinstance(reg.actuator, TasksActuator) and "resources" not in reg.actuator.template.model_fields_set:
        del data["actuator"]["template"]["resources"]  # unset: each replica takes its variant's cores
    return json.dumps(data)


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """The list view of a pipeline row."""
    spec = json.loads(row["spec"])  # read leniently: a row an older version stored still shows
    return {**{k: row[k] for k in ("id", "name", "user", "state", "created_at", "stopped_at")},
            "interval_s": spec.get("interval_s"), "source": _kind(spec, "source"),
            "predictor": _kind(spec, "predictor"), "actuator": _kind(spec, "actuator")}


def _kind(spec: dict[str, Any], part: str) -> str | None:
    value = spec.get(part)
    return value.get("kind") if isinstance(value, dict) else None


def _decision_row(d: Decision) -> dict[str, Any]:
    return {"latency_ms": _finite(d.latency_ms), "accuracy": d.accuracy, "cost_cores": d.cost_cores,
            "objective": _finite(d.objective), "feasible": int(d.feasible),
            "reasons": [r.model_dump(mode="json") for r in d.reasons]}


def _adaptation_view(a: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key in ("configuration", "reasons", "actuator"):
        out[key] = None if a[key] is None else json.loads(a[key])
    out["feasible"] = None if a["feasible"] is None else bool(a["feasible"])
    out["changed"] = bool(a["changed"])
    return out


def _configs(raw: str | None) -> list[StageConfig] | None:
    return None if raw is None else [StageConfig(**c) for c in json.loads(raw)]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no Infinity


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)
