"""The reporter on a fixed exit: real store on a tmp SQLite file, no HTTP, no daemon, no process."""

from __future__ import annotations

import pytest

from oaasd.config import Settings
from oaasd.models import TaskSpec
from oaasd.ports import Exit, Host
from oaasd.service.attempts import Run, build_job
from oaasd.service.cluster import Cluster
from oaasd.service.hooks import Hooks
from oaasd.service.metrics import Metrics
from oaasd.service.reporter import Reporter
from oaasd.states import Reason, State
from oaasd.store.db import NewTask, Store


class Sink:
    def __init__(self):
        self.events = []

    def publish(self, event):
        self.events.append(event)


class Queue:
    def __init__(self):
        self.added, self.wakes = [], 0

    def add(self, task_id, priority, submitted_at, request):
        self.added.append(task_id)

    def discard(self, task_id):
        return False

    def wake(self):
        self.wakes += 1


@pytest.fixture
async def world(tmp_path):
    store = Store(tmp_path / "oaasd.sqlite3")
    await store.open()
    settings = Settings.model_validate({"server": {"state_dir": str(tmp_path)}})
    hooks, ended, reported = Hooks(), [], []

    async def on_end(end):
        ended.append(end)

    async def on_metrics(report):
        reported.append(report)
    hooks.on_task_ended(on_end)
    hooks.on_metrics_reported(on_metrics)
    cluster, sink, queue, forgotten = Cluster(settings), Sink(), Queue(), []
    reporter = Reporter(store, cluster, sink, Metrics(), hooks, queue, settings.reporting, forgotten.append)
    yield {"store": store, "reporter": reporter, "ended": ended, "reported": reported, "sink": sink,
           "queue": queue, "forgotten": forgotten, "tmp": tmp_path}
    await store.close()


async def running(world, **spec) -> Run:
    spec = TaskSpec.model_validate({"command": ["true"], **spec})
    task_id, _ = await world["store"].submit(NewTask.from_spec(spec))
    attempt_id, seq = await world["store"].start_attempt(task_id, "local", {"hosts": [["local", 1]]})
    job = build_job(spec, task_id, attempt_id, seq, world["tmp"] / "attempts" / str(task_id) / str(seq),
                    [Host("local", "127.0.0.1", 1)])
    return Run(task_id, attempt_id, seq, "local", {"hosts": [["local", 1]]}, spec, job)


async def test_metrics_are_stored_with_the_offset_then_announced(world):
    run = await running(world)
    lines = [b'OAAS_METRIC {"step": 1, "loss": 0.5}\n', b"noise\n", b'OAAS_RESULT {"loss": 0.1}\n']
    await world["reporter"].consume(run, lines, 120)
    assert [m["data"] for m in await world["store"].task_metrics(run.task_id)] == [{"step": 1, "loss": 0.5}]
    (attempt,) = await world["store"].task_attempts(run.task_id)
    assert (attempt["stdout_offset"], attempt["metrics_stored"]) == (120, 1)
    (report,) = world["reported"]
    assert report.task_id == run.task_id and list(report.new) == [{"step": 1, "loss": 0.5}] and not report.stopping
    assert [e["type"] for e in world["sink"].events] == ["metric"]
    assert run.report.result == {"loss": 0.1}


async def test_exit_zero_with_a_result_completes_and_the_hooks_hear_it(world):
    run = await running(world, callback_url="http://127.0.0.1:9/cb")
    run.report.result = {"accuracy": 0.9}
    assert await world["reporter"].finish(run, Exit(exit_code=0)) == State.COMPLETED
    row = await world["store"].get_task(run.task_id)
    assert (row["state"], row["reason"]) == ("COMPLETED", Reason.EXITED.value)
    (end,) = world["ended"]
    assert (end.task_id, end.state, end.result, end.callback_url) == (run.task_id, State.COMPLETED,
                                                                      {"accuracy": 0.9}, "http://127.0.0.1:9/cb")
    assert world["forgotten"] == [run] and run.done.is_set()
    assert world["sink"].events[-1]["new"] == "COMPLETED" and world["queue"].wakes == 1


async def test_a_lost_attempt_with_retries_left_goes_back_to_the_queue(world):
    run = await running(world, max_retries=1)
    assert await world["reporter"].finish(run, Exit(exit_code=None, lost=True, reason="gone")) == State.PENDING
    row = await world["store"].get_task(run.task_id)
    assert (row["state"], row["reason"], row["node_failures"]) == ("PENDING", Reason.REQUEUED.value, 1)
    assert world["queue"].added == [run.task_id] and world["ended"] == []


@pytest.mark.parametrize("exit_, state, reason", [
    (Exit(exit_code=0), State.FAILED, Reason.NO_RESULT),
    (Exit(exit_code=3), State.FAILED, Reason.NON_ZERO_EXIT),
    (Exit(exit_code=None, lost=True), State.NODE_FAIL, Reason.NODE_FAIL),
    (Exit(exit_code=1, fault=Reason.BAD_WORKDIR.value), State.FAILED, Reason.BAD_WORKDIR),
])
async def test_how_an_attempt_ended_is_classified(world, exit_, state, reason):
    run = await running(world, max_retries=0)
    assert await world["reporter"].finish(run, exit_) == state
    row = await world["store"].get_task(run.task_id)
    assert (row["state"], row["reason"]) == (state.value, reason.value)
    assert [e.state for e in world["ended"]] == [state]
