"""The scheduler driven by hand: one pass on a fixed cluster, no HTTP, no daemon, no store."""

from __future__ import annotations

import pytest

from oaasd.config import SchedulerConfig, Settings
from oaasd.core.policies import policy_named
from oaasd.models import TaskSpec
from oaasd.service.cluster import Cluster
from oaasd.service.metrics import Metrics
from oaasd.service.scheduler import Scheduler


def cluster_of(*cores: int) -> Cluster:
    """A cluster of local nodes with these core counts (4 GB each)."""
    nodes = [{"name": f"n{i}", "cpus": c, "memory_mb": 4096} for i, c in enumerate(cores)]
    return Cluster(Settings.model_validate({"nodes": nodes}))


def spec(cpus: float = 1, priority: int = 0) -> TaskSpec:
    return TaskSpec.model_validate({"command": ["true"], "resources": {"cpus": cpus}, "priority": priority})


def scheduler_on(cluster: Cluster) -> tuple[Scheduler, list]:
    placed: list = []
    return Scheduler(cluster, policy_named("fifo"), placed.append, Metrics()), placed


async def test_one_pass_places_what_fits_and_says_why_the_rest_waits():
    cluster = cluster_of(2)
    sched, placed = scheduler_on(cluster)
    for task_id in (1, 2, 3):
        sched.add(task_id, 0, float(task_id), cluster.request_for(spec()))
    assert await sched.run_once() == 2
    assert [p.task_id for p in placed] == [1, 2]
    assert sched.queue_length == 1
    reason, counts = sched.pending_reason(3)
    assert reason == "Resources" and sum(counts.values()) == 1  # the one node, rejected for one reason
    # Nothing changed: a pass woken by nothing places nothing.
    assert await sched.run_once() == 0
    cluster.release(1)
    sched.wake()
    assert await sched.run_once() == 1
    assert [p.task_id for p in placed] == [1, 2, 3]
    assert sched.pending_reason(3) is None and sched.queue_length == 0


async def test_priority_then_submission_order_and_reservation_before_on_placed():
    cluster = cluster_of(1)
    seen: list[tuple[int, float]] = []
    sched = Scheduler(cluster, policy_named("fifo"),
                      lambda p: seen.append((p.task_id, cluster.table.free[0, 0])), Metrics())
    sched.add(10, 0, 1.0, cluster.request_for(spec()))
    sched.add(11, 5, 2.0, cluster.request_for(spec()))  # later, but higher priority
    assert await sched.run_once() == 1
    assert seen[0][0] == 11
    assert seen[0][1] == 0  # the core was reserved before the launch was asked for
    assert sched.pending_reason(10)[0] == "Resources"


async def test_a_cancelled_task_leaves_the_queue_and_is_never_placed():
    cluster = cluster_of(4)
    sched, placed = scheduler_on(cluster)
    sched.add(1, 0, 1.0, cluster.request_for(spec()))
    sched.add(2, 0, 2.0, cluster.request_for(spec()))
    assert sched.discard(1) is True and sched.discard(1) is False
    assert await sched.run_once() == 1
    assert [p.task_id for p in placed] == [2]


async def test_a_refused_shape_is_not_placed_again_until_something_changes():
    cluster = cluster_of(1)
    sched, placed = scheduler_on(cluster)
    sched.add(1, 0, 1.0, cluster.request_for(spec()))
    sched.add(2, 0, 2.0, cluster.request_for(spec()))
    assert await sched.run_once() == 1
    sched.add(3, 0, 3.0, cluster.request_for(spec()))  # only the new one is tried; its shape is known refused
    assert await sched.run_once() == 0
    assert sched.pending_reason(3)[0] == "Resources"
    cluster.release(1)
    sched.wake()
    assert await sched.run_once() == 1
    assert [p.task_id for p in placed] == [1, 2]


async def test_max_pass_bounds_the_entries_one_pass_tries():
    cluster = cluster_of(8)
    placed: list = []
    sched = Scheduler(cluster, policy_named("fifo"), placed.append, Metrics(), max_pass=2)
    for task_id in range(1, 5):
        sched.add(task_id, 0, float(task_id), cluster.request_for(spec()))
    assert await sched.run_once() == 2
    assert [p.task_id for p in placed] == [1, 2]
    sched.configure(policy_named("fifo"), 10)  # a reload of [scheduler]: a full pass follows
    assert await sched.run_once() == 2 and sched.passes == 2


def limited(cpus: float = 1, limit: float | None = None, **extra) -> TaskSpec:
    return TaskSpec.model_validate({"command": ["true"], "resources": {"cpus": cpus}, "time_limit_s": limit, **extra})


async def test_backfill_holds_the_wide_task_and_keeps_its_reservation_while_only_submissions_come():
    cluster = cluster_of(2)
    placed: list = []
    sched = Scheduler(cluster, policy_named("backfill"), placed.append, Metrics())
    for task_id, s in ((1, limited(1, 100)), (2, limited(1, 200))):
        sched.add(task_id, 0, float(task_id), cluster.request_for(s), s)
    assert await sched.run_once() == 2
    cluster.release(1)  # task 1 ended: one core free until task 2's limit runs out
    sched.wake()
    wide, small = limited(2, 10), limited(1, 500)
    sched.add(3, 0, 3.0, cluster.request_for(wide), wide)
    sched.add(4, 0, 4.0, cluster.request_for(small), small)
    assert await sched.run_once() == 0
    assert sched.pending_reason(3)[0] == "Resources" and sched.pending_reason(4)[0] == "Reservation"
    (held,) = sched.reservations
    assert held.task_id == 3 and held.start_at == pytest.approx(sched.running[2].started_at + 200)
    short = limited(1, 1)  # ends long before the reservation: it may take the free core
    sched.add(5, 0, 5.0, cluster.request_for(short), short)
    assert await sched.run_once() == 1 and placed[-1].task_id == 5
    assert [r.task_id for r in sched.reservations] == [3]
    # A requeue that brings no spec keeps the limits the scheduler knew.
    cluster.release(5)
    sched.wake()
    await sched.run_once()
    sched.add(5, 0, 5.0, cluster.request_for(short))
    assert sched._ids[5].job.time_limit_s == 1


async def test_a_reload_switches_policy_and_priority_factors_are_shown():
    cluster = cluster_of(1)
    sched, placed = scheduler_on(cluster)
    for task_id, user in ((1, "a"), (2, "b"), (3, "vip")):
        s = TaskSpec.model_validate({"command": ["true"], "user": user})
        sched.add(task_id, 0, float(task_id), cluster.request_for(s), s)
    assert sched.priority_factors(1) is None  # not under priority
    cfg = SchedulerConfig(policy="priority", priority_weights={"age": 0, "fair_share": 0, "priority": 0, "qos": 1},
                          qos={"vip": 1.0})
    sched.configure(policy_named("priority", cfg), 1000)
    assert [e.task_id for e in sched.queue][0] == 3
    assert await sched.run_once() == 1 and placed[-1].task_id == 3
    factors = sched.priority_factors(1)
    assert set(factors) == {"age", "fair_share", "size", "priority", "qos", "score"} and factors["qos"] == 0
    ledger = sched.policy.ledger
    sched.configure(policy_named("priority", cfg), 1000)  # the same policy again (SIGHUP): usage is kept
    assert sched.policy.ledger is ledger
