"""Launching and result reporting: one coroutine per running attempt.

Each attempt's coroutine starts (or re-adopts) the process through its
node's Launcher, tails the head-node log files for protocol lines, enforces
the time limit, kills on cancel, and when the process ends turns its Exit
and Report into one store verb: a final state, or back to PENDING when its
node failed and retries remain. Resources are freed and the scheduler woken
only after that commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oaasd.errors import StorageFullError
from oaasd.launchers.protocol import (
    METRIC,
    LineTail,
    Report,
    parse_line,
    read_result_file,
)
from oaasd.models import TaskSpec
from oaasd.ports import Exit, Handle, Host, LaunchJob, Locator
from oaasd.service.background import Background
from oaasd.states import Reason, State

if TYPE_CHECKING:
    from oaasd.service.daemon import Daemon

log = logging.getLogger("oaasd.runner")

TAIL_INTERVAL_S = (0.05, 0.5)  # tail poll starts fast and backs off while quiet
WAKE_BUDGET = 64 << 20  # log bytes scanned per wake-up before the time limit is checked again
# The read offset is stored with every batch of metrics; with log text alone, at most this often:
PERSIST_EVERY_S = 2.0
PERSIST_EVERY_BYTES = 128 << 20


@dataclass
class Run:
    """The live part of one running attempt."""

    task_id: int
    attempt_id: int
    seq: int
    node: str
    placement: dict[str, Any]
    spec: TaskSpec
    job: LaunchJob
    handle: Handle | None = None
    cancel_reason: str | None = None
    requeue_reason: str | None = None  # killed for its node's sake: back to PENDING
    lost_reason: str | None = None  # its node went DOWN: a node failure, under max_retries
    timed_out: bool = False
    report: Report = field(default_factory=Report)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float | None = None  # the attempt row's wall-clock start (deadlines count from it)
    stdout_offset: int = 0  # stdout.log read up to here (stored with the metrics before it)
    metrics_stored: int = 0
    metrics_dropped: int = 0  # OAAS_METRIC lines beyond reporting.max_metrics_per_attempt
    dropped_stored: int = 0  # metrics_dropped as last committed
    persisted_at: float = field(default_factory=time.monotonic)
    skip_metrics: int = 0  # only for attempts started before schema 7, which stored no offset


def build_job(spec: TaskSpec, task_id: int, attempt_id: int, seq: int, attempt_dir: Path,
              hosts: list[Host]) -> LaunchJob:
    """Assemble the argv, environment and paths of one attempt (its directory made private first)."""
    secure_attempt_dir(attempt_dir)
    if spec.script is not None:
        (attempt_dir / "script.sh").write_text(spec.script)  # for people; the argv carries it to any node
        argv = ["/bin/sh", "-c", spec.script, "oaas-script"]
    else:
        argv = list(spec.command)
    env = {
        **spec.env,
        "OAAS_TASK_ID": str(task_id),
        "OAAS_ATTEMPT": str(seq),
        "OAAS_NODE": hosts[0].node,
        "OAAS_WORKERS": str(spec.workers),
        "OAAS_RESULT_FILE": str(attempt_dir / "result.json"),
    }
    if spec.workers > 1:
        hostfile = attempt_dir / "hostfile"
        hostfile.write_text("".join(f"{h.address} slots={h.slots}\n" for h in hosts))
        env["OAAS_HOSTFILE"] = str(hostfile)
    if spec.trial_config is not None:
        env["OAAS_TRIAL_CONFIG"] = json.dumps(spec.trial_config)
    return LaunchJob(task_id=task_id, attempt_id=attempt_id, argv=argv, env=env, workdir=spec.workdir,
                     attempt_dir=attempt_dir, hosts=hosts, workers=spec.workers, user=spec.user)


def secure_attempt_dir(attempt_dir: Path) -> None:
    """``attempts/`` and the task's folder 0711 (a task walks to its own attempt by path,
    lists nothing), the attempt's own 0700 (the launcher hands it to the task's account)."""
    attempt_dir.mkdir(parents=True, exist_ok=True)
    for folder in (attempt_dir.parent.parent, attempt_dir.parent):
        os.chmod(folder, 0o711)
    os.chmod(attempt_dir, 0o700)


class Runner:
    """Owns every running attempt of the daemon."""

    def __init__(self, daemon: "Daemon"):
        self.d = daemon
        self.runs: dict[int, Run] = {}
        self.bg = Background(daemon.fatal)

    def attempt_dir(self, task_id: int, seq: int) -> Path:
        """Return the head-node directory of one attempt."""
        return self.d.state_dir / "attempts" / str(task_id) / str(seq)

    # ---- start ------------------------------------------------------
    async def launch(self, task_id: int, spec: TaskSpec, node: str, placement: dict[str, Any],
                     hosts: list[Host]) -> None:
        """Commit the attempt (PENDING -> RUNNING), then start its process."""
        attempt_id, seq = await self.d.store.start_attempt(task_id, node, placement)
        self.d.publish_state(task_id, State.PENDING, State.RUNNING, Reason.PLACED, node=node)
        adir = self.attempt_dir(task_id, seq)
        adir.mkdir(parents=True, exist_ok=True)
        job = build_job(spec, task_id, attempt_id, seq, adir, hosts)
        run = Run(task_id, attempt_id, seq, node, placement, spec, job)
        if spec.time_limit_s is not None:
            run.started_at = await self._stored_start(task_id, attempt_id)
        self.runs[task_id] = run
        kind = self.d.launcher_kind(hosts, spec.workers)
        try:
            run.handle = await self.d.launchers[kind].start(job)
        except Exception as exc:  # a launch that cannot start ends the attempt, never the loop
            log.warning("task %d: launch on %s failed: %s", task_id, node, exc)
            await self._finish(run, Exit(exit_code=None, lost=True, reason=f"launch failed: {exc}"),
                               launch_failed=True)
            return
        loc = run.handle.locator
        record = {"pid": loc.pid, "start_time": loc.start_time, "launcher": kind, **loc.extra}
        (adir / "locator.json").write_text(json.dumps(record))
        await self.d.store.set_locator(attempt_id, record)
        self.bg.spawn(self._watch(run), f"attempt-{attempt_id}")

    async def adopt(self, row: dict[str, Any], hosts: list[Host]) -> bool:
        """Reattach to an attempt found RUNNING at start; False when it is gone."""
        spec = TaskSpec.model_validate_json(row["spec"])
        adir = self.attempt_dir(row["task_id"], row["seq"])
        job = build_job(spec, row["task_id"], row["id"], row["seq"], adir, hosts)
        run = Run(row["task_id"], row["id"], row["seq"], row["node"], json.loads(row["placement"]), spec, job)
        self.runs[run.task_id] = run
        loc = json.loads(row["locator"]) if row["locator"] else _read_locator(adir)
        handle = None
        if loc is not None:
            kind = loc.pop("launcher", None) or self.d.launcher_kind(hosts, spec.workers)
            locator = Locator(pid=loc.pop("pid"), start_time=loc.pop("start_time"), extra=loc)
            try:
                handle = await self.d.launchers[kind].adopt(job, locator)
            except Exception as exc:
                log.warning("task %d: adopt on %s failed: %s", run.task_id, run.node, exc)
        if handle is None:
            await self._finish(run, Exit(exit_code=None, lost=True,
                                         reason="process not found after daemon restart"))
            return False
        run.handle = handle
        await self._resume_output(run, row)
        self.bg.spawn(self._watch(run), f"attempt-{run.attempt_id}")
        log.info("task %d: re-adopted attempt %d (pid %d) on %s", run.task_id, run.attempt_id,
                 handle.locator.pid, run.node)
        return True

    async def _stored_start(self, task_id: int, attempt_id: int) -> float:
        """The committed wall-clock start of an attempt (the same value adopt reads after a restart)."""
        rows = await self.d.store.task_attempts(task_id)
        return next(r["started_at"] for r in rows if r["id"] == attempt_id)

    async def _resume_output(self, run: Run, row: dict[str, Any]) -> None:
        """Take up reporting where the stored offset says (never re-read or re-store what is stored)."""
        run.started_at = row["started_at"]
        run.stdout_offset = row["stdout_offset"]
        run.metrics_stored = row["metrics_stored"]
        run.metrics_dropped = run.dropped_stored = row["metrics_dropped"]
        if run.stdout_offset == 0 and run.metrics_stored:
            run.skip_metrics = run.metrics_stored  # started before schema 7: read again, skip the stored
        if run.spec.trial_config is not None and run.metrics_stored:  # a tuning's pruner reads the series
            rows = await self.d.store.task_metrics(run.task_id, limit=run.metrics_stored)
            run.report.metrics = [m["data"] for m in rows if m["attempt_id"] == run.attempt_id]

    # ---- watch ------------------------------------------------------
    async def _watch(self, run: Run) -> None:
        cfg = self.d.settings.reporting
        tail = LineTail(run.job.stdout_path, run.stdout_offset, cfg.max_protocol_line_bytes)
        waiter = asyncio.ensure_future(run.handle.wait())
        limit = run.spec.time_limit_s
        deadline = None if limit is None else (run.started_at or time.time()) + limit
        interval = TAIL_INTERVAL_S[0]
        try:
            while not waiter.done():
                wait = 0.0 if tail.more else interval
                timeout = wait if deadline is None else max(0.0, min(wait, deadline - time.time()))
                await asyncio.wait([waiter], timeout=timeout)
                got = await self._drain(run, tail, WAKE_BUDGET)
                interval = TAIL_INTERVAL_S[0] if got else min(interval * 2, TAIL_INTERVAL_S[1])
                if deadline is not None and not waiter.done() and time.time() >= deadline and not run.timed_out:
                    run.timed_out = True
                    self.bg.spawn(run.handle.kill(self.d.settings.server.kill_grace_s), f"kill-{run.attempt_id}")
            exit_ = waiter.result()
            await self._drain(run, tail, None, final=True)
        except asyncio.CancelledError:
            waiter.cancel()  # daemon shutdown: leave the process to be re-adopted
            raise
        finally:
            tail.close()
        read_result_file(run.job.result_path, run.report)
        await self._finish(run, exit_)

    async def _drain(self, run: Run, tail: LineTail, budget: int | None, final: bool = False) -> int:
        """Read the log slice by slice (the loop serves others between slices); return the bytes read."""
        first = tail.position
        while True:
            await self._consume(run, tail.read(final), tail.offset, final)
            if not tail.more or (budget is not None and tail.position - first >= budget):
                return tail.position - first
            await asyncio.sleep(0)

    async def _consume(self, run: Run, lines: list[bytes], offset: int, final: bool = False) -> None:
        """Store the new metrics of one slice together with the offset after them."""
        cap = self.d.settings.reporting.max_metrics_per_attempt
        new, dropped = [], run.metrics_dropped
        for line in lines:
            if run.metrics_stored + len(new) >= cap and line.startswith(METRIC):
                run.metrics_dropped += 1  # beyond the cap: counted, not even parsed
                continue
            metric = parse_line(line, run.report)
            if metric is None:
                continue
            if run.skip_metrics:
                run.skip_metrics -= 1
                continue
            new.append(metric)
        if dropped == 0 < run.metrics_dropped:
            log.warning("task %d: attempt %d reached %d metrics; further OAAS_METRIC lines are counted and dropped",
                        run.task_id, run.attempt_id, cap)
        if not (new or self._persist_due(run, offset, final)):
            return
        now, stored, dropped = time.time(), run.metrics_stored + len(new), run.metrics_dropped
        await self.d.store.record_output(run.attempt_id, offset, stored, dropped, [(run.task_id, now, m) for m in new])
        run.stdout_offset, run.metrics_stored, run.dropped_stored = offset, stored, dropped
        run.persisted_at = time.monotonic()
        if new:
            run.report.metrics.extend(new)
            for m in new:
                self.d.events.publish({"type": "metric", "task_id": run.task_id, "data": m})
            await self.d.on_metrics(run, new)

    @staticmethod
    def _persist_due(run: Run, offset: int, final: bool) -> bool:
        """Whether the offset and drop count alone (no new metric) are worth a commit now."""
        recount = run.metrics_dropped != run.dropped_stored
        if final:
            return recount  # the attempt ends next: its offset is of no more use
        moved = offset - run.stdout_offset
        due = time.monotonic() - run.persisted_at >= PERSIST_EVERY_S
        return moved >= PERSIST_EVERY_BYTES or ((moved > 0 or recount) and due)

    # ---- finish -----------------------------------------------------
    def classify(self, run: Run, exit_: Exit, node_failures: int) -> tuple[State, State, str, str | None]:
        """Return (attempt state, task state, reason, message) for an ended attempt."""
        if run.cancel_reason is not None:
            return State.CANCELLED, State.CANCELLED, run.cancel_reason, None
        if run.requeue_reason is not None:
            return State.NODE_FAIL, State.PENDING, Reason.REQUEUED, run.requeue_reason
        if run.timed_out:
            return State.TIMEOUT, State.TIMEOUT, Reason.TIME_LIMIT, f"time limit {run.spec.time_limit_s}s"
        if exit_.fault is not None and run.lost_reason is None:  # the task's own fault: no retry
            return State.FAILED, State.FAILED, exit_.fault, exit_.reason
        if exit_.lost or run.lost_reason is not None:
            retry = node_failures < run.spec.max_retries
            task_state = State.PENDING if retry else State.NODE_FAIL
            reason = Reason.REQUEUED if retry else Reason.NODE_FAIL
            return State.NODE_FAIL, task_state, reason, run.lost_reason or exit_.reason
        if exit_.exit_code == 0:
            if run.report.result is not None or not run.spec.require_result:
                return State.COMPLETED, State.COMPLETED, Reason.EXITED, None
            problems = "; ".join(run.report.problems[-3:])
            return State.FAILED, State.FAILED, Reason.NO_RESULT, problems or "exit 0 without OAAS_RESULT"
        what = f"signal {exit_.signal}" if exit_.signal else f"exit code {exit_.exit_code}"
        return State.FAILED, State.FAILED, Reason.NON_ZERO_EXIT, what

    async def _finish(self, run: Run, exit_: Exit, launch_failed: bool = False) -> None:
        row = await self.d.store.get_task(run.task_id)
        if run.cancel_reason is None:
            run.cancel_reason = row["cancel_reason"]  # a cancel persisted before a restart
        attempt_state, task_state, reason, message = self.classify(run, exit_, row["node_failures"])
        if launch_failed and task_state == State.NODE_FAIL:
            reason = Reason.LAUNCH_FAILED
        result = run.report.result
        if run.report.problems and attempt_state != State.COMPLETED and message is None:
            message = "; ".join(run.report.problems[-3:])
        await self.d.store.finish_attempt(run.attempt_id, run.task_id, attempt_state, task_state, reason,
                                          message, exit_code=exit_.exit_code, signal=exit_.signal,
                                          result=result)  # retried while the state disk is full
        self.d.metrics.attempt_ended(attempt_state, reason)
        self.runs.pop(run.task_id, None)
        run.done.set()
        self.d.cluster.release(run.task_id)
        self.d.publish_state(run.task_id, State.RUNNING, task_state, reason, message, result=result, node=run.node)
        if task_state == State.PENDING:
            await self.d.requeue(run.task_id)
        else:
            try:
                await self.d.on_task_final(run.task_id, task_state, result, run.spec.callback_url)
            except StorageFullError:  # the end is recorded; a tuning steps again on its next trial's end
                log.error("task %d: hooks of its end not stored, state disk full", run.task_id)
        self.d.wake_scheduler()

    # ---- cancel and stop --------------------------------------------
    async def cancel(self, task_id: int, reason: str = Reason.CANCELLED_BY_USER, requeue: bool = False,
                     grace_s: float | None = None) -> bool:
        """Kill a running task's attempt: it ends CANCELLED, or back in the queue
        when ``requeue`` (its node is being taken away). False if not running here.

        A cancel is persisted before the kill (``Store.request_cancel``): the end is
        recorded CANCELLED even when the daemon dies in the grace period. ``grace_s``
        (default ``server.kill_grace_s``) is what is left of it after a restart.
        """
        run = self.runs.get(task_id)
        if run is None:
            return False
        killing = run.cancel_reason is not None or run.requeue_reason is not None
        if requeue:
            if not killing:
                run.requeue_reason = reason
        elif run.cancel_reason is None:  # a cancel wins over a requeue under way: it must not run again
            run.cancel_reason = reason  # before the await: an end recorded meanwhile is a cancel
            try:
                if not await self.d.store.request_cancel(task_id, reason):
                    return False  # it ended meanwhile
            except Exception:
                run.cancel_reason = None  # not persisted: not acted on either (507 to the caller)
                raise
        if not killing:
            grace = self.d.settings.server.kill_grace_s if grace_s is None else grace_s
            self.bg.spawn(self._kill_once_started(run, grace), f"kill-{run.attempt_id}")
        return True

    async def _kill_once_started(self, run: Run, grace_s: float) -> None:
        """Kill an attempt, waiting first for its launch when the process is not started yet."""
        while run.handle is None and not run.done.is_set():
            await asyncio.sleep(TAIL_INTERVAL_S[0])  # only between the attempt's commit and its start
        if run.handle is not None and not run.done.is_set():
            await run.handle.kill(grace_s)

    async def node_lost(self, node: str, reason: str) -> list[int]:
        """A node went DOWN: end its attempts as node failures (requeued while retries last)."""
        lost = self.on_node(node)
        for task_id in lost:
            run = self.runs[task_id]
            if run.lost_reason is None and run.cancel_reason is None and run.requeue_reason is None:
                run.lost_reason = f"node {node} DOWN: {reason}"
                self.bg.spawn(self._kill_quietly(run), f"kill-{run.attempt_id}")
        return lost

    async def _kill_quietly(self, run: Run) -> None:
        try:
            await run.handle.kill(self.d.settings.server.kill_grace_s)
        except Exception as exc:  # the node is unreachable: its handle reports the loss
            log.warning("task %d: kill on lost node %s failed: %s", run.task_id, run.node, exc)

    def on_node(self, node: str) -> list[int]:
        """Ids of the tasks with a running attempt on ``node`` (any of its hosts)."""
        return [t for t, run in self.runs.items() if any(h.node == node for h in run.job.hosts)]

    def by_node(self) -> dict[str, list[int]]:
        """Ids of the tasks running on each node, in one sweep over the runs."""
        out: dict[str, list[int]] = {}
        for task_id, run in sorted(self.runs.items()):
            for node in {h.node for h in run.job.hosts}:
                out.setdefault(node, []).append(task_id)
        return out

    async def stop(self) -> None:
        """Daemon shutdown: stop watching, leave every process running."""
        await self.bg.cancel_all()


def _read_locator(adir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((adir / "locator.json").read_text())
    except (FileNotFoundError, ValueError):
        return None

