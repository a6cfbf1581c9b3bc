"""The scheduling loop: woken by events, orders the queue, places, launches.

The pending queue lives in memory as compact entries (id, priority, the
placement request), rebuilt from the store at start; specs are read from
the store only for the tasks a pass actually places. A pass works on a
copy of the free arrays and subtracts each placement before the next; the
real arrays are reserved before the launch is awaited, so no second pass
can hand out the same resources.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from oaasd.core import placement as pl
from oaasd.ports import Placed, Policy
from oaasd.service.cluster import Cluster, request_key
from oaasd.service.metrics import Metrics
from oaasd.states import Reason

log = logging.getLogger("oaasd.scheduler")


@dataclass(order=True, slots=True)
class Pending:
    """One queued task, ordered by its policy key."""

    key: tuple
    task_id: int = field(compare=False)
    priority: int = field(compare=False)
    submitted_at: float = field(compare=False)
    request: pl.Request = field(compare=False)


class Scheduler:
    """Places pending tasks whenever something could have changed."""

    def __init__(self, cluster: Cluster, policy: Policy, on_placed: Callable[[Placed], None], metrics: Metrics,
                 max_pass: int = 1000):
        self.cluster = cluster
        self.policy = policy
        self.on_placed = on_placed  # resources are reserved before it is called
        self.metrics = metrics
        self.max_pass = max_pass
        self.queue: list[Pending] = []
        self._ids: dict[int, Pending] = {}
        self.reasons: dict[int, tuple[str, dict[str, int]]] = {}
        self._wake = asyncio.Event()
        self._changed = True  # resources or nodes changed since the last pass
        self._fresh: list[Pending] = []  # queued since the last pass
        self._refused: dict[tuple, dict[str, int]] = {}  # request shapes refused since the last change
        self.last_pass_s = 0.0
        self.passes = 0

    @property
    def queue_length(self) -> int:
        """How many tasks wait in the queue."""
        return len(self.queue)

    def configure(self, policy: Policy, max_pass: int) -> None:
        """Apply a reloaded ``[scheduler]``: a new policy re-sorts the queue."""
        self.max_pass = max_pass
        if policy != self.policy:
            self.policy = policy
            for entry in self.queue:
                entry.key = policy.key(entry.priority, entry.task_id, entry.submitted_at)
            self.queue.sort()
        self.wake()

    def add(self, task_id: int, priority: int, submitted_at: float, request: pl.Request) -> None:
        """Queue a task (at start, on submit, on requeue)."""
        if task_id in self._ids:
            return
        entry = Pending(self.policy.key(priority, task_id, submitted_at), task_id, priority, submitted_at, request)
        bisect.insort(self.queue, entry)
        self._ids[task_id] = entry
        self._fresh.append(entry)
        self._wake.set()

    def discard(self, task_id: int) -> bool:
        """Drop a task from the queue (cancelled); False if it was not queued."""
        entry = self._ids.pop(task_id, None)
        if entry is None:
            return False
        i = bisect.bisect_left(self.queue, entry)
        if i < len(self.queue) and self.queue[i] is entry:
            del self.queue[i]
        else:
            self.queue.remove(entry)
        self.reasons.pop(task_id, None)
        return True

    def wake(self) -> None:
        """Ask for a full pass soon: resources or nodes changed (wake-ups coalesce)."""
        self._changed = True
        self._wake.set()

    def pending_reason(self, task_id: int) -> tuple[str, dict[str, int]] | None:
        """Why a queued task waits, with the count of nodes each check rejected."""
        if task_id not in self._ids:
            return None
        return self.reasons.get(task_id, (Reason.PRIORITY.value, {}))

    async def run(self) -> None:
        """The loop: wait for a wake-up, run one pass, repeat."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.run_once()

    def candidates(self) -> list[Pending]:
        """The entries a pass should try, in queue order.

        When nothing but new submissions happened since the last pass, every
        older entry already failed against these same free arrays, so only
        the new ones are tried; otherwise the head of the queue.
        """
        limit = self.max_pass
        fresh, self._fresh = self._fresh, []
        if self._changed:
            self._changed = False
            self._refused = {}
            return self.queue[:limit]
        return sorted(e for e in fresh if e.task_id in self._ids)[:limit]

    async def run_once(self) -> int:
        """One pass over the candidates; returns how many started."""
        started = time.perf_counter()
        cluster = self.cluster
        entries = self.candidates()  # may reset the refusal cache
        refused = self._refused  # same request shape, same free arrays: same answer
        todo: list[Pending] = []
        for entry in entries:
            known = refused.get(request_key(entry.request))
            if known is not None:
                self.reasons[entry.task_id] = (Reason.RESOURCES.value, known)
            else:
                todo.append(entry)
        # One pass on a working copy, each placement subtracted before the next.
        results = pl.place_queue(cluster.table, [e.request for e in todo], cluster.fit, cluster.weights)
        chosen: list[tuple[Pending, Any]] = []
        for entry, got in zip(todo, results):
            if isinstance(got, pl.Refusal):
                counts = refused.setdefault(request_key(entry.request), dict(got.counts))
                self.reasons[entry.task_id] = (Reason.RESOURCES.value, counts)
            else:
                chosen.append((entry, got))
        for entry, placed in chosen:
            self.discard(entry.task_id)
            cluster.reserve(entry.task_id, entry.request, placed)
            self.on_placed(Placed(entry.task_id, entry.request, placed))
        self.last_pass_s = time.perf_counter() - started
        self.metrics.pass_seconds.observe(self.last_pass_s)
        self.passes += 1
        return len(chosen)

