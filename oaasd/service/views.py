"""What the API shows of tasks: list and full views, built from store rows and live state.

Pending tasks say why they wait (the scheduler's last answer); a task's full
view adds its spec, history, attempts, metrics and callback delivery. Also
the two waits of a log follow (first attempt, attempt over).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from oaasd.models import TaskSpec
from oaasd.ports import TaskStore
from oaasd.service.callbacks import Callbacks
from oaasd.service.runner import Runner
from oaasd.service.scheduler import Scheduler
from oaasd.states import Reason, State, is_final

SUMMARY_FIELDS = ("id", "name", "user", "state", "reason", "message", "priority", "submitted_at", "started_at",
                  "ended_at", "node_failures")


class Views:
    """The task views of the API."""

    def __init__(self, store: TaskStore, scheduler: Scheduler, runner: Runner, callbacks: Callbacks):
        self.store = store
        self.scheduler = scheduler
        self.runner = runner
        self.callbacks = callbacks

    def summarize(self, row: dict[str, Any]) -> dict[str, Any]:
        """The list view of a task row."""
        out = {k: row[k] for k in SUMMARY_FIELDS}
        out["attempt_count"] = row["attempts"]
        out["result"] = None if row["result"] is None else json.loads(row["result"])
        if row["state"] == State.PENDING:
            waiting = self.scheduler.pending_reason(row["id"])
            if waiting is not None:
                out["reason"], out["nodes_rejected"] = waiting
            factors = self.scheduler.priority_factors(row["id"])
            if factors is not None:
                out["priority_factors"] = factors
        elif row["state"] == State.RUNNING:
            run = self.runner.runs.get(row["id"])
            queued = getattr(run.handle, "waiting", None) if run is not None else None  # ports.Queued
            if queued:  # Slurm still queues its job
                out["reason"], out["message"] = Reason.SLURM_PENDING.value, queued
        return out

    def new_task_summary(self, task_id: int, spec: TaskSpec, submitted_at: float) -> dict[str, Any]:
        """The list view of a task just committed, without reading it back."""
        row = {"id": task_id, "name": spec.name, "user": spec.user, "state": State.PENDING.value,
               "reason": Reason.SUBMITTED.value, "message": None, "priority": spec.priority,
               "submitted_at": submitted_at, "started_at": None, "ended_at": None, "node_failures": 0,
               "attempts": 0, "result": None}
        return self.summarize(row)

    async def task_summary(self, task_id: int) -> dict[str, Any]:
        """The list view of one task."""
        return self.summarize(await self.store.get_task(task_id))

    async def task_view(self, task_id: int) -> dict[str, Any]:
        """The full view: spec, state, history, attempts, result, metrics."""
        row = await self.store.get_task(task_id)
        view = self.summarize(row)
        view["spec"] = TaskSpec.model_validate_json(row["spec"]).model_dump(mode="json")
        view["history"] = await self.store.task_events(task_id)
        view["attempts"] = [attempt_view(a) for a in await self.store.task_attempts(task_id)]
        view["metrics"] = [{"at": m["at"], "attempt": m["attempt_id"], **m["data"]}
                           for m in await self.store.task_metrics(task_id)]
        view["callback"] = await self.callbacks.view(task_id)
        return view

    def log_path(self, task_id: int, seq: int, stream: str) -> Path:
        """The head-node file of one attempt's ``stdout`` or ``stderr``."""
        return self.runner.attempt_dir(task_id, seq) / f"{stream}.log"

    async def wait_first_attempt(self, task_id: int, timeout_s: float = 3600) -> int:
        """For log follow: wait until the task has an attempt (or is final)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            row = await self.store.get_task(task_id)
            if row["attempts"] or is_final(row["state"]):
                return row["attempts"]
            await asyncio.sleep(0.2)
        return 0

    def attempt_over(self, task_id: int, seq: int) -> bool:
        """True once attempt ``seq`` of a task is no longer running."""
        run = self.runner.runs.get(task_id)
        return run is None or run.seq != seq


def attempt_view(a: dict[str, Any]) -> dict[str, Any]:
    """The API view of one attempt row."""
    placement = json.loads(a["placement"])
    hosts = placement.get("hosts", [])
    notes = []
    if a["metrics_dropped"]:
        notes.append(f"{a['metrics_dropped']} OAAS_METRIC lines dropped: {a['metrics_stored']} stored reached "
                     "reporting.max_metrics_per_attempt")
    return {"attempt": a["seq"], "node": a["node"], "hosts": hosts, "binding": placement.get("binding", {}),
            "state": a["state"],
            "started_at": a["started_at"], "ended_at": a["ended_at"], "exit_code": a["exit_code"],
            "signal": a["signal"], "reason": a["reason"], "message": a["message"],
            "stdout_read_bytes": a["stdout_offset"], "metrics_stored": a["metrics_stored"],
            "metrics_dropped": a["metrics_dropped"], "max_rss_mb": a["max_rss_mb"], "cpu_s": a["cpu_s"],
            "elapsed_s": a["elapsed_s"], "enforced": enforced_view(a), "notes": notes, **_slurm_job(a["locator"])}


def enforced_view(a: dict[str, Any]) -> dict[str, Any] | None:
    """What the attempt's node enforced, from its locator: the cgroup kind and paths (None: no cgroup)."""
    loc = json.loads(a["locator"]) if a["locator"] else {}
    if not loc.get("cgroups"):
        return None
    return {"enforcement": loc["cgroup"], "cgroups": sorted(set(loc["cgroups"].values()))}


def _slurm_job(locator: str | None) -> dict[str, Any]:
    """``slurm_job_id`` of an attempt a Slurm job runs (its locator holds it), else nothing."""
    job_id = json.loads(locator).get("slurm_job_id") if locator else None
    return {} if job_id is None else {"slurm_job_id": str(job_id)}
