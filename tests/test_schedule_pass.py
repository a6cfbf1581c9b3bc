"""The pure scheduling pass, ``decide``: fifo as before, EASY backfill table by table, and the
property that a backfilled job never delays the reservation (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oaasd.config import SchedulerConfig
from oaasd.core import placement as pl
from oaasd.core.jobs import Job, Running
from oaasd.core.policies import POLICIES, policy_named
from oaasd.core.schedule import decide

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def table_of(*cpus: int) -> pl.NodeTable:
    return pl.NodeTable.from_specs([{"name": f"n{i}", "cpus": c, "memory_mb": 4096} for i, c in enumerate(cpus)])


def job(task_id: int, cpus: float = 1, limit: float | None = None, workers: int = 1, priority: int = 0) -> Job:
    return Job(task_id, priority, float(task_id), pl.Request(cpu_milli=round(cpus * 1000), workers=workers),
               time_limit_s=limit)


def run_on(table: pl.NodeTable, task_id: int, cpus: float, started_at: float, limit: float | None) -> Running:
    """A running task, reserved on ``table`` as the daemon's cluster would hold it."""
    request = pl.Request(cpu_milli=round(cpus * 1000))
    placed = pl.place(table, request)
    pl.reserve(table, request, placed)
    return Running(task_id, request, placed, started_at, limit)


def started(result) -> list[int]:
    return [j.task_id for j, _ in result.started]


# The starvation case of issue 15: a 2-core node, two 1-cpu tasks running (ending at 100 and 200),
# a 2-cpu task next, then small ones. One core is free at `now` when the first has ended.
CASES = [
    # (name, policy, small limit, expected starts, expected reason of the wide task, of a small one)
    ("fifo lets a small one overtake", "fifo", 50.0, [2], "Resources", "Resources"),
    ("backfill: ends before the reservation", "backfill", 50.0, [2], "Resources", "Resources"),
    ("backfill: would end after it, held", "backfill", 150.0, [], "Resources", "Reservation"),
    ("backfill: no limit, held", "backfill", None, [], "Resources", "Reservation"),
]


@pytest.mark.parametrize("name, policy, limit, starts, wide_reason, small_reason", CASES, ids=[c[0] for c in CASES])
def test_the_wide_task_is_not_overtaken_under_backfill(name, policy, limit, starts, wide_reason, small_reason):
    table = table_of(2)
    running = [run_on(table, 90, 1, 0.0, 200.0)]  # the other one (ended at 100) freed its core
    queue = [job(1, cpus=2, limit=100.0), *(job(i, limit=limit) for i in range(2, 8))]
    result = decide(queue, running, table, policy_named(policy), now=100.0)
    assert started(result) == starts
    assert result.reasons[1][0] == wide_reason
    assert result.reasons[3][0] == small_reason
    if policy == "backfill":
        (held,) = result.reservations
        assert held.task_id == 1 and held.start_at == 200.0
    else:
        assert result.reservations == []


def test_fifo_is_place_queue_in_priority_then_submission_order():
    table = table_of(2, 1)
    queue = [job(1), job(2, cpus=3), job(3, priority=5), job(4), job(5)]
    result = decide(queue, [], table, policy_named("fifo"), now=0.0)
    ordered = [queue[2], queue[0], queue[1], queue[3], queue[4]]
    expected = pl.place_queue(table, [j.request for j in ordered])
    assert started(result) == [j.task_id for j, p in zip(ordered, expected) if isinstance(p, pl.Placement)]
    assert [p.hosts for _, p in result.started] == [p.hosts for p in expected if isinstance(p, pl.Placement)]
    assert result.reasons[2][0] == result.reasons[5][0] == "Resources"


