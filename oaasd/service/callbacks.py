"""Task callbacks: POST a task's final state and result to its ``callback_url``.

Persist, then act: when a task with a ``callback_url`` ends, a ``callbacks``
row (PENDING, holding the JSON payload) is committed first, then a
background coroutine POSTs it with a time limit, waiting ``backoff_s``,
then twice as long after each further failure (at most ``backoff_max_s``).
Every POST updates the row (attempts, last_status, last_error); it ends
DELIVERED on a 2xx answer, or FAILED after ``[callbacks] attempts`` POSTs.
Rows still PENDING are resumed at start, and an ended task whose row was
never written (a crash right after its final commit) gets one then, so a
daemon stop only delays a delivery. Nothing in the loops waits for one.

POSTs go through :class:`oaasd.outbound.Client` under the task owner's
outbound policy: a URL it forbids as written is refused at submission (422
on ``callback_url``); one whose name resolves only to forbidden addresses,
or that redirects to one, is recorded FAILED at once (retrying would not
change the answer). Redirects are not followed: a 3xx is a failed POST.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from oaasd.config import Settings
from oaasd.ports import TaskEnd
from oaasd.service.background import Background
from oaasd.service.metrics import Metrics
from oaasd.service.outbound import Client, DeniedError, OutboundError, privileged
from oaasd.store.callbacks import CallbackStore
from oaasd.store.db import Store
from oaasd.states import CallbackState

PAYLOAD_FIELDS = ("name", "state", "reason", "message", "ended_at")
ERROR_CHARS = 500


def payload_of(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON body POSTed for an ended task row."""
    body = {"task_id": row["id"], **{k: row[k] for k in PAYLOAD_FIELDS}}
    body["result"] = None if row["result"] is None else json.loads(row["result"])
    return body


class Callbacks:
    """Records and delivers the callbacks of ended tasks."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics, outbound: Client,
                 fatal: Callable[[str], None]):
        self.store = store
        self.rows = CallbackStore(store)
        self.settings = settings  # read at each use: a reload changes who is an admin
        self.cfg = settings.callbacks
        self.metrics = metrics
        self.outbound = outbound
        self.bg = Background(fatal)

    def check_url(self, url: str | None, owner: str) -> None:
        """Refuse (422 on ``callback_url``) a URL the owner's outbound policy forbids as written."""
        if url is not None:
            self.outbound.policy.check_registered(url, "callback_url", privileged(self.settings, owner))

    async def start(self) -> None:
        """Resume deliveries left PENDING, record those never recorded."""
        for row in await self.rows.pending():
            self._spawn(row["task_id"], row["url"], row["payload"], row["attempts"], row["user"])
        for task_id, url in await self.rows.unrecorded():
            await self.task_final(task_id, url)

    async def stop(self) -> None:
        """Cancel the deliveries in flight (their rows stay PENDING) and close the client."""
        await self.bg.cancel_all()
        await self.outbound.close()

    async def task_ended(self, end: TaskEnd) -> None:
        """The ``task_ended`` hook: deliver the ended task's callback, when it has a callback_url."""
        await self.task_final(end.task_id, end.callback_url)

    async def task_final(self, task_id: int, url: str | None) -> None:
        """A task ended: when it has a callback_url, commit its callback row, then deliver it.

        The caller passes the url it already holds, so the many tasks without one cost no read.
        """
        if url is None:
            return
        row = await self.store.get_task(task_id)
        payload = json.dumps(payload_of(row))
        if await self.rows.record(task_id, url, payload):
            self._spawn(task_id, url, payload, 0, row["user"])

    async def view(self, task_id: int) -> dict[str, Any] | None:
        """The delivery record of a task's callback, or None when it has none (yet)."""
        return await self.rows.view(task_id)

    def backoff(self, failed: int) -> float:
        """Seconds to wait after ``failed`` failed POSTs."""
        return min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (failed - 1))

    def _spawn(self, task_id: int, url: str, payload: str, done: int, owner: str) -> None:
        self.bg.spawn(self._deliver(task_id, url, payload, done, owner), f"callback-{task_id}")

    async def _deliver(self, task_id: int, url: str, payload: str, done: int, owner: str) -> None:
        last = max(self.cfg.attempts, done + 1)  # a resumed delivery gets at least one more POST
        for attempt in range(done + 1, last + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff(attempt - 1))
            status, error, denied = await self._post(url, payload, privileged(self.settings, owner))
            delivered = error is None
            state = (CallbackState.DELIVERED if delivered else CallbackState.FAILED if attempt == last or denied
                     else CallbackState.PENDING)
            await self._record(task_id, attempt, status, error, state)
            self.metrics.callbacks.labels("delivered" if delivered else "error").inc()
            if delivered or state == CallbackState.FAILED:
                return

    async def _post(self, url: str, payload: str, admin: bool) -> tuple[int | None, str | None, bool]:
        """One POST: (HTTP status or None, error or None when delivered, whether the policy refused it)."""
        try:
            answer = await self.outbound.request("POST", url, admin=admin, timeout_s=self.cfg.timeout_s, data=payload,
                                                 headers={"Content-Type": "application/json"})
        except OutboundError as exc:
            return None, str(exc)[:ERROR_CHARS], isinstance(exc, DeniedError)
        if 200 <= answer.status < 300:
            return answer.status, None, False
        return answer.status, f"HTTP {answer.status} {answer.reason}".strip(), False

    async def _record(self, task_id: int, attempt: int, status: int | None, error: str | None,
                      state: str) -> None:
        await self.rows.attempted(task_id, attempt, status, error, state)
