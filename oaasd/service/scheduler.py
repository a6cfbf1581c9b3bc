"""The scheduling loop: woken by events, it asks the pure pass what to start and starts it.

The pending queue lives in memory as compact entries (the ``Job``: id,
priority, user, limits, placement request), sorted by the policy's key and
rebuilt from the store at start; specs are read from the store only for the
tasks a pass actually places. The decision itself is
``oaasd.core.schedule.decide`` (the same function the simulator runs); this
shell keeps the queue, the wake-ups, the refusal cache and what runs, and
reserves on the real arrays what the pass started before the launch is
awaited, so no second pass can hand out the same resources.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from oaasd.core import placement as pl
from oaasd.core.jobs import Job, Reservation, Running
from oaasd.core.policies import RESORT_S
from oaasd.core.schedule import decide
from oaasd.models import TaskSpec
from oaasd.ports import Placed, Policy
from oaasd.service.cluster import Cluster
from oaasd.service.metrics import Metrics
from oaasd.states import Reason

log = logging.getLogger("oaasd.scheduler")

KEEP_ENDED = 4096  # jobs remembered after they left the queue and freed their resources (a late requeue)


@dataclass(order=True, slots=True)
class Pending:
    """One queued task, ordered by its policy key."""

    key: tuple
    job: Job = field(compare=False)

    @property
    def task_id(self) -> int:
        return self.job.task_id

    @property
    def submitted_at(self) -> float:
        return self.job.submitted_at


def job_of(task_id: int, priority: int, submitted_at: float, request: pl.Request, spec: TaskSpec | None) -> Job:
    """The scheduler's view of a task: its request and what policies order it by."""
    if spec is None:
        return Job(task_id, priority, submitted_at, request)
    return Job(task_id, priority, submitted_at, request, spec.user, spec.time_limit_s,
               getattr(spec, "estimated_runtime_s", None), getattr(spec, "preemptible", False))


