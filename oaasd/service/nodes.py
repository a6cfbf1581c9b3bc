"""Node administration: add, drain/resume/down, delete, and what runs where.

Each verb persists first (the ``nodes`` table), then changes the cluster,
moves the work that must leave (a node set DOWN or deleted has its attempts
requeued elsewhere), and wakes the scheduler. The verbs run one at a time
(they await the store in between): a PATCH racing a DELETE of the same node
finds it gone (404) instead of writing an intent for a node no longer there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from oaasd.config import NodeConfig
from oaasd.errors import ConflictError, NotFoundError
from oaasd.ports import TaskStore
from oaasd.service.cluster import Cluster, Intent
from oaasd.service.health import HealthLoop
from oaasd.service.runner import Runner


class NodeAdmin:
    """The node verbs of the API, over the store, cluster, runner and health loop."""

    def __init__(self, store: TaskStore, cluster: Cluster, runner: Runner, health: HealthLoop,
                 wake: Callable[[], None], node_added: Callable[[NodeConfig], None]):
        self.store = store
        self.cluster = cluster
        self.runner = runner
        self.health = health
        self.wake = wake
        self.node_added = node_added  # lets the SSH pool reach a node
        self._verbs = asyncio.Lock()  # add, set_intent and delete, one at a time

    # ---- reads --------------------------------------------------------
    def check(self, name: str) -> str:
        """``name`` when the node exists, else 404."""
        if name not in self.cluster.nodes:
            raise NotFoundError(f"no node {name!r}", [{"field": "name", "problem": "unknown node"}])
        return name

    def views(self) -> list[dict[str, Any]]:
        """The cluster's view of every node, with what it enforces."""
        return [{**v, **self.enforcement(v["name"])} for v in self.cluster.views()]

    def view(self, name: str) -> dict[str, Any]:
        """One node's view with what it enforces and its last health probe."""
        return {**self.cluster.view(name), **self.enforcement(name), "probe": self.health.probes.get(name)}

    def enforcement(self, name: str) -> dict[str, Any]:
        """``enforcement`` (cgroup2, cgroup1, rlimit, none) and why: the local host's own, a remote
        node's from its last probe (None until probed)."""
        if self.cluster.nodes[name].launcher == "local":
            return self.runner.local_enforcement()
        probe = self.health.probes.get(name) or {}
        return {"enforcement": probe.get("enforcement"),
                "enforcement_reason": probe.get("enforcement_reason") or "not probed yet"}

    def running_on(self, name: str) -> list[int]:
        """Ids of the tasks with a running attempt on the node."""
        return self.runner.on_node(name)

    def running_by_node(self) -> dict[str, list[int]]:
        """Ids of the tasks running on each node."""
        return self.runner.by_node()

    def owner_of_run(self, task_id: int) -> str | None:
        """The user of a running task, None when it is not running here."""
        run = self.runner.runs.get(task_id)
        return None if run is None else run.spec.user

    # ---- verbs --------------------------------------------------------
    async def add(self, cfg: NodeConfig) -> None:
        """Add a node at run time (kept across restarts); 409 when the name exists."""
        async with self._verbs:
            await self._add(cfg)

    async def _add(self, cfg: NodeConfig) -> None:
        if cfg.name in self.cluster.nodes:
            raise ConflictError(f"node {cfg.name!r} exists", [{"field": "name", "problem": "already exists"}])
        await self.store.save_node(cfg.name, cfg.model_dump(mode="json"), "api")
        self.cluster.add_node(cfg)
        self.node_added(cfg)
        self.wake()

    async def set_intent(self, name: str, state: str, reason: str | None, user: str) -> None:
        """DRAIN, DOWN (its attempts requeued elsewhere, as Slurm's DOWN) or RESUME a node; 404 when gone."""
        async with self._verbs:
            await self._set_intent(self.check(name), state, reason, user)

    async def _set_intent(self, name: str, state: str, reason: str | None, user: str) -> None:
        intent = None if state == "RESUME" else Intent(state, reason, user, time.time())
        await self.store.set_node_intent(name, intent and intent.state, intent and intent.reason,
                                         intent and intent.user, intent and intent.at)
        self.cluster.set_intent(name, intent)
        if state == "DOWN":
            for task_id in self.runner.on_node(name):
                await self.runner.cancel(task_id, f"node {name} set DOWN: {reason}", requeue=True)
        self.wake()

    async def delete(self, name: str, force: bool, user: str) -> list[int]:
        """Delete a node; its attempts are requeued (409 without ``force`` when some run); the requeued ids."""
        async with self._verbs:
            return await self._delete(self.check(name), force, user)

    async def _delete(self, name: str, force: bool, user: str) -> list[int]:
        running = self.runner.on_node(name)
        if running and not force:
            raise ConflictError(f"node {name!r} has {len(running)} running attempt(s); use ?force=1 to requeue them",
                                [{"field": "name", "problem": "attempts running", "tasks": running}])
        self.cluster.set_intent(name, Intent("DOWN", "being deleted", user, time.time()))
        for task_id in running:
            await self.runner.cancel(task_id, f"node {name} deleted", requeue=True)
        for run in [self.runner.runs[t] for t in running if t in self.runner.runs]:
            await run.done.wait()
        await self.store.save_node(name, None, "deleted")
        await self.store.set_node_intent(name, None, None, None, None)
        self.cluster.remove_node(name)
        self.wake()
        return running