def test_a_job_fitting_beside_the_reservation_starts_without_a_limit():
    table = table_of(4, 2)  # n0: 4 cores, n1: 2 cores; n1 fully busy until 300
    running = [run_on(table, 90, 2, 0.0, 300.0), run_on(table, 91, 3, 0.0, 500.0)]
    # The head wants 2 workers of 2 cpus spread: at 300 n1 frees, n0 has 1 free + 0 -> only at 500.
    head = Job(1, 0, 1.0, pl.Request(cpu_milli=2000, workers=2, spread=True), time_limit_s=10.0)
    queue = [head, job(2, cpus=1, limit=None)]
    result = decide(queue, running, table, policy_named("backfill"), now=10.0)
    (held,) = result.reservations
    assert held.start_at == 500.0  # n0 needs 91's cores back
    # At 500 the head takes 2 cores of n0 and both of n1: n0 keeps 2 spare cores, so the 1-cpu job
    # without a limit fits beside it on n0's core that is free now.
    assert started(result) == [2]


def test_a_head_that_cannot_fit_even_on_an_idle_cluster_holds_nothing():
    table = pl.NodeTable.from_specs([{"name": "n0", "cpus": 2, "memory_mb": 1, "schedulable": False},
                                     {"name": "n1", "cpus": 1, "memory_mb": 1}])
    result = decide([job(1, cpus=2), job(2, cpus=1)], [], table, policy_named("backfill"), now=0.0)
    assert result.reservations == [] and started(result) == [2]


def test_a_running_task_without_a_limit_makes_the_reservation_time_unknown():
    table = table_of(2)
    running = [run_on(table, 90, 1, 0.0, None)]
    result = decide([job(1, cpus=2), job(2, limit=5.0)], running, table, policy_named("backfill"), now=1.0)
    (held,) = result.reservations
    assert math.isinf(held.start_at)
    assert started(result) == [] and result.reasons[2][0] == "Reservation"


def test_default_time_limit_lets_a_job_without_one_backfill():
    table = table_of(2)
    running = [run_on(table, 90, 1, 0.0, 200.0)]
    queue = [job(1, cpus=2), job(2, limit=None)]
    policy = policy_named("backfill")
    assert started(decide(queue, running, table, policy, now=100.0)) == []
    assert started(decide(queue, running, table, policy, now=100.0, default_time_limit_s=60.0)) == [2]


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="fifo, backfill, sjf, fair, priority"):
        policy_named("lottery")
    assert {"fifo", "backfill"} <= set(POLICIES)


# ---- the reservation is never delayed by a backfilled job (hypothesis) ----------------------
@st.composite
def scenarios(draw):
    """A few nodes, some running tasks with or without limits, a queue of mixed jobs."""
    n = draw(st.integers(1, 4))
    table = table_of(*[draw(st.integers(1, 4)) for _ in range(n)])
    running = []
    for t in range(draw(st.integers(0, 6))):
        cpus = draw(st.integers(1, 2))
        request = pl.Request(cpu_milli=cpus * 1000)
        placed = pl.place(table, request)
        if isinstance(placed, pl.Placement):
            pl.reserve(table, request, placed)
            limit = draw(st.one_of(st.none(), st.sampled_from([10.0, 20.0, 40.0, 80.0])))
            running.append(Running(100 + t, request, placed, 0.0, limit))
    queue = []
    for i in range(draw(st.integers(1, 10))):
        workers = draw(st.integers(1, 3))
        queue.append(Job(i, draw(st.integers(0, 1)), float(i),
                         pl.Request(cpu_milli=draw(st.integers(1, 3)) * 1000, workers=workers,
                                    spread=draw(st.booleans())),
                         time_limit_s=draw(st.one_of(st.none(), st.sampled_from([5.0, 15.0, 30.0, 100.0])))))
    return table, running, queue, draw(st.sampled_from([1.0, 5.0]))


