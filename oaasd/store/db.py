"""The SQLite store: the only durable state, and all of oaasd's SQL.

Guarantees:
- One writer connection fed by a queue. Every write is an *op* the writer
  runs inside one transaction together with whatever other ops are queued
  at that moment (group commit): many concurrent submissions share one
  transaction and one fsync. An op's future resolves only after COMMIT, so
  a 201 is never answered for a task that a crash could lose
  (``synchronous=FULL`` survives power loss, ``NORMAL`` a daemon crash).
- Every task state change goes through ``_transition``: it checks the
  transition table, updates by compare-and-set (``WHERE id=? AND state=?``,
  exactly one row) and a trigger appends the state event in the same
  transaction. An op that raises leaves no partial write: the batch is
  rolled back and its other ops are replayed one transaction each.
- Rows of ``events`` and ``metrics`` are only ever appended; a task in a
  final state is never updated again. An attempt's metrics are committed
  with the stdout offset after them (``record_output``), so each is stored
  once however often the daemon restarts.
- Reads use a second connection (WAL lets them run beside the writer) and
  see only committed data.
- A full state disk (SQLITE_FULL, ENOSPC) fails every op of the batch with
  ``StorageFullError`` (HTTP 507) and nothing of it is written; the store
  stays usable and the next batch tries again. ``full_since`` says since
  when writes are refused. Metrics reported meanwhile are dropped; an
  attempt's locator and end (``write_kept``) are retried until written.
- Idempotency keys are unique per user: ``(user, idempotency_key)``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiosqlite

from oaasd.errors import ConflictError, NotFoundError, StartupError, StorageFullError
from oaasd.ports import Link, TrialLink
from oaasd.states import Reason, State, check_transition
from oaasd.store.schema import MIGRATIONS

log = logging.getLogger("oaasd.store")

Op = Callable[[aiosqlite.Connection], Awaitable[Any]]
FULL_RETRY_S = (0.5, 5.0)  # a kept write refused by a full disk is retried, backing off to 5 s

TASK_COLUMNS = ("id, name, user, state, reason, message, state_at, priority, submitted_at, "
                "started_at, ended_at, attempts, node_failures, idempotency_key, parent_id, spec, result, "
                "cancel_reason, cancel_requested_at")
ATTEMPT_COLUMNS = ("id, task_id, seq, node, placement, state, started_at, ended_at, "
                   "exit_code, signal, reason, message, locator, stdout_offset, metrics_stored, metrics_dropped, "
                   "max_rss_mb, cpu_s, elapsed_s")


@dataclass
class NewTask:
    """A validated submission, ready to insert."""

    name: str
    user: str
    priority: int
    spec: dict[str, Any]
    idempotency_key: str | None = None
    parent_id: int | None = None
    submitted_at: float = field(default_factory=time.time)

    @classmethod
    def from_spec(cls, spec: Any, parent_id: int | None = None) -> "NewTask":
        """The row to insert for a validated TaskSpec (``parent_id``: the tuning of a trial)."""
        return cls(name=spec.name, user=spec.user, priority=spec.priority, parent_id=parent_id,
                   spec=spec.model_dump(mode="json", exclude_defaults=True), idempotency_key=spec.idempotency_key)


class Store:
    """Durable task state behind one writer with group commit."""

    def __init__(self, path: Path, synchronous: str = "FULL", max_batch: int = 1024):
        self.path = path
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Op | NewTask, asyncio.Future]] = asyncio.Queue()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._task: asyncio.Task | None = None
        self.on_commit: Callable[[float], None] = lambda seconds: None  # COMMIT latency hook (/metrics)
        self.full_since: float | None = None  # set while the state disk refuses writes (SQLITE_FULL)

    # ---- life cycle -------------------------------------------------
    async def open(self) -> None:
        """Open both connections, apply migrations, start the writer.

        The state dir is 0711 (tasks reach their attempt dirs by path, list nothing),
        the database and its WAL/SHM 0600 (SQLite gives them the main file's mode)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = self.path.parent.stat()
        if folder.st_uid == os.geteuid() and not folder.st_mode & 0o1000:  # never a shared /tmp
            os.chmod(self.path.parent, 0o711)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if path.exists():
                os.chmod(path, 0o600)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=WAL", f"synchronous={self.synchronous}", "foreign_keys=ON",
                       "busy_timeout=5000"):
            await self._writer.execute(f"PRAGMA {pragma}")
        await self._migrate()
        async with self._writer.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM tasks") as cur:
            (self._next_id,) = await cur.fetchone()
        self._pending_next_id = self._next_id
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        await self._reader.execute_fetchall("PRAGMA busy_timeout=5000")
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Finish queued writes, then close."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()

    async def _migrate(self) -> None:
        db = self._writer
        (version,) = await (await db.execute("PRAGMA user_version")).fetchone()
        if version > len(MIGRATIONS):
            raise StartupError(f"database {self.path} has schema version {version}, newer than this "
                               f"oaasd's {len(MIGRATIONS)}: run the oaasd that wrote it, or a newer one")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
            log.info("store migrated to schema version %d", number)

    async def schema_version(self) -> int:
        """Return the applied schema version."""
        return (await self.rows("PRAGMA user_version"))[0][0]

    # ---- the writer -------------------------------------------------
    def _submit_op(self, op: Op | NewTask) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, fut))
        return fut

    async def write(self, op: Op) -> Any:
        """Run ``op`` in the next group transaction; return after COMMIT."""
        return await self._submit_op(op)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._run_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def write_kept(self, op: Op, what: str) -> Any:
        """Like ``write``, but retried while the state disk is full: for what a live process
        needs recorded (its locator, its end), which must wait for space, never be lost."""
        delay = FULL_RETRY_S[0]
        while True:
            try:
                return await self.write(op)
            except StorageFullError:
                if delay == FULL_RETRY_S[0]:
                    log.warning("%s waits for space on the state disk (retried every %.0f s at most)",
                                what, FULL_RETRY_S[1])
                await asyncio.sleep(delay)
                delay = min(delay * 2, FULL_RETRY_S[1])

    async def _run_batch(self, batch: list[tuple[Op | NewTask, asyncio.Future]]) -> None:
        try:
            results = await self._transaction(batch)
        except Exception as exc:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
            exc = self._disk_full(exc)
            if isinstance(exc, StorageFullError):  # every op would fail alike: no replay one by one
                for _, fut in batch:
                    self._settle(fut, exc=StorageFullError())
                return
            if len(batch) == 1:
                self._settle(batch[0][1], exc=exc)
                return
            for item in batch:  # isolate the failing op: one transaction each
                await self._run_batch([item])
            return
        if self.full_since is not None:
            log.warning("state disk writable again after %.1f s full", time.time() - self.full_since)
            self.full_since = None
        for (_, fut), result in zip(batch, results):
            self._settle(fut, result=result)

    def _disk_full(self, exc: Exception) -> Exception:
        """A write the full state disk refused becomes StorageFullError (logged once per episode)."""
        code = getattr(exc, "sqlite_errorcode", None)
        full = (isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or \
            (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
        if not full:
            return exc
        if self.full_since is None:
            self.full_since = time.time()
            log.error("state disk full: writes refused until space is freed (%s)", exc)
        return StorageFullError()

    async def _transaction(self, batch) -> list[Any]:
        db = self._writer
        await db.execute("BEGIN IMMEDIATE")
        self._pending_next_id = self._next_id
        new = [op for op, _ in batch if isinstance(op, NewTask)]
        inserted = iter(await self._insert_tasks(db, new) if new else [])
        results = []
        for op, _ in batch:
            results.append(next(inserted) if isinstance(op, NewTask) else await op(db))
        committing = time.perf_counter()
        await db.execute("COMMIT")
        self.on_commit(time.perf_counter() - committing)
        self._next_id = max(self._next_id, self._pending_next_id)
        return results

    @staticmethod
    def _settle(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    # ---- submissions ------------------------------------------------
    async def submit(self, task: NewTask, link: Link | None = None) -> tuple[int, bool]:
        """Insert a task as PENDING; return (id, created). Idempotent by key.

        A ``link`` (the trial row of a tuning's trial, the ``pipeline_tasks``
        row of a replica) is inserted in the same transaction as its task, so
        a crash can never leave one without the other. A trial of a tuning
        that is no longer RUNNING is refused with ConflictError.
        """
        if link is None:
            return await self._submit_op(task)  # batched with every submission queued meanwhile

        async def op(db):
            if isinstance(link, TrialLink):
                async with db.execute("SELECT state FROM tunings WHERE id=?", (link.tuning_id,)) as cur:
                    row = await cur.fetchone()
                if row is None or row[0] != "RUNNING":
                    raise ConflictError(f"tuning {link.tuning_id} is not RUNNING")
            ((task_id, created),) = await self._insert_tasks(db, [task])
            await self._insert_link(db, task_id, link)
            return task_id, created
        return await self.write(op)

    @staticmethod
    async def _insert_link(db: aiosqlite.Connection, task_id: int, link: Link) -> None:
        if isinstance(link, TrialLink):
            await db.execute("INSERT INTO trials (task_id, tuning_id, config, baseline) VALUES (?,?,?,?)",
                             (task_id, link.tuning_id, json.dumps(link.config), int(link.baseline)))
        else:
            await db.execute("INSERT INTO pipeline_tasks (task_id, pipeline_id, stage, variant, batch) "
                             "VALUES (?, ?, ?, ?, ?)", (task_id, link.pipeline_id, link.stage, link.variant, link.batch))

    async def _insert_tasks(self, db: aiosqlite.Connection, new: list[NewTask]) -> list[tuple[int, bool]]:
        """Insert a batch with one executemany; ids are assigned here (one writer)."""
        known = await self._known_keys(db, new)
        next_id = self._pending_next_id  # == _next_id unless an op of this batch inserted too
        rows, out = [], []
        for t in new:
            key = (t.user, t.idempotency_key)
            if t.idempotency_key and key in known:
                out.append((known[key], False))
                continue
            if t.idempotency_key:
                known[key] = next_id
            rows.append((next_id, t.name, t.user, State.PENDING.value, Reason.SUBMITTED.value, t.submitted_at,
                         t.priority, t.submitted_at, t.idempotency_key, t.parent_id, json.dumps(t.spec)))
            out.append((next_id, True))
            next_id += 1
        await db.executemany(
            "INSERT INTO tasks (id, name, user, state, reason, state_at, priority, submitted_at, "
            "idempotency_key, parent_id, spec) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        self._pending_next_id = next_id  # taken only if the batch commits
        return out

    @staticmethod
    async def _known_keys(db: aiosqlite.Connection, new: list[NewTask]) -> dict[tuple[str, str], int]:
        """Ids of the tasks already holding one of the batch's (user, idempotency key) pairs."""
        pairs = {(t.user, t.idempotency_key) for t in new if t.idempotency_key}
        if not pairs:
            return {}
        # One probe of the UNIQUE (user, idempotency_key) index per pair of the batch.
        cur = await db.execute(
            f"WITH wanted(user, key) AS (VALUES {','.join(['(?,?)'] * len(pairs))}) "
            "SELECT t.user, t.idempotency_key, t.id FROM wanted w "
            "JOIN tasks t ON t.user = w.user AND t.idempotency_key = w.key", [v for pair in pairs for v in pair])
        return {(u, k): i for u, k, i in await cur.fetchall()}

    # ---- state changes ----------------------------------------------
    @staticmethod
    async def _transition(db: aiosqlite.Connection, task_id: int, old: State, new: State,
                          reason: str, message: str | None = None, **fields: Any) -> None:
        """The one verb that changes a task's state (checked, CAS, evented)."""
        check_transition(old, new)
        sets = ["state=?", "reason=?", "message=?", "state_at=?"] + [f"{k}=?" for k in fields]
        params = [new.value, reason, message, time.time(), *fields.values(), task_id, old.value]
        cur = await db.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id=? AND state=?", params)
        if cur.rowcount != 1:
            raise ConflictError(f"task {task_id} is not {old.value}")

    async def cancel_pending(self, task_id: int, reason: str = Reason.CANCELLED_BY_USER,
                             message: str | None = None) -> None:
        """PENDING -> CANCELLED; ConflictError when it is no longer pending."""
        async def op(db):
            await self._transition(db, task_id, State.PENDING, State.CANCELLED, reason, message,
                                   ended_at=time.time())
        await self.write(op)

    async def request_cancel(self, task_id: int, reason: str) -> bool:
        """Persist a cancel request on a RUNNING task before it is killed (the first reason stays).

        False when the task is no longer RUNNING. Recovery finishes a request a crash interrupted.
        """
        async def op(db):
            cur = await db.execute(
                "UPDATE tasks SET cancel_reason=COALESCE(cancel_reason, ?), "
                "cancel_requested_at=COALESCE(cancel_requested_at, ?) WHERE id=? AND state='RUNNING'",
                (reason, time.time(), task_id))
            return cur.rowcount == 1
        return await self.write(op)

    async def start_attempt(self, task_id: int, node: str, placement: dict[str, Any]) -> tuple[int, int]:
        """PENDING -> RUNNING and the attempt row (its reservation) in one transaction.

        Returns (attempt_id, seq).
        """
        async def op(db):
            now = time.time()
            async with db.execute("SELECT attempts FROM tasks WHERE id=?", (task_id,)) as cur:
                (seq,) = await cur.fetchone()
            await self._transition(db, task_id, State.PENDING, State.RUNNING, Reason.PLACED,
                                   f"on {node}", attempts=seq + 1, started_at=now)
            cur = await db.execute(
                "INSERT INTO attempts (task_id, seq, node, placement, state, started_at) VALUES (?,?,?,?,?,?)",
                (task_id, seq + 1, node, json.dumps(placement), State.RUNNING.value, now))
            return cur.lastrowid, seq + 1
        return await self.write(op)

    async def set_locator(self, attempt_id: int, locator: dict[str, Any]) -> None:
        """Record where a running attempt can be found again after a restart."""
        async def op(db):
            await db.execute("UPDATE attempts SET locator=? WHERE id=?", (json.dumps(locator), attempt_id))
        await self.write_kept(op, f"the locator of attempt {attempt_id}")

    async def finish_attempt(self, attempt_id: int, task_id: int, attempt_state: State, task_state: State, reason: str,
                             message: str | None = None, *, exit_code: int | None = None, signal: str | None = None,
                             result: Any = None, max_rss_mb: float | None = None, cpu_s: float | None = None) -> None:
        """End an attempt (with its accounting; elapsed from its start), move its task; retried while the disk is full."""
        async def op(db):
            now = time.time()
            cur = await db.execute(
                "UPDATE attempts SET state=?, ended_at=?, exit_code=?, signal=?, reason=?, message=?, max_rss_mb=?, "
                "cpu_s=?, elapsed_s=MAX(0, ? - started_at) WHERE id=? AND state='RUNNING'",
                (attempt_state.value, now, exit_code, signal, reason, message, max_rss_mb, cpu_s, now, attempt_id))
            if cur.rowcount != 1:
                raise ConflictError(f"attempt {attempt_id} is not RUNNING")
            fields: dict[str, Any] = {}
            if task_state != State.PENDING:
                fields = {"ended_at": now, "result": None if result is None else json.dumps(result)}
            await self._transition(db, task_id, State.RUNNING, task_state, reason, message, **fields)
            if attempt_state == State.NODE_FAIL:
                await db.execute("UPDATE tasks SET node_failures=node_failures+1 WHERE id=?", (task_id,))
        await self.write_kept(op, f"the end of task {task_id} ({task_state.value})")  # never lost

    async def record_output(self, attempt_id: int, stdout_offset: int, metrics_stored: int, metrics_dropped: int,
                            metrics: list[tuple[int, float, dict]]) -> None:
        """Append an attempt's new metrics (task_id, at, data) and move its stdout offset and
        counts past them, in one transaction: a restart resumes there, storing nothing twice."""
        async def op(db):
            if metrics:
                await db.executemany("INSERT INTO metrics (task_id, attempt_id, at, data) VALUES (?,?,?,?)",
                                     [(t, attempt_id, at, json.dumps(d)) for t, at, d in metrics])
            await db.execute("UPDATE attempts SET stdout_offset=?, metrics_stored=?, metrics_dropped=? WHERE id=?",
                             (stdout_offset, metrics_stored, metrics_dropped, attempt_id))
        try:
            await self.write(op)
        except StorageFullError:  # intermediate values: the attempt's end is what must be kept
            log.warning("attempt %d: %d metrics dropped, state disk full", attempt_id, len(metrics))

    # ---- nodes ------------------------------------------------------
    async def save_node(self, name: str, config: dict[str, Any] | None, source: str) -> None:
        """Record a node added at run time (source 'api') or removed ('deleted')."""
        async def op(db):
            await db.execute(
                "INSERT INTO nodes (name, config, source) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET config=excluded.config, source=excluded.source",
                (name, json.dumps(config), source))
        await self.write(op)

    async def set_node_intent(self, name: str, intent: str | None, reason: str | None,
                              user: str | None, at: float | None) -> None:
        """Store an admin's intent for a node (None clears it)."""
        async def op(db):
            await db.execute(
                "INSERT INTO nodes (name, config, source, intent, reason, intent_user, intent_at) "
                "VALUES (?, 'null', 'intent', ?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                "intent=excluded.intent, reason=excluded.reason, intent_user=excluded.intent_user, "
                "intent_at=excluded.intent_at", (name, intent, reason, user, at))
        await self.write(op)

    async def load_nodes(self) -> list[dict[str, Any]]:
        """Every stored node row: run-time additions, removals and intents."""
        rows = await self.fetch("SELECT name, config, source, intent, reason, intent_user, intent_at FROM nodes")
        return [{**r, "config": json.loads(r["config"])} for r in rows]

    # ---- reads ------------------------------------------------------
    async def rows(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        """Run one read to completion; return its rows."""
        # One hop to the reader thread runs the statement to completion, so
        # concurrent reads never interleave on the connection: an unfinished
        # statement would hold an old WAL snapshot open for the next one.
        return list(await self._reader.execute_fetchall(sql, params))

    async def fetch(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        """Run one read to completion; return its rows as dicts."""
        return [dict(r) for r in await self.rows(sql, params)]

    async def get_task(self, task_id: int) -> dict[str, Any]:
        """Return a task row, or raise NotFoundError."""
        rows = await self.fetch(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,))
        if not rows:
            raise NotFoundError(f"no task {task_id}", [{"field": "id", "problem": "unknown task id"}])
        return rows[0]

    async def task_events(self, task_id: int) -> list[dict[str, Any]]:
        """Return a task's state history, oldest first."""
        return await self.fetch("SELECT at, old, new, reason, message FROM events WHERE task_id=? ORDER BY id",
                                 (task_id,))

    async def task_attempts(self, task_id: int) -> list[dict[str, Any]]:
        """Return a task's attempts, first first."""
        return await self.fetch(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id=? ORDER BY seq",
                                 (task_id,))

    async def task_metrics(self, task_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Return the last ``limit`` metrics a task reported, oldest first."""
        rows = await self.fetch("SELECT attempt_id, at, data FROM metrics WHERE task_id=? ORDER BY id DESC LIMIT ?",
                                 (task_id, limit))
        return [{**r, "data": json.loads(r["data"])} for r in reversed(rows)]

    async def list_tasks(self, *, state: str | None = None, user: str | None = None,
                         name: str | None = None, parent_id: int | None = None,
                         before: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Return tasks newest first, filtered, with ids below ``before``."""
        filters = {"state": state, "user": user, "name": name, "parent_id": parent_id}
        return await self.page("tasks", TASK_COLUMNS, filters, before, limit)

    async def page(self, table: str, columns: str, filters: dict[str, Any], before: int | None,
                   limit: int) -> list[dict[str, Any]]:
        """One page of a table newest first: rows whose columns equal the non-None ``filters``
        and whose id is below ``before``. Table and column names come from code, never requests."""
        where = [f"{col}=?" for col, val in filters.items() if val is not None]
        params: list[Any] = [val for val in filters.values() if val is not None]
        if before is not None:
            where.append("id<?")
            params.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return await self.fetch(f"SELECT {columns} FROM {table} {clause} ORDER BY id DESC LIMIT ?", [*params, limit])

    async def count_by_state(self) -> dict[str, int]:
        """How many tasks are in each state (one GROUP BY over the ``tasks_state_id`` index)."""
        return dict(await self.rows("SELECT state, COUNT(*) FROM tasks GROUP BY state"))

    async def count_pending(self, user: str) -> int:
        """How many PENDING tasks a user holds."""
        return (await self.rows("SELECT count(*) FROM tasks WHERE user=? AND state='PENDING'", (user,)))[0][0]

    async def pending_queue(self) -> list[tuple]:
        """Return (id, priority, submitted_at, spec_json, cancel_reason) of every pending task, queue order."""
        return await self.rows("SELECT id, priority, submitted_at, spec, cancel_reason FROM tasks "
                               "WHERE state='PENDING' ORDER BY priority DESC, id")

    async def running_attempts(self) -> list[dict[str, Any]]:
        """Return every attempt still RUNNING, with its task's spec and persisted cancel request."""
        rows = await self.fetch(
            f"SELECT {', '.join('a.' + c.strip() for c in ATTEMPT_COLUMNS.split(','))}, t.spec AS spec, "
            "t.cancel_reason AS cancel_reason, t.cancel_requested_at AS cancel_requested_at "
            "FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE a.state='RUNNING' ORDER BY a.id")
        return rows
