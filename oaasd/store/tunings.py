"""The SQL of tunings: tuning rows, daemon-run trials (read) and external workers' trials.

Same guarantees as ``store``: every write is an op of the single writer and
is durable when the call returns. A tuning ends by compare-and-set
(``WHERE state='RUNNING'``); a worker trial ends the same way (``WHERE
state='RUNNING'``), so two observations of one trial cannot both count,
and a finished worker trial is never changed again except to attach the
metrics of the one observation a worker sends after being told to stop.
Daemon-run trials are tasks: their trial rows are inserted together with
the task by ``Store.submit`` with a ``TrialLink`` (the writer assigns task ids there).
"""

from __future__ import annotations

import json
import time
from typing import Any

from oaasd.errors import NotFoundError
from oaasd.states import TUNING_TRANSITIONS, State, TuningState, check, check_transition
from oaasd.store.db import Store

TUNING_COLUMNS = "id, name, user, state, reason, created_at, ended_at"
WORKER_TRIAL_COLUMNS = ("id, tuning_id, worker_id, config, baseline, state, reason, message, result, "
                        "pruned, prune_reason, started_at, ended_at, elapsed_s, deadline_at")


def _decode_trial(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "config": json.loads(r["config"]), "baseline": bool(r["baseline"]),
            "pruned": bool(r["pruned"]), "result": None if r["result"] is None else json.loads(r["result"])}


def _decode_worker_trial(r: dict[str, Any]) -> dict[str, Any]:
    return {**_decode_trial(r), "trial_id": r["id"], "task_id": None, "node": None}