def assert_reservation_kept(table, running, queue, now, result) -> None:
    """Reserve the pass's starts on ``table``, then check the head's placement fits at its start."""
    for j, placed in result.started:  # every start fits the table, in order
        pl.reserve(table, j.request, placed)
    if not result.reservations:
        return
    (held,) = result.reservations
    ordered = policy_named("backfill").order(queue, running, now)
    rank = {j.task_id: i for i, j in enumerate(ordered)}
    head = ordered[rank[held.task_id]]
    # At the reservation's start: what started ahead of the head counts as running; of what started
    # behind it (backfilled), only a job whose limit ended by then is gone. The head's placement
    # must fit what is left. (inf: known only once those without a limit ended, and they have.)
    at, t = held.start_at, table.copy()
    for r in running:
        if r.ends_at <= at:
            pl.release(t, r.request, r.placement)
    for j, placed in result.started:
        ends = math.inf if j.time_limit_s is None else now + j.time_limit_s
        if ends <= at and (rank[j.task_id] < rank[head.task_id] or ends < math.inf):
            pl.release(t, j.request, placed)
    pl.reserve(t, head.request, held.placement)  # raises ValueError when something took its rows


@SETTINGS
@given(scenarios(), st.integers(0, 3))
def test_no_backfilled_job_holds_what_the_reservation_needs_at_its_start(scenario, later):
    table, running, queue, now = scenario
    policy = policy_named("backfill")
    result = decide(queue, running, table, policy, now)
    assert_reservation_kept(table, running, queue, now, result)
    # A next pass with only new jobs (nothing freed) keeps the reservation through ``hint``: still kept.
    running = running + [Running(j.task_id, j.request, p, now, j.time_limit_s) for j, p in result.started]
    started = {j.task_id for j, _ in result.started}
    queue = [j for j in queue if j.task_id not in started]
    queue += [Job(50 + i, 0, 50.0 + i, pl.Request(cpu_milli=1000), time_limit_s=[None, 2.0, 50.0][i % 3])
              for i in range(later)]
    again = decide(queue, running, table, policy, now + 1, hint=result.reservations)
    assert_reservation_kept(table, running, queue, now + 1, again)


@SETTINGS
@given(scenarios(), st.integers(0, 40))
def test_fifo_starts_exactly_what_one_place_queue_over_the_ordered_queue_places(scenario, extra):
    table, _, queue, _ = scenario
    queue = queue + [Job(100 + i, 0, 100.0 + i, pl.Request(cpu_milli=1000 * (1 + i % 3))) for i in range(extra)]
    ordered = policy_named("fifo").order(queue, [], 0.0)
    expected = pl.place_queue(table, [j.request for j in ordered])
    result = decide(queue, [], table, policy_named("fifo"), 0.0)
    assert [(j.task_id, p.hosts) for j, p in result.started] == [
        (j.task_id, p.hosts) for j, p in zip(ordered, expected) if isinstance(p, pl.Placement)]


# ---- the order of each policy on small queues -----------------------------------------------
def order_of(policy, queue, running=(), now=100.0) -> list[int]:
    return [j.task_id for j in policy.order(queue, list(running), now)]


def user_job(task_id: int, user: str, cpus: float = 1, priority: int = 0, est: float | None = None,
             limit: float | None = None, submitted_at: float | None = None) -> Job:
    return Job(task_id, priority, float(task_id) if submitted_at is None else submitted_at,
               pl.Request(cpu_milli=round(cpus * 1000)), user, limit, est)


ORDERS = [
    ("fifo: priority then submission", "fifo",
     [user_job(1, "a"), user_job(2, "a", priority=5), user_job(3, "b")], [2, 1, 3]),
    ("sjf: shortest estimate first", "sjf",
     [user_job(1, "a", est=300), user_job(2, "a", est=10), user_job(3, "a", est=60)], [2, 3, 1]),
    ("sjf: time limit when no estimate, neither last", "sjf",
     [user_job(1, "a"), user_job(2, "a", limit=50), user_job(3, "a", est=100)], [2, 3, 1]),
    ("sjf: own priority still first", "sjf",
     [user_job(1, "a", est=300, priority=1), user_job(2, "a", est=10)], [1, 2]),
]


@pytest.mark.parametrize("name, policy, queue, expected", ORDERS, ids=[o[0] for o in ORDERS])
def test_static_policy_orders(name, policy, queue, expected):
    assert order_of(policy_named(policy), queue) == expected
    p = policy_named(policy)
    assert [j.task_id for j in sorted(queue, key=p.key)] == expected  # the key the queue is kept by


