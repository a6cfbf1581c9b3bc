"""One intake verb: a trial's or replica's link row is committed in the same transaction as its task."""

from __future__ import annotations

import sqlite3

import pytest

from oaasd.errors import ConflictError
from oaasd.models import TaskSpec
from oaasd.ports import ReplicaLink, TrialLink
from oaasd.store.db import NewTask, Store


@pytest.fixture
async def store(tmp_path):
    s = Store(tmp_path / "oaasd.sqlite3")
    await s.open()
    yield s
    await s.close()


def task() -> NewTask:
    return NewTask.from_spec(TaskSpec.model_validate({"command": ["true"]}))


def table(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:  # a second connection: sees only what was committed
        return db.execute(sql).fetchall()


async def test_a_replica_and_its_pipeline_row_are_one_commit(store):
    task_id, created = await store.submit(task(), ReplicaLink(7, "detect", "small", 4))
    assert created
    assert table(store.path, "SELECT task_id, pipeline_id, stage, variant, batch FROM pipeline_tasks") == \
        [(task_id, 7, "detect", "small", 4)]
    assert table(store.path, "SELECT id, state FROM tasks") == [(task_id, "PENDING")]


async def test_a_link_that_cannot_be_written_leaves_no_task_behind(store):
    first, _ = await store.submit(task())
    with pytest.raises(sqlite3.Error):  # STRICT: batch must be an integer; the whole transaction rolls back
        await store.submit(task(), ReplicaLink(7, "detect", "small", "four"))  # type: ignore[arg-type]
    assert table(store.path, "SELECT id FROM tasks") == [(first,)]
    assert table(store.path, "SELECT * FROM pipeline_tasks") == []
    after, created = await store.submit(task(), ReplicaLink(7, "detect", "small", 4))
    assert created and after == first + 1  # the rolled-back id is not skipped nor reused twice
    assert table(store.path, "SELECT task_id FROM pipeline_tasks") == [(after,)]


async def test_a_trial_of_a_tuning_that_is_not_running_is_refused_and_not_stored(store):
    with pytest.raises(ConflictError):
        await store.submit(task(), TrialLink(99, {"x": 1}, False))
    assert table(store.path, "SELECT * FROM tasks") == []
    assert table(store.path, "SELECT * FROM trials") == []
