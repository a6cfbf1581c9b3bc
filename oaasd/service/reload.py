"""SIGHUP: re-read ``oaasd.toml`` and apply nodes, policy, fit and users.

Nothing running is stopped. A node removed from the file is dropped when
idle, else drained: its attempts finish and it stays DRAINED until the next
reload or restart drops it (or an admin deletes it).
A changed node is applied only while nothing runs on it. Nodes added or
deleted over the API keep the run-time decision, as they do at start.
``[server]``, ``[ssh]``, ``[mpi]``, ``[slurm]``, ``[health]``, ``[outbound]`` and ``[binding]`` need a restart.

A file that would weaken access is refused like an invalid one, because an
empty or half-written ``oaasd.toml`` parses as "no users": turning auth on or
off (a change of mode needs a restart), dropping every admin, or leaving the
running non-loopback listener without users.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from oaasd.config import NodeConfig, Settings, load_settings
from oaasd.core.policies import policy_named
from oaasd.errors import ConfigError
from oaasd.ports import TaskStore
from oaasd.service.auth import Users
from oaasd.service.cluster import Cluster, Intent
from oaasd.service.scheduler import Scheduler

log = logging.getLogger("oaasd.reload")
REMOVED = "removed from oaasd.toml"
RESTART_ONLY = ("server", "ssh", "mpi", "slurm", "health", "outbound", "binding")


def access_problem(old: Settings, new: Settings) -> str | None:
    """Why ``new`` may not replace the running ``old`` by reload, or None."""
    if old.auth_on != new.auth_on:
        now, then = ("on", "off") if old.auth_on else ("off", "on")
        return f"it would turn auth {then} (auth is {now}; changing the auth mode needs a restart)"
    if any(u.role == "admin" for u in old.users) and not any(u.role == "admin" for u in new.users):
        return "it declares no admin user (the running settings have one)"
    if not old.server.loopback and not new.users:
        return f"the daemon listens on {old.server.listen}, beyond loopback, and the file declares no users"
    return None


class Reload:
    """What a reload changes: the running settings, users, cluster and scheduler."""

    def __init__(self, settings: Settings, store: TaskStore, cluster: Cluster, scheduler: Scheduler, users: Users,
                 busy: Callable[[str], bool], node_added: Callable[[NodeConfig], None]):
        self.settings = settings  # updated in place: every part reading it sees the reloaded sections
        self.store = store
        self.cluster = cluster
        self.scheduler = scheduler
        self.users = users
        self.busy = busy  # an attempt runs on the node (the runner knows)
        self.node_added = node_added  # lets the SSH pool reach a node

    async def file(self, path: str | Path | None) -> bool:
        """Load ``path`` and apply it; an invalid file is refused and the old settings stay."""
        try:
            settings = load_settings(path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running settings: %s", exc.message)
            return False
        problem = access_problem(self.settings, settings)
        if problem is not None:
            log.error("reload refused, keeping the running settings: %s: %s", path, problem)
            return False
        await self.apply(settings)
        return True

    async def apply(self, new: Settings) -> list[str]:
        """Apply the reloadable parts of ``new``; return one line per change (also logged)."""
        old = self.settings
        changes = [f"{key} changed: takes effect at the next restart" for key in RESTART_ONLY
                   if getattr(old, key) != getattr(new, key)]
        reloadable = ("scheduler", "users", "limits", "auth")
        if any(getattr(old, key) != getattr(new, key) for key in reloadable):
            changes.append("scheduler, users and limits reloaded")
        self.users.reload(new)
        self.cluster.configure(new)
        changes += await self._nodes(old, new)
        for key in (*reloadable, "nodes"):
            setattr(old, key, getattr(new, key))
        self.cluster.rebuild()
        self.scheduler.configure(policy_named(new.scheduler.policy, new.scheduler), new.scheduler.max_pass,
                                 new.scheduler.default_time_limit_s)  # wakes it
        for line in changes or ["nothing changed"]:
            log.info("reload: %s", line)
        return changes

    async def _nodes(self, old: Settings, new: Settings) -> list[str]:
        cluster, changes = self.cluster, []
        runtime = {r["name"] for r in await self.store.load_nodes() if r["source"] in ("api", "deleted")}
        declared = {n.name: n for n in new.nodes if n.name not in runtime}
        for name, cfg in declared.items():
            current = cluster.nodes.get(name)
            if current is None:
                cluster.add_node(cfg)
                self.node_added(cfg)
                changes.append(f"node {name} added")
            elif current != cfg and self._busy(name):
                changes.append(f"node {name} changed but has running attempts: kept as it was, reload again when idle")
            elif current != cfg:
                cluster.add_node(cfg)
                self.node_added(cfg)
                changes.append(f"node {name} changed")
            intent = cluster.intents.get(name)
            if intent is not None and intent.reason == REMOVED:
                cluster.set_intent(name, None)
                changes.append(f"node {name} back in the file: resumed")
        for name in [n.name for n in old.nodes if n.name not in declared and n.name not in runtime]:
            if name not in cluster.nodes:
                continue
            if self._busy(name):
                cluster.set_intent(name, Intent("DRAIN", REMOVED, "reload", time.time()))
                changes.append(f"node {name} removed from the file: draining (its attempts finish)")
            else:
                cluster.remove_node(name)
                changes.append(f"node {name} removed")
        # a drained node whose attempts have ended since an earlier reload goes now
        for name, intent in list(cluster.intents.items()):
            if intent.reason == REMOVED and name not in declared and not self._busy(name):
                cluster.remove_node(name)
                changes.append(f"node {name} drained and idle: removed")
        return changes

    def _busy(self, name: str) -> bool:
        """True while an attempt runs on the node or resources are reserved there."""
        return self.busy(name) or any(
            host[0] == name for _, record in self.cluster.reservations.values() for host in record["hosts"])
