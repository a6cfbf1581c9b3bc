"""The reporter driven by hand: reported lines and an exit become committed state, then hooks.

A real store on a temporary SQLite file and a real cluster; no HTTP, no daemon, no process.
"""

from __future__ import annotations

import pytest

from oaasd.config import ReportingConfig, Settings
from oaasd.core import placement as pl
from oaasd.models import TaskSpec
from oaasd.ports import Exit, Host
from oaasd.service.attempts import Run, build_job
from oaasd.service.cluster import Cluster
from oaasd.service.events import EventHub
from oaasd.service.hooks import Hooks
from oaasd.service.metrics import Metrics
from oaasd.service.reporter import Reporter
from oaasd.states import State
from oaasd.store.db import NewTask, Store


class Queue:
    """Records what the reporter gives back to the scheduler."""

    def __init__(self) -> None:
        self.added: list[int] = []
        self.wakes = 0

    def add(self, task_id, priority, submitted_at, request) -> None:
        self.added.append(task_id)

    def discard(self, task_id) -> bool:
        return False

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
async def parts(tmp_path):
    store = Store(tmp_path / "oaasd.sqlite3")
    await store.open()
    cluster = Cluster(Settings.model_validate({"nodes": [{"name": "n0", "cpus": 2, "memory_mb": 1024}]}))
    hooks, ended, reported = Hooks(), [], []

    async def on_end(end):
        ended.append(end)

    async def on_metrics(report):
        reported.append(report)

    hooks.on_task_ended(on_end)
    hooks.on_metrics_reported(on_metrics)
    queue = Queue()
    reporter = Reporter(store, cluster, EventHub(), Metrics(), hooks, queue, ReportingConfig(max_metrics_per_attempt=2))
    yield store, cluster, reporter, queue, ended, reported
    await store.close()


async def running(store: Store, cluster: Cluster, tmp_path, **fields) -> Run:
    """A task committed, placed, reserved and RUNNING, as the runner would leave it."""
    spec = TaskSpec.model_validate({"command": ["true"], **fields})
    task_id, _ = await store.submit(NewTask.from_spec(spec))
    request = cluster.request_for(spec)
    placed = pl.place(cluster.table, request)
    cluster.reserve(task_id, request, placed)
    attempt_id, seq = await store.start_attempt(task_id, "n0", cluster.placement_to_json(placed))
    adir = tmp_path / "attempts" / str(task_id) / str(seq)
    adir.mkdir(parents=True)
    job = build_job(spec, task_id, attempt_id, seq, adir, [Host("n0", "127.0.0.1", 1)])
    return Run(task_id, attempt_id, seq, "n0", {}, spec, job)


async def test_metrics_then_result_then_exit_end_completed_and_tell_the_hooks(parts, tmp_path):
    store, cluster, reporter, queue, ended, reported = parts
    run = await running(store, cluster, tmp_path, callback_url=None)
    lines = [b'OAAS_METRIC {"step": 1, "accuracy": 0.5}', b"plain log text",
             b'OAAS_METRIC {"step": 2, "accuracy": 0.7}', b'OAAS_METRIC {"step": 3, "accuracy": 0.8}',
             b'OAAS_RESULT {"accuracy": 0.8}']
    await reporter.consume(run, lines, offset=200)
    stored = await store.task_metrics(run.task_id)
    assert [m["data"]["step"] for m in stored] == [1, 2]  # the cap of 2; the third counted, not kept
    assert run.metrics_dropped == 1 and len(reported) == 1 and len(reported[0].new) == 2
    state = await reporter.finish(run, Exit(exit_code=0))
    assert state == State.COMPLETED
    row = await store.get_task(run.task_id)
    assert row["state"] == "COMPLETED" and '"accuracy": 0.8' in row["result"]
    (attempt,) = await store.task_attempts(run.task_id)
    assert attempt["state"] == "COMPLETED" and attempt["exit_code"] == 0 and attempt["metrics_dropped"] == 1
    assert [(e.task_id, e.state) for e in ended] == [(run.task_id, State.COMPLETED)]
    assert run.task_id not in cluster.reservations and queue.added == [] and queue.wakes == 1


async def test_a_lost_attempt_with_retries_left_goes_back_to_the_queue_without_ending(parts, tmp_path):
    store, cluster, reporter, queue, ended, _ = parts
    run = await running(store, cluster, tmp_path, max_retries=1)
    state = await reporter.finish(run, Exit(exit_code=None, lost=True, reason="connection lost"))
    assert state == State.PENDING
    row = await store.get_task(run.task_id)
    assert row["state"] == "PENDING" and row["node_failures"] == 1
    assert queue.added == [run.task_id] and ended == []  # requeued, not ended: no hook, no callback
    assert run.task_id not in cluster.reservations


async def test_exit_zero_without_a_result_fails_when_one_is_required(parts, tmp_path):
    store, cluster, reporter, _, ended, _ = parts
    run = await running(store, cluster, tmp_path, require_result=True)
    assert await reporter.finish(run, Exit(exit_code=0)) == State.FAILED
    row = await store.get_task(run.task_id)
    assert (row["state"], row["reason"]) == ("FAILED", "NoResult")
    assert ended[0].state == State.FAILED


@pytest.mark.parametrize("exit_, state, reason", [
    (Exit(exit_code=3), State.FAILED, "NonZeroExitCode"),
    (Exit(exit_code=None, signal="SIGKILL"), State.FAILED, "NonZeroExitCode"),
    (Exit(exit_code=None, lost=True), State.NODE_FAIL, "NodeFail"),
    (Exit(exit_code=1, fault="BadWorkdir", reason="no such directory"), State.FAILED, "BadWorkdir"),
])
async def test_how_an_ended_attempt_is_classified(parts, tmp_path, exit_, state, reason):
    store, cluster, reporter, _, ended, _ = parts
    run = await running(store, cluster, tmp_path, max_retries=0)
    assert await reporter.finish(run, exit_) == state
    row = await store.get_task(run.task_id)
    assert (row["state"], row["reason"]) == (state.value, reason)
    assert [e.state for e in ended] == [state]
