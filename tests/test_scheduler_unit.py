"""The scheduler on a fixed cluster snapshot: no HTTP, no daemon, no store."""

from __future__ import annotations

from oaasd.config import Settings
from oaasd.core.policies import Fifo
from oaasd.models import TaskSpec
from oaasd.service.cluster import Cluster
from oaasd.service.metrics import Metrics
from oaasd.service.scheduler import Scheduler
from oaasd.states import Reason


def make(nodes: list[dict], max_pass: int = 1000) -> tuple[Scheduler, Cluster, list]:
    cluster = Cluster(Settings.model_validate({"nodes": nodes}))
    placed: list = []
    return Scheduler(cluster, Fifo(), placed.append, Metrics(), max_pass), cluster, placed


def request(cluster: Cluster, cpus: float, **extra):
    return cluster.request_for(TaskSpec.model_validate({"command": ["true"], "resources": {"cpus": cpus}, **extra}))


async def test_a_pass_places_in_priority_then_submission_order_and_reserves_first():
    sched, cluster, placed = make([{"name": "a", "cpus": 2, "memory_mb": 4096}])
    sched.add(1, 0, 1.0, request(cluster, 1))
    sched.add(2, 5, 2.0, request(cluster, 1))
    sched.add(3, 0, 3.0, request(cluster, 1))
    assert await sched.run_once() == 2
    assert [p.task_id for p in placed] == [2, 1], "higher priority first, then the older"
    assert set(cluster.reservations) == {1, 2}, "reserved before being handed on"
    assert cluster.table.free[0][0] == 0
    assert sched.queue_length == 1
    assert sched.pending_reason(3) == (Reason.RESOURCES.value, sched.pending_reason(3)[1])


async def test_a_refused_task_says_why_and_the_same_shape_is_not_placed_again():
    sched, cluster, placed = make([{"name": "a", "cpus": 1, "memory_mb": 1024}])
    sched.add(1, 0, 1.0, request(cluster, 1))
    sched.add(2, 0, 2.0, request(cluster, 1))
    await sched.run_once()
    reason, counts = sched.pending_reason(2)
    assert reason == Reason.RESOURCES.value and sum(counts.values()) == 1
    sched.add(3, 0, 3.0, request(cluster, 1))  # only the new one is tried; its shape is known refused
    assert await sched.run_once() == 0
    assert sched.pending_reason(3)[0] == Reason.RESOURCES.value
    cluster.release(1)
    sched.wake()
    assert await sched.run_once() == 1
    assert [p.task_id for p in placed] == [1, 2]


async def test_max_pass_bounds_the_candidates_and_discard_drops_a_task():
    sched, cluster, placed = make([{"name": "a", "cpus": 8, "memory_mb": 8192}], max_pass=2)
    for task_id in range(1, 5):
        sched.add(task_id, 0, float(task_id), request(cluster, 1))
    assert sched.discard(1) and not sched.discard(1)
    assert sched.pending_reason(1) is None
    assert await sched.run_once() == 2
    assert [p.task_id for p in placed] == [2, 3]
    sched.wake()
    assert await sched.run_once() == 1 and placed[-1].task_id == 4
    assert sched.passes == 2
