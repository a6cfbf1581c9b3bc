"""The health loop: probes every remote node over its pooled connection.

A failed probe (or a dropped connection) marks the node DOWN with the reason
and ends its attempts as node failures; a node comes back when a probe
passes again, unless an admin set it DOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from oaasd.config import HealthConfig
from oaasd.ports import Prober
from oaasd.service.cluster import Cluster

log = logging.getLogger("oaasd.health")


class HealthLoop:
    """Probes remote nodes on ``[health] interval_s``."""

    def __init__(self, cluster: Cluster, prober: Prober, on_node_lost: Callable[[str, str], Awaitable[Any]],
                 wake: Callable[[], None], cfg: HealthConfig):
        self.cluster = cluster
        self.prober = prober
        self.on_node_lost = on_node_lost  # ends the node's attempts as node failures
        self.wake = wake
        self.cfg = cfg
        self.probes: dict[str, dict[str, Any]] = {}

    async def run(self) -> None:
        """Probe forever; one pass per interval."""
        while True:
            await self.run_once()
            await asyncio.sleep(self.cfg.interval_s)

    async def run_once(self, kinds: tuple[str, ...] | None = None) -> None:
        """Probe every remote node (or those of ``kinds``) at once and apply the answers."""
        names = [n.name for n in self.cluster.nodes.values()
                 if n.launcher != "local" and (kinds is None or n.launcher in kinds)]
        answers = await asyncio.gather(*(self._probe(n) for n in names))
        for name, (ok, detail) in zip(names, answers):
            if name in self.cluster.nodes:
                await (self.mark_up(name, detail) if ok else self.mark_down(name, detail))

    async def _probe(self, name: str) -> tuple[bool, Any]:
        try:
            probe = await asyncio.wait_for(self.prober.probe(name), self.cfg.timeout_s)
            return True, probe
        except asyncio.TimeoutError:
            return False, f"ProbeTimeout: no answer in {self.cfg.timeout_s}s"
        except Exception as exc:  # NodeError carries a reason code; anything else is a failed probe too
            code = getattr(exc, "reason", type(exc).__name__)
            return False, f"{code}: {getattr(exc, 'message', exc)}"

    async def mark_down(self, name: str, reason: str) -> None:
        """The node failed a probe: unschedulable, its attempts lost."""
        self.probes[name] = {"ok": False, "at": time.time(), "reason": reason}
        cluster = self.cluster
        if cluster.health.get(name) != reason:
            if name not in cluster.health:
                log.warning("node %s DOWN: %s", name, reason)
            cluster.health[name] = reason
            cluster.set_schedulable()
        await self.on_node_lost(name, reason)

    async def mark_up(self, name: str, probe: dict[str, Any]) -> None:
        """The node answered: schedulable again (unless an admin said otherwise)."""
        self.probes[name] = {"ok": True, "at": time.time(), **probe}
        cluster = self.cluster
        self._resize(name, probe.get("capacity"))
        if cluster.health.pop(name, None) is not None:
            log.info("node %s is back", name)
            cluster.set_schedulable()
            self.wake()

    def _resize(self, name: str, capacity: dict[str, Any] | None) -> None:
        """Take the sizes a probe measured (a Slurm partition's from sinfo) that the config left open."""
        node = self.cluster.nodes[name]
        if not capacity or all(getattr(node, k) == v for k, v in capacity.items()):
            return
        self.cluster.nodes[name] = node.model_copy(update=capacity)
        self.cluster.rebuild()
        log.info("node %s sized from its probe: %s", name, capacity)
        self.wake()
