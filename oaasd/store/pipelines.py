"""The SQL of pipelines: registrations, one adaptation row per interval, and replica links.

Same guarantees as the task store: every write is an op of the single
writer, durable when the call returns. A pipeline is stopped by
compare-and-set (``WHERE state='RUNNING'``). A replica's ``pipeline_tasks``
row is written with its task by ``Store.submit`` (a ``ReplicaLink``), never
alone. The views read up to one newest adaptation id, so a loop appending
meanwhile cannot split a view.
"""

from __future__ import annotations

import time
from typing import Any

from oaasd.states import PIPELINE_TRANSITIONS, PipelineState, State, check
from oaasd.store.db import Store

ADAPTATION_COLUMNS = ("id, at, observed_rps, predicted_rps, configuration, latency_ms, accuracy, cost_cores, "
                      "objective, feasible, reasons, changed, actuator, source_error")


class PipelineStore:
    """Pipeline verbs over the daemon's ``Store`` (its writer and reader)."""

    def __init__(self, store: Store):
        self.store = store

    async def create(self, name: str, owner: str, spec: str) -> int:
        """Commit a pipeline RUNNING; return its id."""
        now = time.time()

        async def op(db):
            cur = await db.execute("INSERT INTO pipelines (name, user, state, spec, created_at) "
                                   "VALUES (?, ?, ?, ?, ?)", (name, owner, PipelineState.RUNNING, spec, now))
            return cur.lastrowid
        return await self.store.write(op)

    async def running(self) -> list[dict[str, Any]]:
        """Every RUNNING pipeline's row, oldest first."""
        return await self.store.fetch("SELECT * FROM pipelines WHERE state=? ORDER BY id", (PipelineState.RUNNING,))

    async def get(self, pipeline_id: int) -> dict[str, Any] | None:
        """A pipeline's row, or None."""
        rows = await self.store.fetch("SELECT * FROM pipelines WHERE id=?", (pipeline_id,))
        return rows[0] if rows else None

    async def page(self, *, user: str | None, state: str | None, before: int | None,
                   limit: int) -> list[dict[str, Any]]:
        """Rows newest first, filtered by owner and state, ids below ``before``."""
        return await self.store.page("pipelines", "*", {"user": user, "state": state}, before, limit)

    async def stop(self, pipeline_id: int) -> None:
        """RUNNING -> STOPPED (no-op when it is not running)."""
        old, new = PipelineState.RUNNING, PipelineState.STOPPED
        check(PIPELINE_TRANSITIONS, old, new)

        async def op(db):
            await db.execute("UPDATE pipelines SET state=?, stopped_at=? WHERE id=? AND state=?",
                             (new, time.time(), pipeline_id, old))
        await self.store.write(op)

    async def set_applied(self, pipeline_id: int, applied: str) -> None:
        """The configuration the command actuator has in place (JSON)."""
        async def op(db):
            await db.execute("UPDATE pipelines SET applied=? WHERE id=?", (applied, pipeline_id))
        await self.store.write(op)

    async def observed(self, pipeline_id: int, limit: int) -> list[float]:
        """The last ``limit`` observed request rates, oldest first."""
        rows = await self.store.rows(
            "SELECT observed_rps FROM adaptations WHERE pipeline_id=? AND observed_rps IS NOT NULL "
            "ORDER BY id DESC LIMIT ?", (pipeline_id, limit))
        return [r[0] for r in reversed(rows)]

    async def last_configuration(self, pipeline_id: int, upto: int | None = None) -> str | None:
        """The newest chosen configuration (JSON), at or below adaptation ``upto`` when given."""
        rows = await self.store.rows(
            "SELECT configuration FROM adaptations WHERE pipeline_id=? AND (? IS NULL OR id <= ?) "
            "AND configuration IS NOT NULL ORDER BY id DESC LIMIT 1", (pipeline_id, upto, upto))
        return rows[0][0] if rows else None

    async def record(self, pipeline_id: int, values: tuple, keep: int) -> None:
        """Append one interval's adaptation row; now and then trim to the newest ``keep``."""
        async def op(db):
            cur = await db.execute(
                "INSERT INTO adaptations (pipeline_id, at, observed_rps, predicted_rps, configuration, latency_ms, "
                "accuracy, cost_cores, objective, feasible, reasons, changed, actuator, source_error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (pipeline_id, *values))
            if cur.lastrowid % 100 == 0:  # trim now and then; the index makes it one range delete
                await db.execute(
                    "DELETE FROM adaptations WHERE pipeline_id=? AND id < (SELECT id FROM adaptations "
                    "WHERE pipeline_id=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (pipeline_id, pipeline_id, keep - 1))
        await self.store.write(op)

    async def adaptations(self, pipeline_id: int, limit: int) -> tuple[list[dict[str, Any]], str | None, int]:
        """(the last ``limit`` adaptations newest first, the configuration then in force, how many there are)."""
        newest = (await self.store.rows(
            "SELECT COALESCE(MAX(id), 0) FROM adaptations WHERE pipeline_id=?", (pipeline_id,)))[0][0]
        rows = await self.store.fetch(f"SELECT {ADAPTATION_COLUMNS} FROM adaptations WHERE pipeline_id=? "
                                      "AND id <= ? ORDER BY id DESC LIMIT ?", (pipeline_id, newest, limit))
        last = await self.last_configuration(pipeline_id, newest)
        count = (await self.store.rows("SELECT COUNT(*) FROM adaptations WHERE pipeline_id=? AND id <= ?",
                                       (pipeline_id, newest)))[0][0]
        return rows, last, count

    async def live_replicas(self, pipeline_id: int) -> list[dict[str, Any]]:
        """A pipeline's tasks that are PENDING or RUNNING, oldest first."""
        return await self.store.fetch(
            "SELECT p.task_id, p.stage, p.variant, p.batch, t.state FROM pipeline_tasks p "
            "JOIN tasks t ON t.id = p.task_id WHERE p.pipeline_id=? AND t.state IN (?, ?) ORDER BY p.task_id",
            (pipeline_id, State.PENDING.value, State.RUNNING.value))

    async def ended_replicas(self, pipeline_id: int, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` replicas that ended other than CANCELLED: stage, state, ended_at."""
        return await self.store.fetch(
            "SELECT p.stage, t.state, t.ended_at FROM pipeline_tasks p JOIN tasks t ON t.id = p.task_id "
            "WHERE p.pipeline_id=? AND t.state NOT IN ('PENDING', 'RUNNING', 'CANCELLED') "
            "ORDER BY p.task_id DESC LIMIT ?", (pipeline_id, limit))
