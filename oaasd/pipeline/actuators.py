"""Actuators of the adaptation loop: how a chosen configuration is applied.

- ``command``: an argv template run once per stage whose configuration
  changed, ``{stage}``, ``{variant}``, ``{batch}``, ``{replicas}`` and
  ``{cores}`` (per replica) substituted inside each element. It is an argv,
  never a shell string; it runs with a timeout, its exit code and the tail
  of its output are recorded.
- ``tasks``: oaasd keeps ``replicas`` long-lived tasks per stage running
  from a task template. Which tasks are a pipeline's is stored
  (``pipeline_tasks``) and read back at every interval, so a restart
  re-learns them from the store. Replicas count against the owner's limits
  like any task, and a stage whose replicas keep failing backs off
  exponentially.

Outcomes are data: ``{"status": "ok" | "failed", "message", "stages": [...]}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import string
import time
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oaasd.errors import OaasError
from oaasd.models import Resources, TaskSpec
from oaasd.ports import Intake, ReplicaLink
from oaasd.service.auth import Users
from oaasd.store.db import Store
from oaasd.store.pipelines import PipelineStore
from oaasd.states import PipelineReason

log = logging.getLogger("oaasd.pipelines")

PLACEHOLDERS = ("stage", "variant", "batch", "replicas", "cores")
OUTPUT_TAIL = 2000  # characters of a command's output kept in the record
BACKOFF_S = 1.0  # a stage's replica failed: wait this long before the next, doubled per failure in a row
BACKOFF_MAX_S = 300.0
BACKOFF_LOOKBACK = 64  # ended replicas read to count a streak (2**6 x 1 s is past the cap already)


class StageConfig(NamedTuple):
    """What one stage should run: variant, batch, replicas, and cores/GPUs per replica."""

    stage: str
    variant: str
    batch: int
    replicas: int
    cores: float
    gpus: float

    def values(self) -> dict[str, str]:
        """The placeholder values of this stage, as text."""
        return {"stage": self.stage, "variant": self.variant, "batch": str(self.batch),
                "replicas": str(self.replicas), "cores": f"{self.cores:g}"}

    def env(self, pipeline_id: int) -> dict[str, str]:
        """The ``OAAS_PIPELINE_*`` environment a command or replica sees."""
        return {"OAAS_PIPELINE_ID": str(pipeline_id),
                **{f"OAAS_PIPELINE_{k.upper()}": v for k, v in self.values().items()}}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommandActuator(_Spec):
    """Run an argv template per changed stage."""

    kind: Literal["command"]
    argv: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1, max_length=256)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("argv")
    @classmethod
    def _template(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("argv[0] must not be empty")
        for i, arg in enumerate(argv):
            if "\x00" in arg:
                raise ValueError(f"argv[{i}] must not contain NUL bytes")
            unknown = _unknown_placeholders(arg)
            if unknown:
                raise ValueError(f"argv[{i}]: {unknown}; placeholders are "
                                 + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + " ('{{' for a brace)")
        return argv

    def expand(self, cfg: StageConfig) -> list[str]:
        """The argv for one stage."""
        values = cfg.values()
        return [arg.format_map(values) for arg in self.argv]


def _unknown_placeholders(arg: str) -> str | None:
    """Why ``arg`` is not a valid template element, or None."""
    try:
        parts = list(string.Formatter().parse(arg))
    except ValueError as exc:
        return f"bad braces ({exc})"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            return f"unknown placeholder {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
    return None


class TasksActuator(_Spec):
    """Keep ``replicas`` tasks per stage running from ``template``."""

    kind: Literal["tasks"]
    template: TaskSpec

    @model_validator(mode="after")
    def _daemon_fields(self) -> "TasksActuator":
        for name in ("idempotency_key", "trial_config"):
            if getattr(self.template, name) is not None:
                raise ValueError(f"template.{name} is set by the daemon, not the template")
        if self.template.command is not None and "=" in self.template.command[0]:
            raise ValueError("template.command[0] must not contain '='")
        return self


ActuatorSpec = Annotated[CommandActuator | TasksActuator, Field(discriminator="kind")]


# ---- command ------------------------------------------------------------
async def run_commands(spec: CommandActuator, pipeline_id: int, changed: list[StageConfig]) -> dict[str, Any]:
    """Run the template for every changed stage, one after the other; the outcome."""
    stages = []
    for cfg in changed:
        result = await run_argv(spec.expand(cfg), {**os.environ, **cfg.env(pipeline_id)}, spec.timeout_s)
        stages.append({"stage": cfg.stage, **result})
    failed = [s for s in stages if not s["ok"]]
    message = "; ".join(f"{s['stage']}: {s['error']}" for s in failed) or None
    return {"status": "failed" if failed else "ok", "message": message, "stages": stages}


async def run_argv(argv: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """Run one argv (no shell) with a timeout: ok, exit code, output tail, error."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as exc:
        return _result(argv, None, bytearray(), f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    tail = bytearray()
    try:
        code = await asyncio.wait_for(_finish(proc, tail), timeout_s)
    except asyncio.TimeoutError:
        _kill_group(proc)
        await proc.wait()
        return _result(argv, None, tail, f"timed out after {timeout_s:g} s")
    except asyncio.CancelledError:  # the loop is stopping: leave nothing behind
        _kill_group(proc)
        raise
    return _result(argv, code, tail, None if code == 0 else f"exit code {code}")


async def _finish(proc: asyncio.subprocess.Process, tail: bytearray) -> int:
    """Read the output to its end, keeping only its last bytes (bounded memory); the exit code."""
    while chunk := await proc.stdout.read(65536):
        tail += chunk
        del tail[:-4 * OUTPUT_TAIL]
    return await proc.wait()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: children go too
    except ProcessLookupError:
        pass


def _result(argv: list[str], code: int | None, tail: bytearray, error: str | None) -> dict[str, Any]:
    return {"argv": argv, "ok": error is None, "exit_code": code,
            "output": tail.decode(errors="replace")[-OUTPUT_TAIL:], "error": error}


# ---- tasks --------------------------------------------------------------
def replica_plan(wanted: list[StageConfig], live: list[dict[str, Any]]) -> tuple[list[StageConfig], list[int]]:
    """(one config per replica to start, task ids to cancel) to go from ``live`` to ``wanted``.

    ``live`` rows carry ``task_id, stage, variant, batch, state``. Tasks of
    the wanted variant and batch are kept, running and oldest first; the
    others and the surplus are cancelled.
    """
    start: list[StageConfig] = []
    cancel: list[int] = []
    for cfg in wanted:
        mine = [r for r in live if r["stage"] == cfg.stage]
        fits = sorted((r for r in mine if (r["variant"], r["batch"]) == (cfg.variant, cfg.batch)),
                      key=lambda r: (r["state"] != "RUNNING", r["task_id"]))
        keep = {r["task_id"] for r in fits[:cfg.replicas]}
        cancel += [r["task_id"] for r in mine if r["task_id"] not in keep]
        start += [cfg] * (cfg.replicas - len(keep))
    return start, cancel


def replica_spec(template: TaskSpec, pipeline_id: int, name: str, owner: str, cfg: StageConfig) -> TaskSpec:
    """The task of one replica: the template's program under ``env`` with the stage's variables.

    The variables are passed as ``env NAME=value ... argv`` words, not a shell
    string (``OAAS_*`` names are reserved in a task's own ``env``). Without
    ``resources`` in the template, a replica asks for its variant's cores and GPUs.
    """
    program = list(template.command) if template.command else ["/bin/sh", "-c", template.script, "oaas-pipeline"]
    words = [f"{k}={v}" for k, v in cfg.env(pipeline_id).items()]
    update: dict[str, Any] = {"command": ["env", "--", *words, *program], "script": None, "user": owner,
                              "name": f"{name}-{cfg.stage}"[:200]}
    if "resources" not in template.model_fields_set:
        update["resources"] = Resources(cpus=max(cfg.cores, 0.001), gpus=math.ceil(cfg.gpus))
    return template.model_copy(update=update)


class Replicas:
    """The ``tasks`` actuator of one pipeline: its tasks live in the store, not in memory."""

    def __init__(self, store: Store, intake: Intake, users: Users, pipeline_id: int, name: str, owner: str,
                 spec: TasksActuator):
        self.store = store
        self.rows = PipelineStore(store)
        self.intake = intake
        self.users = users
        self.pipeline_id = pipeline_id
        self.name = name
        self.owner = owner
        self.spec = spec
        self.cancelling: set[int] = set()  # asked to stop, may still be RUNNING for the kill grace

    async def live(self) -> list[dict[str, Any]]:
        """This pipeline's tasks that are PENDING or RUNNING and not being cancelled, oldest first."""
        rows = await self.rows.live_replicas(self.pipeline_id)
        self.cancelling &= {r["task_id"] for r in rows}  # forget the ones that ended
        return [r for r in rows if r["task_id"] not in self.cancelling]

    async def reconcile(self, wanted: list[StageConfig]) -> dict[str, Any] | None:
        """Start missing replicas, then cancel replaced and surplus ones; None when nothing to do.

        Replicas are admitted like any task of the owner (``max_pending``,
        submit rate): the ones held back wait for a later interval
        (``quota_wait``). A stage whose replicas keep failing waits
        ``backoff_s`` before its next one (``backoff``).
        """
        start, cancel = replica_plan(wanted, await self.live())
        if not start and not cancel:
            return None
        backoff = await self.backoff(time.time())
        ready = [cfg for cfg in start if cfg.stage not in backoff]
        started, errors = [], []
        async with self.users.admission(self.owner, len(ready), self.store.count_pending) as grant:
            for cfg in ready[:grant.count]:
                try:
                    started.append(await self._start(cfg))
                except OaasError as exc:
                    errors.append(f"{cfg.stage}: {exc.message}")
        cancelled = await self._cancel(cancel, PipelineReason.PIPELINE_ADAPTED, errors)
        out = {"status": "failed" if errors else "ok", "message": "; ".join(errors) or None,
               "started": started, "cancelled": cancelled}
        if grant.count < len(ready):
            out["quota_wait"] = {**grant.refusal.detail[0], "message": grant.refusal.message,
                                 "held_back": len(ready) - grant.count}
        if backoff:
            out["backoff"] = backoff
        return out

    async def backoff(self, now: float) -> dict[str, dict[str, Any]]:
        """The stages whose latest replicas failed in a row and must still wait: failures, backoff_s, retry_at.

        The wait doubles with each failure in a row (``BACKOFF_S`` ..
        ``BACKOFF_MAX_S``) and counts from the last failure's end; a replica
        that COMPLETED ends the streak, a cancelled one is neither.
        """
        rows = await self.rows.ended_replicas(self.pipeline_id, BACKOFF_LOOKBACK)
        streaks: dict[str, list[float]] = {}
        over: set[str] = set()  # stages whose streak a COMPLETED replica ended
        for r in rows:
            if r["stage"] in over:
                continue
            if r["state"] == "COMPLETED":
                over.add(r["stage"])
            else:
                streaks.setdefault(r["stage"], []).append(r["ended_at"] or now)
        out = {}
        for stage, ends in streaks.items():
            wait = min(BACKOFF_S * 2 ** (len(ends) - 1), BACKOFF_MAX_S)
            if now < ends[0] + wait:
                out[stage] = {"failures": len(ends), "backoff_s": wait, "retry_at": ends[0] + wait}
        return out

    async def _start(self, cfg: StageConfig) -> int:
        spec = replica_spec(self.spec.template, self.pipeline_id, self.name, self.owner, cfg)
        link = ReplicaLink(self.pipeline_id, cfg.stage, cfg.variant, cfg.batch)
        return (await self.intake.submit(spec, link)).task_id  # task and pipeline_tasks row: one transaction

    async def _cancel(self, task_ids: list[int], reason: str, errors: list[str]) -> list[int]:
        done = []
        for task_id in task_ids:
            try:
                await self.intake.cancel(task_id, reason)
            except OaasError as exc:  # mid-launch: the next interval tries again
                errors.append(f"task {task_id}: {exc.message}")
                continue
            self.cancelling.add(task_id)
            done.append(task_id)
        return done

    async def stop(self) -> list[int]:
        """Cancel every live task of the pipeline (it was deleted)."""
        self.cancelling.clear()
        errors: list[str] = []
        done = await self._cancel([r["task_id"] for r in await self.live()], "PipelineStopped", errors)
        for error in errors:
            log.warning("pipeline %d stopped, but %s", self.pipeline_id, error)
        return done
