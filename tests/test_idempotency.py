"""Idempotency keys are scoped per user, and migration 8 keeps a database made by the old schema."""

from __future__ import annotations

import sqlite3
import time

from oaasd.service.auth import token_hash
from oaasd.states import Reason, State
from oaasd.store.db import NewTask, Store
from oaasd.store.schema import MIGRATIONS

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
USERS = "".join(f'[[users]]\nname = "{n}"\nrole = "user"\ntoken_sha256 = "{token_hash(t)}"\n\n'
                for n, t in TOKENS.items())
OLD_VERSION = 7  # the schema just before per-user keys (migration 8)


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def wait_as(d, name: str, task_id: int, timeout: float = 20) -> dict:
    """Poll a task through its owner's token until it is final."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, view = d.request("GET", f"/v1/tasks/{task_id}", headers=as_(name))
        assert status == 200, view
        if view["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never ended")


def test_two_users_with_one_key_get_their_own_tasks(daemon_factory):
    d = daemon_factory(USERS)
    spec = {"script": "echo \"OAAS_RESULT {\\\"who\\\": \\\"$OAAS_TASK_ID\\\"}\"", "idempotency_key": "job-2"}
    status, alice = d.request("POST", "/v1/tasks", spec, headers=as_("alice"))
    assert status == 201 and alice["user"] == "alice", alice
    status, bob = d.request("POST", "/v1/tasks", spec, headers=as_("bob"))
    assert status == 201, bob
    assert bob["id"] != alice["id"] and bob["user"] == "bob", "bob got alice's task"
    status, again = d.request("POST", "/v1/tasks", spec, headers=as_("alice"))
    assert (status, again["id"]) == (200, alice["id"]), "a user's repeated key still answers the first task"
    for name, task in (("alice", alice), ("bob", bob)):
        view = wait_as(d, name, task["id"])
        assert (view["state"], view["user"], view["result"]) == ("COMPLETED", name, {"who": str(task["id"])})


def test_a_key_claimed_first_by_bob_still_creates_alices_job(daemon_factory):
    d = daemon_factory(USERS)
    spec = {"command": ["true"], "require_result": False, "idempotency_key": "nightly"}
    status, bob = d.request("POST", "/v1/tasks", spec, headers=as_("bob"))
    assert status == 201
    status, alice = d.request("POST", "/v1/tasks", spec, headers=as_("alice"))
    assert status == 201 and alice["user"] == "alice" and alice["id"] != bob["id"], alice
    status, mine = d.request("GET", "/v1/tasks", headers=as_("alice"))
    assert [t["id"] for t in mine["items"]] == [alice["id"]]


def _old_database(path) -> dict[str, str]:
    """A database made by the schema before 8 with tasks, keys and events in it; returns its index/trigger SQL."""
    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:OLD_VERSION], start=1):
        db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    rows = [(1, "a", "alice", "COMPLETED", "Exited", 10.0, 0, 9.0, "job-2", '{"command": ["true"]}', '{"x": 1}'),
            (2, "b", "bob", "PENDING", "Submitted", 11.0, 5, 11.0, "other", '{"command": ["true"]}', None),
            (3, "c", "bob", "RUNNING", "Placed", 12.0, 0, 11.5, None, '{"command": ["sleep", "1"]}', None)]
    db.executemany("INSERT INTO tasks (id, name, user, state, reason, state_at, priority, submitted_at, "
                   "idempotency_key, spec, result) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("UPDATE tasks SET attempts=1, node_failures=1, started_at=9.5, ended_at=10.0, parent_id=7 WHERE id=1")
    schema = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name='tasks' AND type IN "
                             "('index', 'trigger') AND sql IS NOT NULL").fetchall())
    db.close()
    return schema


async def test_migration_8_keeps_rows_indexes_and_triggers(tmp_path):
    path = tmp_path / "old.sqlite3"
    old_schema = _old_database(path)
    before = sqlite3.connect(path).execute("SELECT * FROM tasks ORDER BY id").fetchall()
    events_before = sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone()[0]
    store = Store(path)
    await store.open()
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        cols = "id, name, user, state, reason, message, state_at, priority, submitted_at, started_at, " \
               "ended_at, attempts, node_failures, idempotency_key, parent_id, spec, result"
        assert [tuple(r) for r in await store.rows(f"SELECT {cols} FROM tasks ORDER BY id")] == before
        new_schema = {r[0]: r[1] for r in await store.rows(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name='tasks' AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL")}
        assert {k: v for k, v in new_schema.items() if k in old_schema} == old_schema, "indexes, triggers alike"
        assert set(new_schema) == set(old_schema)
        assert (await store.rows("SELECT count(*) FROM events"))[0][0] == events_before
        # Keys are per user now: bob may use alice's key; alice's own key still finds her task.
        spec = {"command": ["true"]}
        assert await store.submit(NewTask("n", "bob", 0, spec, idempotency_key="job-2")) == (4, True)
        assert await store.submit(NewTask("n", "alice", 0, spec, idempotency_key="job-2")) == (1, False)
        assert await store.submit(NewTask("n", "bob", 0, spec, idempotency_key="other")) == (2, False)
        # Both triggers still append events: the insert above, and a state change.
        await store.cancel_pending(2, Reason.CANCELLED_BY_USER)
        events = await store.task_events(2)
        assert [(e["old"], e["new"]) for e in events][-1] == (State.PENDING.value, State.CANCELLED.value)
        assert [(e["old"], e["new"]) for e in await store.task_events(4)] == [(None, "PENDING")]
        assert await store.request_cancel(3, Reason.CANCELLED_BY_USER) is True
        assert (await store.get_task(3))["cancel_reason"] == Reason.CANCELLED_BY_USER
    finally:
        await store.close()
