"""The health loop: probes every remote node over its pooled connection.

A failed probe (or a dropped connection) marks the node DOWN with the reason
and ends its attempts as node failures; a node comes back when a probe
passes again, unless an admin set it DOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oaasd.service.daemon import Daemon

log = logging.getLogger("oaasd.health")


class HealthLoop:
    """Probes remote nodes on ``[health] interval_s``."""

    def __init__(self, daemon: "Daemon"):
        self.d = daemon
        self.probes: dict[str, dict[str, Any]] = {}

    async def run(self) -> None:
        """Probe forever; one pass per interval."""
        while True:
            await self.run_once()
            await asyncio.sleep(self.d.settings.health.interval_s)

    async def run_once(self) -> None:
        """Probe every remote node at once and apply the answers."""
        names = [n.name for n in self.d.cluster.nodes.values() if n.launcher != "local"]
        answers = await asyncio.gather(*(self._probe(n) for n in names))
        for name, (ok, detail) in zip(names, answers):
            if name in self.d.cluster.nodes:
                await (self.mark_up(name, detail) if ok else self.mark_down(name, detail))

    async def _probe(self, name: str) -> tuple[bool, Any]:
        try:
            probe = await asyncio.wait_for(self.d.launchers["ssh"].probe(name), self.d.settings.health.timeout_s)
            return True, probe
        except asyncio.TimeoutError:
            return False, f"ProbeTimeout: no answer in {self.d.settings.health.timeout_s}s"
        except Exception as exc:  # NodeError carries a reason code; anything else is a failed probe too
            code = getattr(exc, "reason", type(exc).__name__)
            return False, f"{code}: {getattr(exc, 'message', exc)}"

    async def mark_down(self, name: str, reason: str) -> None:
        """The node failed a probe: unschedulable, its attempts lost."""
        self.probes[name] = {"ok": False, "at": time.time(), "reason": reason}
        cluster = self.d.cluster
        if cluster.health.get(name) != reason:
            if name not in cluster.health:
                log.warning("node %s DOWN: %s", name, reason)
            cluster.health[name] = reason
            cluster.set_schedulable()
        await self.d.runner.node_lost(name, reason)

    async def mark_up(self, name: str, probe: dict[str, Any]) -> None:
        """The node answered: schedulable again (unless an admin said otherwise)."""
        self.probes[name] = {"ok": True, "at": time.time(), **probe}
        cluster = self.d.cluster
        if cluster.health.pop(name, None) is not None:
            log.info("node %s is back", name)
            cluster.set_schedulable()
            self.d.wake_scheduler()
