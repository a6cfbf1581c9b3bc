"""The daemon: wires the parts together, starts them, stops them, recovers.

It is the only module that knows every part. Each part gets the few
collaborators it uses in its constructor; none holds the daemon. "A task
ended" and "an attempt reported metrics" reach tunings and callbacks through
the hooks they subscribe to here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from pathlib import Path

from oaasd.config import Settings
from oaasd.core.policies import policy_named
from oaasd.errors import StartupError
from oaasd.launchers import ProbeByKind, build_launchers, reach_node
from oaasd.pipeline.loop import Pipelines
from oaasd.service.auth import Users
from oaasd.service.callbacks import Callbacks
from oaasd.service.cluster import Cluster
from oaasd.service.events import EventHub
from oaasd.service.health import HealthLoop
from oaasd.service.hooks import Hooks
from oaasd.service.intake import Intake
from oaasd.service.metrics import Metrics
from oaasd.service.nodes import NodeAdmin
from oaasd.service.outbound import Client
from oaasd.service.recovery import recover
from oaasd.service.reload import Reload
from oaasd.service.runner import Runner
from oaasd.service.scheduler import Scheduler
from oaasd.service.statelock import StateLock
from oaasd.service.views import Views
from oaasd.store.db import Store
from oaasd.tuning.driver import Tunings

log = logging.getLogger("oaasd")


class Daemon:
    """One oaasd: its settings, store, cluster and loops, wired together."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state_dir = Path(settings.server.state_dir).absolute()
        self.state_lock = StateLock(self.state_dir)
        self.store = Store(self.state_dir / "oaasd.sqlite3", settings.server.synchronous)
        self.events = EventHub()
        self.metrics = Metrics()
        self.store.on_commit = self.metrics.commit_seconds.observe
        self.cluster = Cluster(settings)
        self.users = Users(settings)
        self.hooks = Hooks()
        self.stopped = asyncio.Event()
        self.fatal_reason: str | None = None
        self._loops: list[asyncio.Task] = []
        self.launchers, self.pool = build_launchers(settings, settings.nodes, lambda name: self.cluster.nodes[name])
        self.node_added = functools.partial(reach_node, self.pool, settings)
        self._wire_tasks(settings)
        self._wire_features(settings)

    def _wire_tasks(self, settings: Settings) -> None:
        """The task path: scheduler -> runner (-> reporter) and the intake in front of them."""
        cfg = settings.scheduler
        self.scheduler = Scheduler(self.cluster, policy_named(cfg.policy, cfg), self._placed, self.metrics,
                                   cfg.max_pass, cfg.default_time_limit_s, self._started)
        self.runner = Runner(self.store, self.cluster, self.launchers, settings, self.events, self.metrics,
                             self.hooks, self.scheduler, self.fatal)
        self.intake = Intake(self.store, self.cluster, self.scheduler, self.events, self.hooks, self.runner.cancel)
        ssh, slurm = self.launchers["ssh"], self.launchers["slurm"]
        prober = ProbeByKind(lambda name: self.cluster.nodes[name].launcher, {"ssh": ssh, "mpi": ssh, "slurm": slurm})
        self.health = HealthLoop(self.cluster, prober, self._node_lost, self.scheduler.wake, settings.health)
        self.nodes = NodeAdmin(self.store, self.cluster, self.runner, self.health, self.scheduler.wake,
                               self.node_added)
        self.reload = Reload(settings, self.store, self.cluster, self.scheduler, self.users,
                             lambda name: bool(self.runner.on_node(name)), self.node_added)

    def _wire_features(self, settings: Settings) -> None:
        """Tunings, pipelines and callbacks, and the hooks they subscribe to (tunings first, as before)."""
        self.tunings = Tunings(self.store, self.intake, self.users, self.events, self.fatal)
        self.pipelines = Pipelines(self.store, self.intake, self.users, settings, Client.from_settings(settings),
                                   self.fatal)
        self.callbacks = Callbacks(self.store, settings, self.metrics, Client.from_settings(settings), self.fatal)
        self.hooks.on_task_ended(self.tunings.task_ended)
        self.hooks.on_task_ended(self.callbacks.task_ended)
        self.hooks.on_metrics_reported(self.tunings.metrics_reported)
        self.views = Views(self.store, self.scheduler, self.runner, self.callbacks)

    async def _node_lost(self, name: str, reason: str) -> None:
        """A node failed its probe: its attempts are node failures, except a Slurm partition's, whose
        jobs Slurm still runs (their handles keep following them and report how they end)."""
        node = self.cluster.nodes.get(name)
        if node is None or node.launcher != "slurm":
            await self.runner.node_lost(name, reason)

    def _placed(self, placed) -> None:
        self.runner.dispatch(placed)  # late-bound: the runner is made after the scheduler

    def _started(self, task_id: int) -> tuple[float | None, float | None] | None:
        """(started_at, time_limit_s) of a running attempt (one adopted at start), for reservations."""
        run = self.runner.runs.get(task_id)
        return None if run is None else (run.started_at, run.spec.time_limit_s)

    # ---- life cycle -------------------------------------------------
    async def start(self) -> None:
        """Lock the state dir, open the store, recover running and pending work, start the loops."""
        self.state_lock.acquire()  # before anything touches the dir: one daemon per state dir
        (self.state_dir / "attempts").mkdir(parents=True, exist_ok=True)
        await self.open_store()
        self.cluster.load_stored(await self.store.load_nodes())
        for node in self.cluster.nodes.values():
            self.node_added(node)
        problems = await self.launchers["slurm"].check_partitions(list(self.cluster.nodes.values()))
        if problems:
            raise StartupError("config error: " + "; ".join(problems))
        await self.health.run_once(kinds=("slurm",))  # partitions sized (sinfo) before the first task comes in
        await self.callbacks.start()  # before recovery: a lost attempt ends its task (and callback) there
        await recover(self.store, self.cluster, self.runner, self.intake, self.scheduler,
                      self.settings.server.kill_grace_s)
        await self.tunings.resume()  # after the queue: a tuning tops up its trials
        await self.pipelines.resume()
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

    def spawn(self, coro, name: str) -> None:
        """Run a daemon-level job (a reload) in the background; a failure stops the daemon."""
        self.runner.bg.spawn(coro, name)

    def status_line(self) -> str:
        """One line for systemd's STATUS: queue, running, nodes."""
        states = list(self.cluster.states().values())
        up = sum(s != "DOWN" for s in states)
        return (f"{self.scheduler.queue_length} pending, {len(self.runner.runs)} running, "
                f"{up}/{len(states)} nodes up")
