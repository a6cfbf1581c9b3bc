"""The intake verb on a real store and scheduler: refuse, commit (with the link), queue, publish.

The store side of the link rows is in ``test_intake_links.py``.
"""

from __future__ import annotations

import inspect

import pytest

from oaasd.config import Settings
from oaasd.core.policies import Fifo
from oaasd.errors import ConflictError, UnsatisfiableError
from oaasd.models import TaskSpec
from oaasd.ports import ReplicaLink, TaskStore, TrialLink
from oaasd.service.cluster import Cluster
from oaasd.service.hooks import Hooks
from oaasd.service.intake import Intake
from oaasd.service.metrics import Metrics
from oaasd.service.scheduler import Scheduler
from oaasd.store.db import Store
from oaasd.store.tunings import TuningStore


class Sink:
    def __init__(self):
        self.events = []

    def publish(self, event):
        self.events.append(event)


@pytest.fixture
async def world(tmp_path):
    store = Store(tmp_path / "oaasd.sqlite3")
    await store.open()
    cluster = Cluster(Settings.model_validate({"nodes": [{"name": "a", "cpus": 2, "memory_mb": 1024}]}))
    scheduler = Scheduler(cluster, Fifo(), lambda placed: None, Metrics())
    sink = Sink()

    async def not_running(task_id, reason):
        return False
    intake = Intake(store, cluster, scheduler, sink, Hooks(), not_running)
    yield store, intake, scheduler, sink
    await store.close()


SPEC = TaskSpec.model_validate({"command": ["true"], "resources": {"cpus": 1}})


async def test_a_replica_and_its_pipeline_tasks_row_commit_together(world):
    store, intake, scheduler, sink = world
    task_id, created, _ = await intake.submit(SPEC, ReplicaLink(7, "detect", "small", 4))
    assert created
    assert await store.fetch("SELECT task_id, pipeline_id, stage, variant, batch FROM pipeline_tasks") == [
        {"task_id": task_id, "pipeline_id": 7, "stage": "detect", "variant": "small", "batch": 4}]
    assert scheduler.pending_reason(task_id) is not None, "queued after the commit"
    assert sink.events[-1]["new"] == "PENDING" and sink.events[-1]["task_id"] == task_id


async def test_a_trial_is_refused_once_its_tuning_ended_and_nothing_is_written(world):
    store, intake, scheduler, _ = world
    tunings = TuningStore(store)
    tuning_id, _ = await tunings.create_tuning("t", "anonymous", {}, "fp")
    spec = SPEC.model_copy(update={"trial_config": {"x": 1}})
    task_id, _, _ = await intake.submit(spec, TrialLink(tuning_id, {"x": 1}, False))
    assert (await store.get_task(task_id))["parent_id"] == tuning_id
    assert [t["task_id"] for t in await tunings.trials(tuning_id)] == [task_id]
    await tunings.end_tuning(tuning_id, "CANCELLED", "CancelledByUser")
    with pytest.raises(ConflictError):
        await intake.submit(spec, TrialLink(tuning_id, {"x": 2}, False))
    assert len(await store.list_tasks()) == 1 and scheduler.queue_length == 1


async def test_what_can_never_fit_is_refused_before_the_commit(world):
    store, intake, scheduler, _ = world
    with pytest.raises(UnsatisfiableError):
        await intake.submit(TaskSpec.model_validate({"command": ["true"], "resources": {"cpus": 64}}))
    assert await store.list_tasks() == [] and scheduler.queue_length == 0


async def test_an_idempotent_repeat_is_not_queued_twice(world):
    store, intake, scheduler, sink = world
    spec = SPEC.model_copy(update={"idempotency_key": "k1"})
    first = await intake.submit(spec)
    again = await intake.submit(spec)
    assert again.task_id == first.task_id and first.created and not again.created
    assert scheduler.queue_length == 1 and len(sink.events) == 1


def test_the_store_has_every_verb_of_the_task_store_port():
    """``ports.TaskStore`` is what the task services are typed against: the store implements all of it."""
    verbs = [n for n, f in vars(TaskStore).items() if inspect.iscoroutinefunction(f)]
    assert len(verbs) > 15
    for name in verbs:
        port = set(inspect.signature(getattr(TaskStore, name)).parameters) - {"fields"}  # **fields: keywords
        assert port <= set(inspect.signature(getattr(Store, name)).parameters), name


async def test_default_time_limit_is_given_to_tasks_without_one_but_not_to_replicas(world):
    store, intake, scheduler, sink = world
    scheduler.default_time_limit_s = 30.0
    plain, _, _ = await intake.submit(SPEC)
    own, _, _ = await intake.submit(TaskSpec.model_validate({"command": ["true"], "time_limit_s": 5}))
    replica, _, _ = await intake.submit(SPEC, ReplicaLink(7, "detect", "small", 4))
    limits = {tid: TaskSpec.model_validate_json((await store.get_task(tid))["spec"]).time_limit_s
              for tid in (plain, own, replica)}
    assert limits == {plain: 30.0, own: 5.0, replica: None}
    assert scheduler._ids[plain].job.time_limit_s == 30.0  # the scheduler backfills with the stored limit