class Scheduler:
    """Places pending tasks whenever something could have changed."""

    def __init__(self, cluster: Cluster, policy: Policy, on_placed: Callable[[Placed], None], metrics: Metrics,
                 max_pass: int = 1000, default_time_limit_s: float | None = None,
                 started: Callable[[int], tuple[float | None, float | None] | None] = lambda task_id: None):
        self.cluster = cluster
        self.policy = policy
        self.on_placed = on_placed  # resources are reserved before it is called
        self.metrics = metrics
        self.max_pass = max_pass
        self.default_time_limit_s = default_time_limit_s
        self.started = started  # (started_at, time_limit_s) of an attempt this scheduler did not place (adopted)
        self.queue: list[Pending] = []
        self._ids: dict[int, Pending] = {}
        self.reasons: dict[int, tuple[str, dict[str, int]]] = {}
        self.reservations: list[Reservation] = []
        self.running: dict[int, Running] = {}  # what this scheduler placed (or learnt of), while it holds resources
        self._placed: dict[int, Job] = {}  # the jobs of ``running``
        self._ended: dict[int, Job] = {}  # jobs that ended lately, for a requeue that does not bring its spec
        self._wake = asyncio.Event()
        self._changed = True  # resources or nodes changed since the last pass
        self._fresh: list[Pending] = []  # queued since the last pass
        self._refused: dict[tuple, dict[str, int]] = {}  # request shapes refused since the last change
        self.last_pass_s = 0.0
        self.passes = 0
        self._sorted_at = 0.0

    @property
    def queue_length(self) -> int:
        """How many tasks wait in the queue."""
        return len(self.queue)

    def configure(self, policy: Policy, max_pass: int, default_time_limit_s: float | None = None) -> None:
        """Apply a reloaded ``[scheduler]``: a new policy re-sorts the queue."""
        self.max_pass = max_pass
        self.default_time_limit_s = default_time_limit_s
        if policy != self.policy:
            old, self.policy = self.policy, policy
            if getattr(old, "name", None) == policy.name and hasattr(policy, "ledger"):
                policy.ledger = old.ledger  # a reload keeps the usage history
            self.resort()
            self.reservations = []
        self.wake()

    def resort(self) -> None:
        """Re-key and sort the whole queue (a new policy, or a key that changes with time)."""
        for entry in self.queue:
            entry.key = self.policy.key(entry.job)
        self.queue.sort()
        self._sorted_at = time.time()

    def priority_factors(self, task_id: int) -> dict[str, float] | None:
        """A queued task's priority factors and their weighted sum under ``priority`` (else None)."""
        entry = self._ids.get(task_id)
        factors = getattr(self.policy, "factors", None)
        if entry is None or factors is None:
            return None
        return {**factors(entry.job), "score": self.policy.score(entry.job)}

    def add(self, task_id: int, priority: int, submitted_at: float, request: pl.Request,
            spec: TaskSpec | None = None) -> None:
        """Queue a task (at start, on submit, on requeue); without ``spec`` what is known of it is kept."""
        if task_id in self._ids:
            return
        known = self._placed.get(task_id) or self._ended.pop(task_id, None)
        if spec is None and known is not None:
            job = replace(known, priority=priority, submitted_at=submitted_at, request=request)
        else:
            job = job_of(task_id, priority, submitted_at, request, spec)
        entry = Pending(self.policy.key(job), job)
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
        the new ones are tried (with the task holding a reservation, which
        they must not delay); otherwise the head of the queue.
        """
        limit = self.max_pass
        fresh, self._fresh = self._fresh, []
        if self._changed:
            self._changed = False
            self._refused = {}
            return self.queue[:limit]
        held = [self._ids[r.task_id] for r in self.reservations if r.task_id in self._ids]
        return sorted({id(e): e for e in fresh + held if e.task_id in self._ids}.values())[:limit]

    def holding(self) -> list[Running]:
        """What holds resources on the cluster now, with its start and limit (pruned of what ended)."""
        held = self.cluster.reservations
        if self.policy.static and not self.policy.reserves:  # not needed: pruned once it has doubled (amortised)
            if len(self.running) > 2 * len(held) + 64:
                self._prune(held)
            return []
        self._prune(held)
        for task_id in held.keys() - self.running.keys():  # adopted at start, or placed before a reload
            request, record = held[task_id]
            try:
                placement = self.cluster.placement_from_json(record)
            except (KeyError, ValueError):  # on a node no longer in the table: holds nothing there
                continue
            started_at, limit = self.started(task_id) or (None, None)
            self.running[task_id] = Running(task_id, request, placement, started_at or time.time(), limit)
        return list(self.running.values())

    def _prune(self, held: dict[int, Any]) -> None:
        """Forget what no longer holds resources (its job kept a while, for a requeue)."""
        for task_id in [t for t in self.running if t not in held]:
            del self.running[task_id]
            job = self._placed.pop(task_id, None)
            if job is not None:
                if len(self._ended) >= KEEP_ENDED:
                    self._ended.pop(next(iter(self._ended)))
                self._ended[task_id] = job

    async def run_once(self) -> int:
        """One pass over the candidates; returns how many started."""
        t0 = time.perf_counter()
        cluster = self.cluster
        if not self.policy.static and time.time() - self._sorted_at >= RESORT_S:
            self.resort()  # the keys moved with usage and age: the head of the queue is found again
        hint = () if self._changed else self.reservations  # nothing freed since: they still hold
        entries = self.candidates()  # may reset the refusal cache
        running = self.holding()
        now = time.time()
        result = decide([e.job for e in entries], running, cluster.table, self.policy, now, fit=cluster.fit,
                        weights=cluster.weights, refused=self._refused, default_time_limit_s=self.default_time_limit_s,
                        hint=hint, presorted=True)
        self.reasons.update(result.reasons)
        self.reservations = result.reservations
        for job, placed in result.started:
            self.discard(job.task_id)
            cluster.reserve(job.task_id, job.request, placed)
            limit = job.time_limit_s if job.time_limit_s is not None else self.default_time_limit_s
            self.running[job.task_id] = Running(job.task_id, job.request, placed, now, limit, job.user)
            self._placed[job.task_id] = job
            self.on_placed(Placed(job.task_id, job.request, placed))
        self.last_pass_s = time.perf_counter() - t0
        self.metrics.pass_seconds.observe(self.last_pass_s)
        self.passes += 1
        return len(result.started)
