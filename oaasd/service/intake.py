"""Intake: the one submit verb for user tasks, tuning trials and pipeline replicas, and cancel.

A submission is refused at once when no node could ever hold it (422 with
the reasons), committed by the store (group commit; a trial's or replica's
link row in the same transaction), queued, and published, in that order:
persist, then act. A task without ``time_limit_s`` gets ``[scheduler]
default_time_limit_s`` first, when one is set (pipeline replicas, which
serve until stopped, do not). Admission against the owner's limits happens before, in
the caller (``Users.admission``), because a tuning or a pipeline asks for
several at once.

Cancel ends a pending task at once, or asks the runner to kill a running
one; a running task's cancel is persisted before its kill, so a crash in
the grace period cannot lose it (recovery finishes it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

from oaasd.core import placement as pl
from oaasd.errors import ConflictError, UnsatisfiableError
from oaasd.models import TaskSpec
from oaasd.ports import (
    EventSink,
    Hooks,
    Link,
    Queue,
    ReplicaLink,
    Submitted,
    TaskEnd,
    TaskStore,
    TrialLink,
)
from oaasd.service.cluster import Cluster
from oaasd.service.events import publish_state
from oaasd.states import Reason, State, is_final
from oaasd.store.db import NewTask

NEVER_FITS = "no node could ever hold this task"
StopRunning = Callable[[int, str], Awaitable[bool]]


class Intake:
    """Submits and cancels tasks for every path that creates them."""

    def __init__(self, store: TaskStore, cluster: Cluster, queue: Queue, events: EventSink, hooks: Hooks,
                 stop_running: StopRunning):
        self.store = store
        self.cluster = cluster
        self.queue = queue
        self.events = events
        self.hooks = hooks
        self._stop_running = stop_running  # the runner's cancel of a running attempt

    def request_for(self, spec: TaskSpec, message: str = NEVER_FITS) -> pl.Request:
        """The placement request of ``spec``; UnsatisfiableError (422) when no node could ever hold it."""
        request = self.cluster.request_for(spec)
        refusal = self.cluster.never_fits(request)
        if refusal is not None:
            raise UnsatisfiableError(message, self.cluster.refusal_detail(refusal, request))
        return request

    async def submit(self, spec: TaskSpec, link: Link | None = None) -> Submitted:
        """Refuse what can never fit, commit (with ``link``), queue, publish.

        A trial's task has its tuning as parent. A known idempotency key
        returns the existing task with ``created`` False.
        """
        request = self.request_for(spec)
        default_limit = getattr(self.queue, "default_time_limit_s", None)
        if spec.time_limit_s is None and default_limit is not None and not isinstance(link, ReplicaLink):
            spec = spec.model_copy(update={"time_limit_s": default_limit})  # enforced like one it gave
        task = NewTask.from_spec(spec, parent_id=link.tuning_id if isinstance(link, TrialLink) else None)
        task_id, created = await self.store.submit(task, link)
        if created:
            self.queue.add(task_id, task.priority, task.submitted_at, request, spec)
            self.events.publish({"type": "state", "task_id": task_id, "user": task.user, "old": None,
                                 "new": State.PENDING.value, "reason": Reason.SUBMITTED.value})
        return Submitted(task_id, created, task.submitted_at)

    async def cancel(self, task_id: int, reason: str = Reason.CANCELLED_BY_USER) -> bool:
        """Cancel a pending task at once, or kill a running one; False when it had already ended."""
        for _ in range(3):
            row = await self.store.get_task(task_id)
            if is_final(row["state"]):
                return False
            if row["state"] == State.PENDING:
                try:
                    await self.cancel_pending(task_id, reason, json.loads(row["spec"]).get("callback_url"))
                except ConflictError:
                    continue  # it was placed meanwhile: cancel it as running
                return True
            if await self._stop_running(task_id, reason):
                return True
            await asyncio.sleep(0.05)  # between commit and launch: try again
        raise ConflictError(f"task {task_id} could not be cancelled now; try again",
                            [{"field": "state", "problem": "the task is being launched; try again"}])

    async def stop_running(self, task_id: int, reason: str) -> bool:
        """Kill a running task's attempt (it ends CANCELLED); False when it is not running here."""
        return await self._stop_running(task_id, reason)

    async def cancel_pending(self, task_id: int, reason: str, callback_url: str | None) -> None:
        """PENDING -> CANCELLED (ConflictError when it was placed meanwhile), then tell the hooks."""
        await self.store.cancel_pending(task_id, reason)
        self.queue.discard(task_id)
        publish_state(self.events, task_id, State.PENDING, State.CANCELLED, reason)
        await self.hooks.task_ended(TaskEnd(task_id, State.CANCELLED, None, callback_url))