def test_fair_puts_the_user_with_less_recent_usage_first_and_forgets_with_the_half_life():
    table = table_of(8)
    fair = policy_named("fair", SchedulerConfig(half_life_s=100.0))
    heavy = [Running(90 + i, pl.Request(cpu_milli=1000), pl.place(table, pl.Request(cpu_milli=1000)), 0.0, None,
                     user="a") for i in range(4)]
    queue = [user_job(1, "a"), user_job(2, "b"), user_job(3, "a")]
    assert order_of(fair, queue, heavy, now=0.0) == [1, 2, 3]  # no usage yet: submission order
    assert order_of(fair, queue, heavy, now=50.0) == [2, 1, 3]  # a ran 4 cpus for 50 s
    used = fair.ledger.usage["a"]
    assert order_of(fair, queue, [], now=150.0) == [2, 1, 3]
    assert fair.ledger.usage["a"] == pytest.approx(used / 2)  # one half-life later, half of it
    fair_b = policy_named("fair", SchedulerConfig(half_life_s=100.0, shares={"a": 1000.0}))
    light = Running(99, pl.Request(cpu_milli=1000), heavy[0].placement, 0.0, None, user="b")
    order_of(fair_b, queue, [*heavy, light], now=0.0)
    assert order_of(fair_b, queue, [*heavy, light], now=50.0) == [1, 3, 2]  # per share, a used less than b


def test_priority_weighs_age_own_priority_size_and_qos():
    cfg = SchedulerConfig(priority_weights={"age": 0, "fair_share": 0, "priority": 0, "size": 0, "qos": 1},
                          qos={"vip": 1.0})
    queue = [user_job(1, "a"), user_job(2, "vip"), user_job(3, "a")]
    assert order_of(policy_named("priority", cfg), queue) == [2, 1, 3]
    by_age = policy_named("priority", SchedulerConfig(priority_weights={"age": 1, "fair_share": 0, "priority": 0},
                                                      max_age_s=100.0))
    aged = [user_job(1, "a", submitted_at=90.0), user_job(2, "a", submitted_at=10.0)]
    assert order_of(by_age, aged) == [2, 1]
    f = by_age.factors(aged[1], 100.0)
    assert f["age"] == pytest.approx(0.9) and set(f) == {"age", "fair_share", "size", "priority", "qos"}
    small_first = policy_named("priority", SchedulerConfig(priority_weights={"age": 0, "fair_share": 0,
                                                                              "priority": 0, "size": 1}))
    assert order_of(small_first, [user_job(1, "a", cpus=4), user_job(2, "a", cpus=1)]) == [2, 1]
    own = policy_named("priority", SchedulerConfig(priority_weights={"age": 0, "fair_share": 0, "priority": 1}))
    assert order_of(own, [user_job(1, "a", priority=-3), user_job(2, "a", priority=7)]) == [2, 1]
    # the own-priority factor does not depend on what else is queued: a new extreme changes no other key
    alone = own.key(user_job(1, "a", priority=1))
    own.order([user_job(1, "a", priority=1), user_job(5, "a", priority=1000)], [], 0.0)
    assert own.key(user_job(1, "a", priority=1)) == alone
    assert [own.factors(user_job(1, "a", priority=p))["priority"] for p in (-10, 0, 10)] == [0.25, 0.5, 0.75]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(-3, 3), st.integers(1, 4), st.floats(0, 99)),
                min_size=1, max_size=8),
       st.dictionaries(st.sampled_from(["age", "fair_share", "size", "priority", "qos"]), st.floats(-5, 5)))
def test_the_priority_key_is_the_weighted_sum_of_the_factors_shown(jobs, weights):
    p = policy_named("priority", SchedulerConfig(priority_weights=weights, qos={"b": 0.5}, max_age_s=50.0))
    queue = [user_job(i, u, cpus=c, priority=pr, submitted_at=t) for i, (u, pr, c, t) in enumerate(jobs)]
    p.ledger.usage = {"a": 5000.0}
    p.order(queue, [], 100.0)
    for j in queue:
        assert -p.key(j)[0] == pytest.approx(p.score(j), abs=1e-9)
