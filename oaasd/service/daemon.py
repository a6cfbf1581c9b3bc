"""The daemon: wires store, cluster, scheduler and runner into one event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from oaasd.config import Settings
from oaasd.core import placement as pl
from oaasd.errors import (
    ConflictError,
    StartupError,
    StorageFullError,
    UnsatisfiableError,
)
from oaasd.launchers import build_launchers, launcher_kind, node_conn
from oaasd.models import TaskSpec
from oaasd.pipeline.loop import Pipelines
from oaasd.service.auth import Users
from oaasd.service.callbacks import Callbacks
from oaasd.service.cluster import Cluster
from oaasd.service.events import EventHub
from oaasd.service.health import HealthLoop
from oaasd.service.metrics import Metrics
from oaasd.service.runner import Runner
from oaasd.service.scheduler import Scheduler
from oaasd.service.statelock import StateLock
from oaasd.states import Reason, State, is_final
from oaasd.store.db import NewTask, Store
from oaasd.tuning.driver import Tunings

log = logging.getLogger("oaasd")
LAUNCH_HEADROOM_BYTES = 1 << 20  # below this much free space on the state disk nothing new is started
FULL_RELAUNCH_S = 2.0  # a task placed while the state disk is full is queued again after this


class Daemon:
    """One oaasd: its settings, store, cluster and loops."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state_dir = Path(settings.server.state_dir).absolute()
        self.state_lock = StateLock(self.state_dir)
        self.store = Store(self.state_dir / "oaasd.sqlite3", settings.server.synchronous)
        self.events = EventHub()
        self.metrics = Metrics()
        self.store.on_commit = self.metrics.commit_seconds.observe
        self.cluster = Cluster(settings)
        self.scheduler = Scheduler(self)
        self.runner = Runner(self)
        self.launchers, self.pool = build_launchers(settings, settings.nodes)
        self.health = HealthLoop(self)
        self.tunings = Tunings(self)
        self.pipelines = Pipelines(self)
        self.callbacks = Callbacks(self)
        self.users = Users(settings)
        self.stopped = asyncio.Event()
        self.fatal_reason: str | None = None
        self._loops: list[asyncio.Task] = []

    # ---- life cycle -------------------------------------------------
    async def start(self) -> None:
        """Lock the state dir, open the store, recover running and pending work, start the loops."""
        self.state_lock.acquire()  # before anything touches the dir: one daemon per state dir
        (self.state_dir / "attempts").mkdir(parents=True, exist_ok=True)
        await self.open_store()
        self.cluster.load_stored(await self.store.load_nodes())
        for node in self.cluster.nodes.values():
            self.node_added(node)
        await self.callbacks.start()  # before recovery: a lost attempt ends its task (and callback) there
        await self.recover()
        self._loops = [asyncio.create_task(self.scheduler.run(), name="scheduler"),
                       asyncio.create_task(self.health.run(), name="health")]
        for task in self._loops:
            task.add_done_callback(self._loop_died)
        self.scheduler.wake()

    async def open_store(self) -> None:
        """Open the store; a database SQLite cannot read is a StartupError naming the file."""
        try:
            await self.store.open()
        except sqlite3.Error as exc:
            raise StartupError(f"database {self.store.path} cannot be opened: {exc}") from None

    async def stop(self) -> None:
        """Stop the loops, leaving running processes to be re-adopted (also after a failed start)."""
        for task in self._loops:
            task.remove_done_callback(self._loop_died)
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self.tunings.stop()
        await self.pipelines.stop()  # before the runner: a replica reconcile in flight finishes
        await self.runner.stop()
        await self.callbacks.stop()
        for launcher in self.launchers.values():
            await launcher.close()
        await self.store.close()
        self.state_lock.release()

    def _loop_died(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            self.fatal(f"{task.get_name()} loop stopped: {task.exception()!r}")

    def fatal(self, reason: str) -> None:
        """A loop cannot go on: log why and stop the daemon (systemd restarts it)."""
        log.critical("stopping: %s", reason)
        self.fatal_reason = reason
        self.stopped.set()

    async def recover(self) -> None:
        """Re-adopt attempts still running, requeue lost ones, reload the queue; finish the
        cancels a crash interrupted (a re-adopted attempt is killed, a lost one ends CANCELLED)."""
        for row in await self.store.running_attempts():
            placed = self.cluster.placement_from_json(json.loads(row["placement"]))
            request = self.cluster.request_for(TaskSpec.model_validate_json(row["spec"]))
            self.cluster.reserve(row["task_id"], request, placed)
            adopted = await self.runner.adopt(row, self.cluster.hosts_of(placed))
            if adopted and row["cancel_reason"] is not None:  # its grace ran on while the daemon was down
                left = max(0.0, self.settings.server.kill_grace_s - (time.time() - row["cancel_requested_at"]))
                log.info("task %d: finishing the cancel requested before the restart (%.1f s of grace left)",
                         row["task_id"], left)
                await self.runner.cancel(row["task_id"], row["cancel_reason"], grace_s=left)
        for task_id, priority, submitted_at, spec, cancel_reason in await self.store.pending_queue():
            if cancel_reason is not None:
                await self._cancel_pending(task_id, cancel_reason, json.loads(spec).get("callback_url"))
                continue
            request = self.cluster.request_for(TaskSpec.model_validate_json(spec))
            self.scheduler.add(task_id, priority, submitted_at, request)
        await self.tunings.resume()  # after the queue: a tuning tops up its trials
        await self.pipelines.resume()

    # ---- intake -----------------------------------------------------
    async def submit(self, spec: TaskSpec) -> tuple[int, bool, dict[str, Any]]:
        """Validate placement, commit, queue; return (id, created, summary)."""
        request = self.cluster.request_for(spec)
        refusal = self.cluster.never_fits(request)
        if refusal is not None:
            raise UnsatisfiableError("no node could ever hold this task", self.cluster.refusal_detail(refusal))
        task = NewTask.from_spec(spec)
        task_id, created = await self.store.submit(task)
        if created:
            self.queued(task_id, task, request)
            return task_id, True, self.new_task_summary(task_id, spec, task.submitted_at)
        return task_id, False, await self.task_summary(task_id)

    def queued(self, task_id: int, task: NewTask, request: pl.Request) -> None:
        """A task just committed PENDING (a submission or a tuning's trial) joins the queue."""
        self.scheduler.add(task_id, task.priority, task.submitted_at, request)
        self.events.publish({"type": "state", "task_id": task_id, "user": task.user, "old": None,
                             "new": State.PENDING.value, "reason": Reason.SUBMITTED.value})

    async def cancel(self, task_id: int, reason: str = Reason.CANCELLED_BY_USER) -> bool:
        """Cancel a pending task at once, or kill a running one; False when it had already ended.

        A running task's cancel is persisted before its kill (``Runner.cancel``), so a crash
        in the grace period cannot lose it: recovery finishes it.
        """
        for _ in range(3):
            row = await self.store.get_task(task_id)
            if is_final(row["state"]):
                return False
            if row["state"] == State.PENDING:
                try:
                    await self._cancel_pending(task_id, reason, json.loads(row["spec"]).get("callback_url"))
                except ConflictError:
                    continue  # it was placed meanwhile: cancel it as running
                return True
            if await self.runner.cancel(task_id, reason):
                return True
            await asyncio.sleep(0.05)  # between commit and launch: try again
        raise ConflictError(f"task {task_id} could not be cancelled now; try again",
                            [{"field": "state", "problem": "the task is being launched; try again"}])

    async def _cancel_pending(self, task_id: int, reason: str, callback_url: str | None) -> None:
        await self.store.cancel_pending(task_id, reason)
        self.scheduler.discard(task_id)
        self.publish_state(task_id, State.PENDING, State.CANCELLED, reason)
        await self.on_task_final(task_id, State.CANCELLED, None, callback_url)

    # ---- scheduling hooks -------------------------------------------
    def wake_scheduler(self) -> None:
        """Ask the scheduler for a pass."""
        self.scheduler.wake()

    def dispatch(self, task_id: int, request: pl.Request, placed: Any) -> None:
        """Launch a placed task in its own coroutine (resources already reserved)."""
        self.runner.bg.spawn(self._launch(task_id, request, placed), f"launch-{task_id}")

    async def _launch(self, task_id: int, request: pl.Request, placed: Any) -> None:
        row = await self.store.get_task(task_id)
        if row["state"] != State.PENDING:  # cancelled between pass and launch
            self.cluster.release(task_id)
            return
        spec = TaskSpec.model_validate_json(row["spec"])
        hosts = self.cluster.hosts_of(placed)
        try:
            if shutil.disk_usage(self.state_dir).free < LAUNCH_HEADROOM_BYTES:
                raise StorageFullError()  # an attempt's files and rows need room: start nothing
            await self.runner.launch(task_id, spec, hosts[0].node, self.cluster.placement_to_json(placed), hosts)
            self.metrics.started(row["submitted_at"])
        except ConflictError:
            self.cluster.release(task_id)
            self.wake_scheduler()
        except StorageFullError:  # raised before the attempt's commit: the task is still PENDING
            self.cluster.release(task_id)
            await asyncio.sleep(FULL_RELAUNCH_S)
            if (await self.store.get_task(task_id))["state"] == State.PENDING:  # unless cancelled meanwhile
                await self.requeue(task_id)

    async def requeue(self, task_id: int) -> None:
        """Put a task whose node failed back into the queue."""
        row = await self.store.get_task(task_id)
        spec = TaskSpec.model_validate_json(row["spec"])
        self.scheduler.add(task_id, row["priority"], row["submitted_at"], self.cluster.request_for(spec))

    def launcher_kind(self, hosts: list, workers: int) -> str:
        """The kind of launcher that starts an attempt on these hosts."""
        kinds = [self.cluster.nodes[h.node].launcher if h.node in self.cluster.nodes else "local" for h in hosts]
        return launcher_kind(kinds, workers)

    def node_added(self, node) -> None:
        """Let the SSH pool reach a remote node (from config, store or API)."""
        if node.launcher != "local":
            self.pool.nodes[node.name] = node_conn(node, self.settings)

    # ---- result hooks -----------------------------------------------
    def publish_state(self, task_id: int, old: State | None, new: State, reason: str,
                      message: str | None = None, result: Any = None, node: str | None = None) -> None:
        """Tell subscribers about a committed state change (and log it, one line)."""
        where = f" on {node}" if node else ""
        log.info("task %d: %s -> %s (%s)%s%s", task_id, old and old.value, new.value, reason, where,
                 f": {message}" if message else "", extra={"task": task_id, "node": node})
        event = {"type": "state", "task_id": task_id, "old": old and old.value, "new": new.value,
                 "reason": str(reason), "message": message}
        if result is not None:
            event["result"] = result
        self.events.publish(event)

    async def on_metrics(self, run, metrics: list[dict[str, Any]]) -> None:
        """New OAAS_METRIC lines of a running attempt (tuning hooks in here)."""
        await self.tunings.on_metrics(run, metrics)

    async def on_task_final(self, task_id: int, state: State, result: Any, callback_url: str | None) -> None:
        """A task reached a final state (tuning and callback hooks in here)."""
        await self.tunings.on_task_final(task_id, state, result)
        await self.callbacks.task_final(task_id, callback_url)

    # ---- views ------------------------------------------------------
    def status_line(self) -> str:
        """One line for systemd's STATUS: queue, running, nodes."""
        states = list(self.cluster.states().values())
        up = sum(s != "DOWN" for s in states)
        return (f"{self.scheduler.queue_length} pending, {len(self.runner.runs)} running, "
                f"{up}/{len(states)} nodes up")

    def summarize(self, row: dict[str, Any]) -> dict[str, Any]:
        """The list view of a task row."""
        out = {k: row[k] for k in ("id", "name", "user", "state", "reason", "message", "priority",
                                    "submitted_at", "started_at", "ended_at", "node_failures")}
        out["attempt_count"] = row["attempts"]
        out["result"] = None if row["result"] is None else json.loads(row["result"])
        if row["state"] == State.PENDING:
            waiting = self.scheduler.pending_reason(row["id"])
            if waiting is not None:
                out["reason"], out["nodes_rejected"] = waiting
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
        view["attempts"] = [_attempt_view(a) for a in await self.store.task_attempts(task_id)]
        view["metrics"] = [{"at": m["at"], "attempt": m["attempt_id"], **m["data"]}
                           for m in await self.store.task_metrics(task_id)]
        view["callback"] = await self.callbacks.view(task_id)
        return view

    async def wait_first_attempt(self, task_id: int, timeout_s: float = 3600) -> int:
        """For log follow: wait until the task has an attempt (or is final)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            row = await self.store.get_task(task_id)
            if row["attempts"] or is_final(row["state"]):
                return row["attempts"]
            await asyncio.sleep(0.2)
        return 0

    async def attempt_over(self, task_id: int, seq: int) -> bool:
        """True once attempt ``seq`` of a task is no longer running."""
        run = self.runner.runs.get(task_id)
        return run is None or run.seq != seq


def _attempt_view(a: dict[str, Any]) -> dict[str, Any]:
    hosts = json.loads(a["placement"]).get("hosts", [])
    notes = []
    if a["metrics_dropped"]:
        notes.append(f"{a['metrics_dropped']} OAAS_METRIC lines dropped: {a['metrics_stored']} stored reached "
                     "reporting.max_metrics_per_attempt")
    return {"attempt": a["seq"], "node": a["node"], "hosts": hosts, "state": a["state"],
            "started_at": a["started_at"], "ended_at": a["ended_at"], "exit_code": a["exit_code"],
            "signal": a["signal"], "reason": a["reason"], "message": a["message"],
            "stdout_read_bytes": a["stdout_offset"], "metrics_stored": a["metrics_stored"],
            "metrics_dropped": a["metrics_dropped"], "notes": notes}


async def _daemon_ctx(app: web.Application):
    from oaasd.http.tasks import DAEMON
    daemon = app[DAEMON]
    try:
        await daemon.start()
    except BaseException:
        try:  # what did start is stopped: no store thread keeps the process alive
            await daemon.stop()
        except Exception:
            log.debug("stop after a failed start", exc_info=True)
        raise
    yield
    await daemon.stop()


def create_app(settings: Settings, daemon: Daemon | None = None) -> web.Application:
    """The aiohttp application of one daemon."""
    from oaasd.http import events as events_api
    from oaasd.http import nodes as nodes_api
    from oaasd.http import openapi
    from oaasd.http import pipelines as pipelines_api
    from oaasd.http import tunings as tunings_api
    from oaasd.http.tasks import DAEMON, error_middleware, routes
    from oaasd.service import metrics
    from oaasd.service.auth import auth_middleware
    app = web.Application(middlewares=[error_middleware, auth_middleware(lambda a: a[DAEMON].users)],
                          client_max_size=settings.server.max_body_bytes)
    app[DAEMON] = daemon or Daemon(settings)
    app.add_routes(routes)
    app.add_routes(nodes_api.routes)
    app.add_routes(pipelines_api.routes)
    app.add_routes(tunings_api.routes)
    app.add_routes(metrics.routes)
    events_api.setup(app)
    app.add_routes(openapi.routes)
    app.cleanup_ctx.append(_daemon_ctx)
    return app
