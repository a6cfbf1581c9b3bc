"""Launching: one coroutine per running attempt.

The scheduler hands the runner what it placed (``dispatch``); the launch
reads the task row once (it may have been cancelled meanwhile), parses its
spec once, commits the attempt and starts its process through its node's
Launcher. Each attempt's coroutine then tails the head-node log files for
protocol lines (handed to the ``Reporter``), enforces the time limit, kills
on cancel, and when the process ends hands its Exit to the reporter, which
commits the outcome before resources are freed and the scheduler woken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from oaasd.config import Settings
from oaasd.errors import ConflictError, StorageFullError
from oaasd.launchers import launcher_kind
from oaasd.launchers.protocol import LineTail, read_result_file
from oaasd.models import TaskSpec
from oaasd.ports import (
    EventSink,
    Exit,
    Hooks,
    Host,
    Launcher,
    Locator,
    Placed,
    Queue,
    TaskStore,
)
from oaasd.service.attempts import Run, build_job, read_locator
from oaasd.service.background import Background
from oaasd.service.cluster import Cluster
from oaasd.service.events import publish_state
from oaasd.service.metrics import Metrics
from oaasd.service.reporter import Reporter
from oaasd.states import Reason, State

log = logging.getLogger("oaasd.runner")

TAIL_INTERVAL_S = (0.05, 0.5)  # tail poll starts fast and backs off while quiet
WAKE_BUDGET = 64 << 20  # log bytes scanned per wake-up before the time limit is checked again
LAUNCH_HEADROOM_BYTES = 1 << 20  # below this much free space on the state disk nothing new is started
FULL_RELAUNCH_S = 2.0  # a task placed while the state disk is full is queued again after this


class Runner:
    """Owns every running attempt of the daemon."""

    def __init__(self, store: TaskStore, cluster: Cluster, launchers: dict[str, Launcher], settings: Settings,
                 events: EventSink, metrics: Metrics, hooks: Hooks, queue: Queue, fatal: Callable[[str], None]):
        self.store = store
        self.cluster = cluster
        self.launchers = launchers
        self.settings = settings
        self.events = events
        self.metrics = metrics
        self.queue = queue
        self.state_dir = Path(settings.server.state_dir).absolute()
        self.runs: dict[int, Run] = {}
        self.bg = Background(fatal)
        self.reporter = Reporter(store, cluster, events, metrics, hooks, queue, settings.reporting, self._forget)

    def attempt_dir(self, task_id: int, seq: int) -> Path:
        """Return the head-node directory of one attempt."""
        return self.state_dir / "attempts" / str(task_id) / str(seq)

    def _forget(self, run: Run) -> None:
        self.runs.pop(run.task_id, None)

    def launcher_kind(self, hosts: list[Host], workers: int) -> str:
        """The kind of launcher that starts an attempt on these hosts."""
        nodes = self.cluster.nodes
        return launcher_kind([nodes[h.node].launcher if h.node in nodes else "local" for h in hosts], workers)

    def _taken_away(self, hosts: list[Host]) -> str | None:
        """Why an attempt about to start may not: one of its nodes was deleted or set DOWN since it was placed.

        Node verbs see a run only once it is in ``runs``; this check, in the same
        step as that insertion, covers what they did before."""
        for h in hosts:
            if h.node not in self.cluster.nodes:
                return f"node {h.node} deleted"
            intent = self.cluster.intents.get(h.node)
            if intent is not None and intent.state == "DOWN":
                return f"node {h.node} set DOWN: {intent.reason}"
        return None

    def gpu_nodes(self) -> frozenset[str]:
        """The nodes that declare GPUs (a task bound to none of them sees none)."""
        return frozenset(name for name, node in self.cluster.nodes.items() if node.gpus)

    # ---- dispatch ---------------------------------------------------
    def dispatch(self, placed: Placed) -> None:
        """Launch a placed task in its own coroutine (its resources are already reserved)."""
        self.bg.spawn(self._launch_placed(placed), f"launch-{placed.task_id}")

    async def _launch_placed(self, placed: Placed) -> None:
        task_id = placed.task_id
        row = await self.store.get_task(task_id)
        if row["state"] != State.PENDING:  # cancelled between pass and launch
            self.cluster.release(task_id)
            return
        spec = TaskSpec.model_validate_json(row["spec"])  # the one parse of this attempt's spec
        hosts = self.cluster.hosts_of(placed.placement)
        try:
            if shutil.disk_usage(self.state_dir).free < LAUNCH_HEADROOM_BYTES:
                raise StorageFullError()  # an attempt's files and rows need room: start nothing
            await self.launch(task_id, spec, hosts[0].node, self.cluster.placement_to_json(placed.placement), hosts)
            self.metrics.started(row["submitted_at"])
        except ConflictError:
            self.cluster.release(task_id)
            self.queue.wake()
        except StorageFullError:  # raised before the attempt's commit: the task is still PENDING
            self.cluster.release(task_id)
            await asyncio.sleep(FULL_RELAUNCH_S)
            if (await self.store.get_task(task_id))["state"] == State.PENDING:  # unless cancelled meanwhile
                self.queue.add(task_id, row["priority"], row["submitted_at"], placed.request)

    # ---- start ------------------------------------------------------
    async def launch(self, task_id: int, spec: TaskSpec, node: str, placement: dict[str, Any],
                     hosts: list[Host]) -> None:
        """Commit the attempt (PENDING -> RUNNING), then start its process."""
        attempt_id, seq = await self.store.start_attempt(task_id, node, placement)
        publish_state(self.events, task_id, State.PENDING, State.RUNNING, Reason.PLACED, node=node)
        adir = self.attempt_dir(task_id, seq)
        adir.mkdir(parents=True, exist_ok=True)
        job = build_job(spec, task_id, attempt_id, seq, adir, hosts, self.gpu_nodes())
        run = Run(task_id, attempt_id, seq, node, placement, spec, job)
        if spec.time_limit_s is not None:
            run.started_at = await self._stored_start(task_id, attempt_id)
        self.runs[task_id] = run
        gone = self._taken_away(hosts)
        if gone is not None:  # set DOWN or deleted while this launch awaited the store: requeue, never start
            run.requeue_reason = gone
            await self.reporter.finish(run, Exit(exit_code=None, lost=True, reason=gone))
            return
        kind = self.launcher_kind(hosts, spec.workers)
        try:
            run.handle = await self.launchers[kind].start(job)
        except Exception as exc:  # a launch that cannot start ends the attempt, never the loop
            log.warning("task %d: launch on %s failed: %s", task_id, node, exc)
            await self.reporter.finish(run, Exit(exit_code=None, lost=True, reason=f"launch failed: {exc}"),
                                       launch_failed=True)
            return
        loc = run.handle.locator
        record = {"pid": loc.pid, "start_time": loc.start_time, "launcher": kind, **loc.extra}
        (adir / "locator.json").write_text(json.dumps(record))
        await self.store.set_locator(attempt_id, record)
        self.bg.spawn(self._watch(run), f"attempt-{attempt_id}")

    async def adopt(self, row: dict[str, Any], spec: TaskSpec, hosts: list[Host], gone: str | None = None) -> bool:
        """Reattach to an attempt found RUNNING at start (``spec`` parsed from its row); False when it is gone.

        ``gone``: its node is no longer configured; the attempt is stopped (when its
        process can still be reached) and its task requeued with that reason."""
        adir = self.attempt_dir(row["task_id"], row["seq"])
        job = build_job(spec, row["task_id"], row["id"], row["seq"], adir, hosts, self.gpu_nodes())
        run = Run(row["task_id"], row["id"], row["seq"], row["node"], json.loads(row["placement"]), spec, job)
        self.runs[run.task_id] = run
        loc = json.loads(row["locator"]) if row["locator"] else read_locator(adir)
        handle = None
        if loc is not None:
            kind = loc.pop("launcher", None) or self.launcher_kind(hosts, spec.workers)
            locator = Locator(pid=loc.pop("pid"), start_time=loc.pop("start_time"), extra=loc)
            try:
                handle = await self.launchers[kind].adopt(job, locator)
            except Exception as exc:
                log.warning("task %d: adopt on %s failed: %s", run.task_id, run.node, exc)
        if handle is None:
            await self.reporter.finish(run, Exit(exit_code=None, lost=True,
                                                 reason=gone or "process not found after daemon restart"))
            return False
        run.handle = handle
        await self._resume_output(run, row)
        self.bg.spawn(self._watch(run), f"attempt-{run.attempt_id}")
        if gone is not None:  # requeued, as the attempts of a node set DOWN or deleted are
            await self.cancel(run.task_id, gone, requeue=True)
            return True
        log.info("task %d: re-adopted attempt %d (pid %d) on %s", run.task_id, run.attempt_id,
                 handle.locator.pid, run.node)
        return True

    async def _stored_start(self, task_id: int, attempt_id: int) -> float:
        """The committed wall-clock start of an attempt (the same value adopt reads after a restart)."""
        rows = await self.store.task_attempts(task_id)
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
            rows = await self.store.task_metrics(run.task_id, limit=run.metrics_stored)
            run.report.metrics = [m["data"] for m in rows if m["attempt_id"] == run.attempt_id]

    # ---- watch ------------------------------------------------------
    async def _watch(self, run: Run) -> None:
        cfg = self.settings.reporting
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
                    self.bg.spawn(run.handle.kill(self.settings.server.kill_grace_s), f"kill-{run.attempt_id}")
            exit_ = waiter.result()
            await self._drain(run, tail, None, final=True)
        except asyncio.CancelledError:
            waiter.cancel()  # daemon shutdown: leave the process to be re-adopted
            raise
        finally:
            tail.close()
        read_result_file(run.job.result_path, run.report)
        await self.reporter.finish(run, exit_)

    async def _drain(self, run: Run, tail: LineTail, budget: int | None, final: bool = False) -> int:
        """Read the log slice by slice (the loop serves others between slices); return the bytes read."""
        first = tail.position
        while True:
            await self.reporter.consume(run, tail.read(final), tail.offset, final)
            if not tail.more or (budget is not None and tail.position - first >= budget):
                return tail.position - first
            await asyncio.sleep(0)

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
                if not await self.store.request_cancel(task_id, reason):
                    return False  # it ended meanwhile
            except Exception:
                run.cancel_reason = None  # not persisted: not acted on either (507 to the caller)
                raise
        if not killing:
            grace = self.settings.server.kill_grace_s if grace_s is None else grace_s
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
            await run.handle.kill(self.settings.server.kill_grace_s)
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

    def local_enforcement(self) -> dict[str, Any]:
        """What this host enforces for local attempts, and why."""
        view = getattr(self.launchers.get("local"), "enforcement", None)
        return view() if view is not None else {"enforcement": "none", "enforcement_reason": "no local launcher"}

    async def sweep_cgroups(self) -> None:
        """Remove the local cgroups of attempts this daemon does not run (after recovery re-adopted)."""
        sweep = getattr(self.launchers.get("local"), "sweep", None)
        if sweep is not None:
            await sweep({run.attempt_id for run in self.runs.values()})

    async def stop(self) -> None:
        """Daemon shutdown: stop watching, leave every process running."""
        await self.bg.cancel_all()