class TuningStore:
    """Tuning verbs over the daemon's ``Store`` (its writer and reader)."""

    def __init__(self, store: Store):
        self.store = store

    # ---- tunings ----------------------------------------------------
    async def create_tuning(self, name: str, user: str, description: dict[str, Any],
                            fingerprint: str) -> tuple[int, float]:
        """Insert a RUNNING tuning; return (id, created_at)."""
        async def op(db):
            now = time.time()
            cur = await db.execute(
                "INSERT INTO tunings (name, user, state, description, created_at, fingerprint) "
                "VALUES (?,?,?,?,?,?)", (name, user, TuningState.RUNNING, json.dumps(description), now, fingerprint))
            return cur.lastrowid, now
        return await self.store.write(op)

    async def end_tuning(self, tuning_id: int, state: str, reason: str) -> bool:
        """RUNNING -> ``state`` by compare-and-set; False when it had already ended.

        ``state`` must be one RUNNING may go to (IllegalTransitionError otherwise)."""
        check(TUNING_TRANSITIONS, TuningState.RUNNING, state)

        async def op(db):
            cur = await db.execute("UPDATE tunings SET state=?, reason=?, ended_at=? WHERE id=? AND state=?",
                                   (state, reason, time.time(), tuning_id, TuningState.RUNNING))
            return cur.rowcount == 1
        return await self.store.write(op)

    async def get_tuning(self, tuning_id: int) -> dict[str, Any]:
        """Return a tuning row (description decoded), or raise NotFoundError."""
        rows = await self.store.fetch(f"SELECT {TUNING_COLUMNS}, description FROM tunings WHERE id=?", (tuning_id,))
        if not rows:
            raise NotFoundError(f"no tuning {tuning_id}", [{"field": "id", "problem": "unknown tuning id"}])
        return {**rows[0], "description": json.loads(rows[0]["description"])}

    async def list_tunings(self, *, state: str | None = None, user: str | None = None, before: int | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        """Return tunings newest first (without their descriptions)."""
        return await self.store.page("tunings", TUNING_COLUMNS, {"state": state, "user": user}, before, limit)

    async def running_tunings(self) -> list[int]:
        """Ids of every RUNNING tuning (to resume at start)."""
        return [r[0] for r in await self.store.rows("SELECT id FROM tunings WHERE state='RUNNING' ORDER BY id")]

    async def history_tunings(self, user: str, fingerprint: str, before: int) -> list[int]:
        """Ids of a user's tunings older than ``before`` with the same space fingerprint."""
        rows = await self.store.rows("SELECT id FROM tunings WHERE user=? AND fingerprint=? AND id<? ORDER BY id",
                                     (user, fingerprint, before))
        return [r[0] for r in rows]

    # ---- trials -----------------------------------------------------
    async def trials(self, tuning_id: int) -> list[dict[str, Any]]:
        """Every trial of a tuning, oldest first: daemon-run ones (tasks), then workers' ones.

        Each row has ``trial_id``, ``config``, ``baseline``, ``pruned``,
        ``prune_reason``, ``state``, ``reason``, ``message``, ``result``,
        ``started_at``, ``ended_at``, and ``task_id`` + ``node`` (daemon) or
        ``worker_id`` + ``elapsed_s`` + ``deadline_at`` (workers).
        """
        rows = await self.store.fetch(
            "SELECT tr.task_id, tr.task_id AS trial_id, tr.config, tr.baseline, tr.pruned, tr.prune_reason, "
            "t.state, t.reason, t.message, t.result, t.started_at, t.ended_at, "
            "(SELECT a.node FROM attempts a WHERE a.task_id = t.id ORDER BY a.seq DESC LIMIT 1) AS node "
            "FROM trials tr JOIN tasks t ON t.id = tr.task_id WHERE tr.tuning_id=? ORDER BY tr.task_id",
            (tuning_id,))
        workers = await self.store.fetch(
            f"SELECT {WORKER_TRIAL_COLUMNS} FROM worker_trials WHERE tuning_id=? ORDER BY id", (tuning_id,))
        return [_decode_trial(r) for r in rows] + [_decode_worker_trial(r) for r in workers]

    async def finished_trials(self, tuning_ids: list[int]) -> list[dict[str, Any]]:
        """The finished trials of several tunings (the history a warm start reads)."""
        out: list[dict[str, Any]] = []
        for tuning_id in tuning_ids:
            out += [r for r in await self.trials(tuning_id) if r["state"] not in ("PENDING", "RUNNING")]
        return out

    async def prune_trial(self, task_id: int, reason: str) -> None:
        """Mark a daemon-run trial as stopped early (before its task is cancelled)."""
        async def op(db):
            await db.execute("UPDATE trials SET pruned=1, prune_reason=? WHERE task_id=?", (reason, task_id))
        await self.store.write(op)

    # ---- external workers -------------------------------------------
    async def add_worker(self, tuning_id: int, name: str | None) -> int:
        """Register a worker of a tuning; return its id."""
        async def op(db):
            cur = await db.execute("INSERT INTO tuning_workers (tuning_id, name, registered_at) VALUES (?,?,?)",
                                   (tuning_id, name, time.time()))
            return cur.lastrowid
        return await self.store.write(op)

    async def worker(self, worker_id: int) -> dict[str, Any] | None:
        """A registered worker's row, or None."""
        rows = await self.store.fetch("SELECT id, tuning_id, name, registered_at FROM tuning_workers WHERE id=?",
                                      (worker_id,))
        return rows[0] if rows else None

    async def count_workers(self, tuning_id: int) -> int:
        """How many workers registered with a tuning."""
        return (await self.store.rows("SELECT COUNT(*) FROM tuning_workers WHERE tuning_id=?", (tuning_id,)))[0][0]

    async def add_worker_trial(self, tuning_id: int, worker_id: int, config: dict[str, Any], baseline: bool,
                               timeout_s: float | None) -> dict[str, Any]:
        """Hand a configuration to a worker: a RUNNING trial row; return it."""
        async def op(db):
            now = time.time()
            deadline = None if timeout_s is None else now + timeout_s
            cur = await db.execute(
                "INSERT INTO worker_trials (tuning_id, worker_id, config, baseline, state, reason, started_at, "
                "deadline_at) VALUES (?,?,?,?,'RUNNING','Suggested',?,?)",
                (tuning_id, worker_id, json.dumps(config), int(baseline), now, deadline))
            return {"trial_id": cur.lastrowid, "started_at": now, "deadline_at": deadline}
        return await self.store.write(op)

    async def worker_trial(self, trial_id: int) -> dict[str, Any] | None:
        """One worker trial's row (decoded), or None."""
        rows = await self.store.fetch(f"SELECT {WORKER_TRIAL_COLUMNS} FROM worker_trials WHERE id=?", (trial_id,))
        return _decode_worker_trial(rows[0]) if rows else None

    async def end_worker_trials(self, trial_ids: list[int], state: str, reason: str, *,
                                result: dict[str, Any] | None = None, elapsed_s: float | None = None,
                                prune_reason: str | None = None) -> int:
        """RUNNING -> ``state`` for each trial by compare-and-set; return how many changed."""
        check_transition(State.RUNNING, state)

        async def op(db):
            cur = await db.executemany(
                "UPDATE worker_trials SET state=?, reason=?, ended_at=?, result=?, elapsed_s=?, "
                "pruned=?, prune_reason=? WHERE id=? AND state='RUNNING'",
                [(state, reason, time.time(), None if result is None else json.dumps(result), elapsed_s,
                  int(prune_reason is not None), prune_reason, t) for t in trial_ids])
            return cur.rowcount
        return await self.store.write(op)

    async def attach_result(self, trial_id: int, result: dict[str, Any], elapsed_s: float | None) -> bool:
        """Record the metrics a pruned trial's worker sent after the stop; False if it already had some."""
        async def op(db):
            cur = await db.execute(
                "UPDATE worker_trials SET result=?, elapsed_s=? WHERE id=? AND pruned=1 AND result IS NULL",
                (json.dumps(result), elapsed_s, trial_id))
            return cur.rowcount == 1
        return await self.store.write(op)

    async def add_report(self, trial_id: int, step: float, value: float) -> None:
        """Append one intermediate value a worker reported for early stopping."""
        async def op(db):
            await db.execute("INSERT INTO worker_reports (trial_id, step, value, at) VALUES (?,?,?,?)",
                             (trial_id, step, value, time.time()))
        await self.store.write(op)

    async def reports(self, tuning_id: int) -> dict[int, list[tuple[float, float]]]:
        """Every worker trial's intermediate ``(step, value)`` series of a tuning."""
        rows = await self.store.rows(
            "SELECT r.trial_id, r.step, r.value FROM worker_reports r JOIN worker_trials w ON w.id = r.trial_id "
            "WHERE w.tuning_id=? ORDER BY r.id", (tuning_id,))
        out: dict[int, list[tuple[float, float]]] = {}
        for trial_id, step, value in rows:
            out.setdefault(trial_id, []).append((step, value))
        return out
