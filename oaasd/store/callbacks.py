"""The SQL of task callbacks: one row per ended task with a ``callback_url``.

Same guarantees as the task store: every write is an op of the single
writer, durable when the call returns. A row is inserted once (``INSERT OR
IGNORE``: a task's callback is recorded at most once, whoever gets there
first after a restart) and then only its delivery columns change.
"""

from __future__ import annotations

import json
import time
from typing import Any

from oaasd.states import CALLBACK_TRANSITIONS, CallbackState, check
from oaasd.store.db import Store

# Ended tasks with a callback_url but no callbacks row: the daemon stopped between
# the task's final commit and the row's. One scan of the tasks at start (~60 ms per 100k).
UNRECORDED = ("SELECT id, spec FROM tasks t WHERE ended_at IS NOT NULL AND instr(spec, '\"callback_url\"') > 0 "
              "AND NOT EXISTS (SELECT 1 FROM callbacks c WHERE c.task_id = t.id) ORDER BY id")


class CallbackStore:
    """Callback verbs over the daemon's ``Store`` (its writer and reader)."""

    def __init__(self, store: Store):
        self.store = store

    async def pending(self) -> list[dict[str, Any]]:
        """Deliveries still PENDING, with their task's owner, oldest task first."""
        return await self.store.fetch(
            "SELECT c.task_id, c.url, c.payload, c.attempts, t.user FROM callbacks c JOIN tasks t "
            "ON t.id = c.task_id WHERE c.state='PENDING' ORDER BY c.task_id")

    async def unrecorded(self) -> list[tuple[int, str | None]]:
        """(task id, callback_url) of ended tasks whose callback row was never written."""
        return [(task_id, json.loads(spec).get("callback_url")) for task_id, spec in await self.store.rows(UNRECORDED)]

    async def record(self, task_id: int, url: str, payload: str) -> bool:
        """Insert the task's PENDING callback row; False when it already had one."""
        async def op(db):
            cur = await db.execute("INSERT OR IGNORE INTO callbacks (task_id, url, payload, state, created_at) "
                                   "VALUES (?,?,?,?,?)", (task_id, url, payload, CallbackState.PENDING, time.time()))
            return cur.rowcount == 1
        return await self.store.write(op)

    async def view(self, task_id: int) -> dict[str, Any] | None:
        """The delivery record of a task's callback, or None."""
        rows = await self.store.fetch(
            "SELECT url, state, attempts, last_status, last_error, created_at, last_at, delivered_at "
            "FROM callbacks WHERE task_id=?", (task_id,))
        return rows[0] if rows else None

    async def attempted(self, task_id: int, attempt: int, status: int | None, error: str | None,
                        state: str) -> None:
        """Record one POST's outcome and the delivery's state after it (a PENDING delivery's next state)."""
        check(CALLBACK_TRANSITIONS, CallbackState.PENDING, state)
        now = time.time()

        async def op(db):
            await db.execute("UPDATE callbacks SET state=?, attempts=?, last_status=?, last_error=?, last_at=?, "
                             "delivered_at=? WHERE task_id=?",
                             (state, attempt, status, error, now, now if state == CallbackState.DELIVERED else None, task_id))
        await self.store.write(op)
