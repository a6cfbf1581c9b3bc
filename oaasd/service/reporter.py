"""Result reporting: an attempt's protocol lines and its exit become store verbs.

``consume`` stores the ``OAAS_METRIC`` lines of a slice of stdout together
with the offset after them (each is stored once however often the daemon
restarts), publishes them and tells the ``metrics_reported`` hooks.
``finish`` classifies an ended attempt (a final state, or back to PENDING
when its node failed and retries remain), commits that in one store verb,
and only then frees the resources, publishes the change, requeues or tells
the ``task_ended`` hooks, and wakes the scheduler. Nothing here calls back
up into the runner or the daemon: the runner hands ``forget`` in.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from oaasd.config import ReportingConfig
from oaasd.errors import StorageFullError
from oaasd.launchers.protocol import METRIC, parse_line
from oaasd.ports import EventSink, Exit, Hooks, MetricsReport, Queue, TaskEnd, TaskStore
from oaasd.service.attempts import Run
from oaasd.service.cluster import Cluster
from oaasd.service.events import publish_state
from oaasd.service.metrics import Metrics
from oaasd.states import Reason, State

log = logging.getLogger("oaasd.runner")

# The read offset is stored with every batch of metrics; with log text alone, at most this often:
PERSIST_EVERY_S = 2.0
PERSIST_EVERY_BYTES = 128 << 20


def classify(run: Run, exit_: Exit, node_failures: int) -> tuple[State, State, str, str | None]:
    """Return (attempt state, task state, reason, message) for an ended attempt."""
    if run.cancel_reason is not None:
        return State.CANCELLED, State.CANCELLED, run.cancel_reason, None
    if run.requeue_reason is not None:
        return State.NODE_FAIL, State.PENDING, Reason.REQUEUED, run.requeue_reason
    if exit_.oom and run.lost_reason is None:  # the OOM killer inside its memory limit: final, never retried
        limit = run.job.hosts[0].binding.memory_mb if run.job.hosts else 0
        return State.OUT_OF_MEMORY, State.OUT_OF_MEMORY, Reason.OUT_OF_MEMORY, (
            f"killed by the OOM killer at its memory limit of {limit} MB" if limit else "killed by the OOM killer")
    if run.timed_out:
        return State.TIMEOUT, State.TIMEOUT, Reason.TIME_LIMIT, f"time limit {run.spec.time_limit_s}s"
    if exit_.state in (State.TIMEOUT, State.OUT_OF_MEMORY):  # decided by a workload manager (Slurm)
        reason = Reason.TIME_LIMIT if exit_.state == State.TIMEOUT else Reason.OUT_OF_MEMORY
        return State(exit_.state), State(exit_.state), reason, exit_.reason
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


def persist_due(run: Run, offset: int, final: bool) -> bool:
    """Whether the offset and drop count alone (no new metric) are worth a commit now."""
    recount = run.metrics_dropped != run.dropped_stored
    if final:
        return recount  # the attempt ends next: its offset is of no more use
    moved = offset - run.stdout_offset
    due = time.monotonic() - run.persisted_at >= PERSIST_EVERY_S
    return moved >= PERSIST_EVERY_BYTES or ((moved > 0 or recount) and due)


class Reporter:
    """Turns what attempts report into committed state, then tells the others."""

    def __init__(self, store: TaskStore, cluster: Cluster, events: EventSink, metrics: Metrics, hooks: Hooks,
                 queue: Queue, reporting: ReportingConfig, forget: Callable[[Run], None] = lambda run: None):
        self.store = store
        self.cluster = cluster
        self.events = events
        self.metrics = metrics
        self.hooks = hooks
        self.queue = queue
        self.reporting = reporting
        self.forget = forget  # the runner drops the run (after the commit, before the announcements)

    # ---- lines ------------------------------------------------------
    async def consume(self, run: Run, lines: list[bytes], offset: int, final: bool = False) -> None:
        """Store the new metrics of one slice together with the offset after them."""
        cap = self.reporting.max_metrics_per_attempt
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
        if not (new or persist_due(run, offset, final)):
            return
        now, stored, dropped = time.time(), run.metrics_stored + len(new), run.metrics_dropped
        await self.store.record_output(run.attempt_id, offset, stored, dropped, [(run.task_id, now, m) for m in new])
        run.stdout_offset, run.metrics_stored, run.dropped_stored = offset, stored, dropped
        run.persisted_at = time.monotonic()
        if new:
            run.report.metrics.extend(new)
            for m in new:
                self.events.publish({"type": "metric", "task_id": run.task_id, "data": m})
            await self.hooks.metrics_reported(MetricsReport(run.task_id, run.attempt_id, run.report.metrics, new,
                                                            stopping=run.cancel_reason is not None))

    # ---- the end ----------------------------------------------------
    async def finish(self, run: Run, exit_: Exit, launch_failed: bool = False) -> State:
        """Commit how an attempt ended, then free, publish, requeue or announce; return the task's state."""
        row = await self.store.get_task(run.task_id)
        if run.cancel_reason is None:
            run.cancel_reason = row["cancel_reason"]  # a cancel persisted before a restart
        attempt_state, task_state, reason, message = classify(run, exit_, row["node_failures"])
        launch_failed = launch_failed or (exit_.reason or "").startswith("launch failed")  # binding not applied
        if launch_failed and task_state == State.NODE_FAIL:
            reason = Reason.LAUNCH_FAILED
        result = run.report.result
        if run.report.problems and attempt_state != State.COMPLETED and message is None:
            message = "; ".join(run.report.problems[-3:])
        await self.store.finish_attempt(run.attempt_id, run.task_id, attempt_state, task_state, reason,
                                        message, exit_code=exit_.exit_code, signal=exit_.signal,
                                        result=result, max_rss_mb=exit_.max_rss_mb,
                                        cpu_s=exit_.cpu_s)  # retried while the state disk is full
        self.metrics.attempt_ended(attempt_state, reason)
        self.metrics.accounted(run.spec.user, exit_.max_rss_mb, exit_.cpu_s)
        self.forget(run)
        run.done.set()
        self.cluster.release(run.task_id)
        publish_state(self.events, run.task_id, State.RUNNING, task_state, reason, message, result=result,
                      node=run.node)
        if task_state == State.PENDING:  # its node failed, retries remain: the spec is the one parsed at launch
            self.queue.add(run.task_id, row["priority"], row["submitted_at"], self.cluster.request_for(run.spec))
        else:
            try:
                await self.hooks.task_ended(TaskEnd(run.task_id, task_state, result, run.spec.callback_url))
            except StorageFullError:  # the end is recorded; a tuning steps again on its next trial's end
                log.error("task %d: hooks of its end not stored, state disk full", run.task_id)
        self.queue.wake()
        return task_state
