"""Table-driven tests of the placement core: table, checks, scorers, select, reserve, passes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from oaasd.core import placement as pl
from oaasd.core.placement import (
    Placement,
    Refusal,
    Request,
    Shortfall,
    checks,
    cores,
    select,
)
from oaasd.core.placement import scoring as sc
from oaasd.core.placement.batch import assign_batch


def table_of(*specs: dict) -> pl.NodeTable:
    return pl.NodeTable.from_specs(specs)


def four_nodes() -> pl.NodeTable:
    """n0 idle zone=a; n1 zone=b with 2 cpus and 1 GPU in use; n2 drained; n3 arm with small cores."""
    t = table_of(
        {"name": "n0", "cpus": 4, "memory_mb": 8000, "labels": {"zone": "a"}},
        {"name": "n1", "cpus": 8, "memory_mb": 16000, "gpus": 2, "labels": {"zone": "b"}},
        {"name": "n2", "cpus": 2, "memory_mb": 4000, "labels": {"zone": "a"}, "schedulable": False},
        {"name": "n3", "cpus": 3, "core_milli": [1000, 1000, 500, 500], "memory_mb": 32000,
         "gpus": 1, "labels": {"zone": "b", "arch": "arm"}},
    )
    t.free[1] = [6000, 12000, 1000]
    t.gpu_free[1] = [0, 1000]  # device 0 in use
    return t


def snapshot(t: pl.NodeTable) -> tuple[np.ndarray, np.ndarray]:
    return t.free.copy(), t.core_free.copy()


def assert_same(t: pl.NodeTable, snap: tuple[np.ndarray, np.ndarray]) -> None:
    assert np.array_equal(t.free, snap[0]) and np.array_equal(t.core_free, snap[1])


# ---------------------------------------------------------------- table


def test_from_specs_fills_arrays_in_resource_order():
    t = four_nodes()
    assert pl.RESOURCES == ("cpu_milli", "memory_mb", "gpu_milli")
    assert t.names == ["n0", "n1", "n2", "n3"]
    assert t.total.tolist() == [[4000, 8000, 0], [8000, 16000, 2000], [2000, 4000, 0], [3000, 32000, 1000]]
    assert t.total.dtype == np.int64 and t.core_total.dtype == np.int64
    assert t.core_total.shape == (4, 8)  # the widest node has 8 cores; others are padded with 0
    assert t.core_total[3].tolist() == [1000, 1000, 500, 500, 0, 0, 0, 0]
    assert t.schedulable.tolist() == [True, True, False, True]
    assert t.label_vocab == ("arch=arm", "zone=a", "zone=b")
    assert t.labels.tolist() == [[False, True, False], [False, False, True],
                                 [False, True, False], [True, False, True]]


@pytest.mark.parametrize("cpus, cores, expect", [
    (2.5, None, [1000, 1000, 500]),
    (0.25, None, [250]),
    (2, [1500, 500], [1500, 500]),
    (None, [700, 700], [700, 700]),
])
def test_from_specs_core_capacity(cpus, cores, expect):
    t = table_of({"name": "x", "cpus": cpus, "core_milli": cores, "memory_mb": 10})
    assert t.core_total[0, : len(expect)].tolist() == expect
    assert t.total[0, 0] == sum(expect)


@pytest.mark.parametrize("specs, message", [
    ([{"name": "x", "cpus": 3, "core_milli": [1000, 1000]}], "core_milli sums"),
    ([{"name": "x", "cpus": 1}, {"name": "x", "cpus": 1}], "unique"),
    ([{"name": "x"}], "cpus or core_milli"),
])
def test_from_specs_rejects_bad_specs(specs, message):
    with pytest.raises(ValueError, match=message):
        pl.NodeTable.from_specs(specs)


def test_from_specs_takes_objects_and_empty_lists():
    t = pl.NodeTable.from_specs([SimpleNamespace(name="o", cpus=1.0, memory_mb=512, gpus=None,
                                                 labels=None, core_milli=None, schedulable=True)])
    assert t.total.tolist() == [[1000, 512, 0]]
    empty = pl.NodeTable.from_specs([])
    assert isinstance(pl.place(empty, Request(cpu_milli=1)), Refusal)
    assert isinstance(pl.could_ever_fit(empty, Request(cpu_milli=1)), Refusal)


def test_copy_is_independent_and_totals_are_read_only():
    t = four_nodes()
    c = t.copy()
    c.free[0, 0] = 0
    c.core_free[0, 0] = 0
    c.schedulable[0] = False
    assert t.free[0, 0] == 4000 and t.core_free[0, 0] == 1000 and t.schedulable[0]
    with pytest.raises(ValueError):
        t.total[0, 0] = 1
    with pytest.raises(ValueError):
        t.configured.free[0, 0] = 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(cpu_milli=1000, cores=(500, 600)), "sum to cpu_milli"),
    (dict(cores=(500, 0)), "positive"),
    (dict(), "some cpu_milli"),
    (dict(cpu_milli=1, workers=0), "workers"),
    (dict(memory_mb=-1, cpu_milli=1), ">= 0"),
])
def test_request_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Request(**kwargs)


def test_request_cores_set_cpu_milli():
    r = Request(cores=(300, 700))
    assert r.cpu_milli == 1000 and r.shares.tolist() == [700, 300]
    assert r.demand.tolist() == [1000, 0, 0]


# ---------------------------------------------------------------- checks

CHECK_CASES = [
    # (reason, request, nodes failing)
    ("NodeNotSchedulable", Request(cpu_milli=1), [False, False, True, False]),
    ("LabelMismatch", Request(cpu_milli=1), [False, False, False, False]),
    ("LabelMismatch", Request(cpu_milli=1, labels={"zone": "b"}), [True, False, True, False]),
    ("LabelMismatch", Request(cpu_milli=1, labels={"zone": "b", "arch": "arm"}), [True, True, True, False]),
    ("LabelMismatch", Request(cpu_milli=1, labels={"zone": "z"}), [True, True, True, True]),
    ("NodeNotIdle", Request(cpu_milli=1), [False, False, False, False]),
    ("NodeNotIdle", Request(cpu_milli=1, exclusive=True), [False, True, False, False]),
    ("InsufficientCpu", Request(cpu_milli=4000), [False, False, True, True]),
    ("InsufficientCpu", Request(cpu_milli=6001), [True, True, True, True]),
    ("InsufficientMemory", Request(memory_mb=12000), [True, False, True, False]),
    ("InsufficientGpus", Request(cpu_milli=1, gpu_milli=1000), [True, False, True, False]),
    ("InsufficientGpus", Request(cpu_milli=1, gpu_milli=2000), [True, True, True, True]),
    ("InsufficientCores", Request(cpu_milli=1), [False, False, False, False]),
    ("InsufficientCores", Request(cores=(1000, 1000)), [False, False, False, False]),
    ("InsufficientCores", Request(cores=(1000, 1000, 1000)), [False, False, True, True]),
    ("InsufficientCores", Request(cores=(600, 600, 600)), [False, False, True, True]),
    ("InsufficientCores", Request(cores=(500, 500, 500, 500, 500, 500)), [True, False, True, True]),  # distinct
    ("InsufficientCores", Request(cores=(1000, 500, 500, 500)), [False, False, True, False]),
    ("InsufficientCores", Request(cores=(1001,)), [True, True, True, True]),
]


@pytest.mark.parametrize("reason, request_, expect", CHECK_CASES)
def test_check_marks_failing_nodes(reason, request_, expect):
    t = four_nodes()
    assert pl.CHECKS[reason](t, request_).tolist() == expect
    assert pl.passing(t, request_).tolist() == (~pl.failures(t, request_).any(0)).tolist()


@pytest.mark.parametrize("request_, static, cand", [
    # (request, static_rows: could ever match, candidates: pass every check now)
    (Request(cpu_milli=1, gpu_milli=1000), [1, 3], [1, 3]),
    (Request(cpu_milli=1, labels={"zone": "a"}), [0, 2], [0]),
    (Request(cpu_milli=1, gpu_milli=1000, labels={"zone": "b"}), [1, 3], [1, 3]),
    (Request(cpu_milli=4000, gpu_milli=1000, labels={"zone": "b"}), [1, 3], [1]),
    (Request(memory_mb=1, gpu_milli=1000, labels={"arch": "arm"}), [3], [3]),
    (Request(cpu_milli=1, gpu_milli=1000, labels={"zone": "a"}), [], []),
    (Request(cpu_milli=1, labels={"zone": "z"}), [], []),
])
def test_static_rows_narrow_and_candidates_check_the_rest(request_, static, cand):
    t = four_nodes()
    assert checks.static_rows(t, request_).tolist() == static
    assert checks.candidates(t, request_).tolist() == cand
    t.schedulable[:] = False  # state and use are read per call; the static rows never change
    t.free[:] = 0
    assert checks.static_rows(t, request_).tolist() == static and checks.candidates(t, request_).tolist() == []


def test_check_reason_codes_are_camel_case_and_ordered():
    assert list(pl.CHECKS) == ["NodeNotSchedulable", "LabelMismatch", "NodeNotIdle", "InsufficientCpu",
                               "InsufficientMemory", "InsufficientGpus", "InsufficientCores"]


def test_refusal_counts_first_failing_check():
    t = four_nodes()
    got = pl.place(t, Request(cpu_milli=7000, gpu_milli=1000, labels={"zone": "b"}))
    assert isinstance(got, Refusal)
    # n0 fails labels first; n1 cpu (and not gpus); n2 is drained (and mismatched); n3 cpu then gpus.
    assert got.counts == {"NodeNotSchedulable": 1, "LabelMismatch": 1, "InsufficientCpu": 2}
    assert got.reason == "Resources" and got.nodes == 4 and got.workers == 1 and got.slots == 0
    assert got.detail == (Shortfall("cpu_milli", 7000, 6000, 8000),)


def test_refusal_says_req_node_not_avail_when_matching_nodes_are_down():
    t = four_nodes()
    t.schedulable[[1, 3]] = False
    got = pl.place(t, Request(cpu_milli=1, labels={"zone": "b"}))
    assert got.reason == "ReqNodeNotAvail"
    assert got.counts == {"NodeNotSchedulable": 3, "LabelMismatch": 1}


# ---------------------------------------------------------------- scorers


def three_nodes() -> pl.NodeTable:
    t = table_of({"name": "A", "cpus": 4, "memory_mb": 8000},
                 {"name": "B", "cpus": 8, "memory_mb": 16000, "gpus": 2},
                 {"name": "C", "cpus": 2, "memory_mb": 2000})
    t.free[1] = [2000, 4000, 2000]
    return t


SCORE_CASES = [
    # (fit, weights, expected scores of A, B, C for one worker of 1 cpu + 2 GB, chosen node)
    ("first", None, [1, 1, 1], 0),
    ("worst", None, [0.25, 1.25 / 3, 0.125 / 3], 1),
    ("best", None, [0.75, 1 - 1.25 / 3, 1 - 0.125 / 3], 2),
    ("least_allocated", None, [0.75, 1.25 / 3, 0.25], 0),
    ("most_allocated", None, [0.25, 1 - 1.25 / 3, 0.75], 2),
    ("balanced", None, [1.0, 1 - np.sqrt(((7 / 24) ** 2 * 2 + (7 / 12) ** 2) / 3), 0.75], 0),
    ("best", [1, 0, 0], [0.625, 0.875, 0.875], 1),  # tie between B and C: node order
    ("least_allocated", [0, 1, 0], [0.75, 0.125, 0.0], 0),
    ("most_allocated", [0, 0, 1], [0.0, 0.0, 0.0], 0),  # only B has GPUs and uses none
    ("worst", [0, 0, 0], [0.0, 0.0, 0.0], 0),
]


@pytest.mark.parametrize("fit, weights, expect, chosen", SCORE_CASES)
def test_scorer_values_and_choice(fit, weights, expect, chosen):
    t = three_nodes()
    r = Request(cpu_milli=1000, memory_mb=2000)
    w = None if weights is None else np.array(weights, float)
    got = pl.SCORERS[fit](t, r, w)
    assert got.shape == (3,) and got.dtype == np.float64
    assert got == pytest.approx(expect)
    assert pl.place(t, r, fit, w).hosts == ((chosen, 1),)


def test_scorer_names_and_weight_validation():
    assert set(pl.SCORERS) == {"first", "best", "worst", "least_allocated", "most_allocated", "balanced"}
    t = three_nodes()
    with pytest.raises(ValueError, match="unknown fit"):
        pl.place(t, Request(cpu_milli=1), "fastest")
    for bad in ([1, -1, 1], [1, 1], [np.nan, 1, 1]):
        with pytest.raises(ValueError, match="weights"):
            sc.best(t, Request(cpu_milli=1), np.array(bad, float))


def test_rank_partition_and_sort_agree_with_ties():
    rng = np.random.default_rng(7)
    for m, k in [(5, 1), (5, 3), (600, 8), (2000, 8), (2000, 9), (2000, 700), (300, 400), (3, 8)]:
        idx = np.sort(rng.choice(10_000, m, replace=False))
        score = rng.integers(0, 5, m) / 4.0  # many ties
        order = sorted(range(m), key=lambda i: (-score[i], idx[i]))[:k]
        assert select.rank(idx, score, k).tolist() == idx[order].tolist()


# ---------------------------------------------------------------- select


def identical(n: int, cpus: int = 4) -> pl.NodeTable:
    return pl.NodeTable.from_specs([{"name": f"n{i}", "cpus": cpus, "memory_mb": 1000} for i in range(n)])


@pytest.mark.parametrize("cap, k, pack, spread", [
    ([4, 4, 4], 6, [4, 2, 0], [2, 2, 2]),
    ([4, 4, 4], 4, [4, 0, 0], [2, 1, 1]),
    ([1, 3, 3], 5, [1, 3, 1], [1, 2, 2]),
    ([2, 1, 5], 6, [2, 1, 3], [2, 1, 3]),
    ([1, 1], 3, [1, 1], [1, 1]),  # not enough: everything, and the caller refuses
    ([3, 1, 2, 1], 7, [3, 1, 2, 1], [3, 1, 2, 1]),
    ([5, 1, 5, 2], 8, [5, 1, 2, 0], [3, 1, 2, 2]),
    ([9, 9], 9, [9, 0], [5, 4]),
])
def test_pack_and_spread_slots(cap, k, pack, spread):
    assert select.pack_slots(cap, k) == pack
    assert select.spread_slots(cap, k) == spread


@pytest.mark.parametrize("request_, hosts", [
    (Request(cpu_milli=1000, workers=6), ((0, 4), (1, 2))),
    (Request(cpu_milli=1000, workers=6, spread=True), ((0, 2), (1, 2), (2, 2))),
    (Request(cpu_milli=1000, workers=2, spread=True), ((0, 1), (1, 1))),
    (Request(cpu_milli=3000, workers=3), ((0, 1), (1, 1), (2, 1))),
    (Request(cpu_milli=1000, workers=12), ((0, 4), (1, 4), (2, 4))),
    (Request(cpu_milli=500, workers=2, exclusive=True), ((0, 2),)),
    (Request(cpu_milli=500, workers=2, exclusive=True, spread=True), ((0, 1), (1, 1))),
])
def test_gang_hosts_on_identical_nodes(request_, hosts):
    t = identical(3)
    got = pl.place(t, request_, "first")
    assert isinstance(got, Placement) and got.hosts == hosts and got.workers == request_.workers


def test_gang_is_refused_whole_and_table_unchanged():
    t = identical(3)
    snap = snapshot(t)
    got = pl.place(t, Request(cpu_milli=1000, workers=13))
    assert isinstance(got, Refusal) and got.slots == 12 and got.counts == {}
    assert_same(t, snap)


def test_pack_fills_the_best_node_first():
    t = identical(3)
    t.free[1, 0] = 2000  # n1 half used: best fit prefers it
    got = pl.place(t, Request(cpu_milli=1000, workers=3), "best")
    assert got.hosts == ((1, 2), (0, 1))


def test_exclusive_takes_the_whole_idle_node():
    t = identical(2)
    t.free[0, 0] = 3000
    r = Request(cpu_milli=500, exclusive=True)
    got = pl.place(t, r)
    assert got.hosts == ((1, 1),) and got.use.tolist() == [[4000, 1000, 0]]
    pl.reserve(t, r, got)
    assert t.free[1].tolist() == [0, 0, 0] and t.core_free[1].tolist() == [0, 0, 0, 0]
    assert pl.node_use(t).tolist() == ["MIXED", "ALLOCATED"]
    assert pl.place(t, Request(cpu_milli=1, exclusive=True)).counts == {"NodeNotIdle": 2}
    pl.release(t, r, got)
    assert pl.node_use(t).tolist() == ["MIXED", "IDLE"]


def test_per_core_shares_are_packed_best_fit_and_recorded():
    t = table_of({"name": "a", "cpus": 4, "core_milli": [1000, 400, 700, 1000, 900], "memory_mb": 1})
    r = Request(cores=(600, 300, 300), workers=2)
    got = pl.place(t, r)
    # worker 1: 600 -> core 2 (700, tightest), 300 -> core 1 (400), 300 -> core 4 (900)
    # worker 2: 600 -> core 4 (600 left), 300 -> core 0 (cores 1 and 2 keep only 100), 300 -> core 3
    # (never a second share of one worker on one core)
    assert got.hosts == ((0, 2),)
    assert got.core_use.tolist() == [[300, 300, 600, 300, 900]]
    snap = snapshot(t)
    pl.reserve(t, r, got)
    assert t.core_free.tolist() == [[700, 100, 100, 700, 0]] and t.free[0, 0] == 4000 - 2400
    pl.release(t, r, got)
    assert_same(t, snap)


def test_per_core_shares_can_refuse_where_cpu_total_fits():
    t = table_of({"name": "a", "core_milli": [500, 500, 500, 500], "memory_mb": 1})
    got = pl.place(t, Request(cores=(600,)))
    assert isinstance(got, Refusal) and got.counts == {"InsufficientCores": 1}
    assert got.detail == (Shortfall("core_milli", 600, 500, 500),)


def test_pack_cores_equal_shares_closed_form():
    cf = np.array([[1000, 300, 500, 1000], [250, 250, 250, 0]], np.int64)
    packed, use = cores.pack_cores(cf, np.array([250, 250], np.int64), np.array([5, 5]))
    # row 0: 250s go to core 1 (300: one), core 2 (500: two), then core 0 (four), core 3 (four)
    assert packed.tolist() == [5, 1]
    assert use.tolist() == [[1000, 250, 500, 750], [250, 250, 0, 0]]


# ---------------------------------------------------------------- could_ever_fit


def test_could_ever_fit_ignores_use_and_node_state():
    t = four_nodes()
    t.free[:] = 0
    t.schedulable[:] = False
    assert pl.could_ever_fit(t, Request(cpu_milli=8000, gpu_milli=2000)) is None
    assert pl.could_ever_fit(t, Request(cpu_milli=2000, labels={"zone": "a"}, exclusive=True)) is None


@pytest.mark.parametrize("request_, counts, detail", [
    (Request(cpu_milli=9000), {"InsufficientCpu": 4},
     (Shortfall("cpu_milli", 9000, 8000, 8000),)),
    (Request(cpu_milli=1, gpu_milli=2000, labels={"zone": "a"}), {"LabelMismatch": 2, "InsufficientGpus": 2},
     (Shortfall("gpu_milli", 2000, 0, 0), Shortfall("gpu_devices", 2, 0, 0))),
    (Request(cpu_milli=1, labels={"rack": "r9"}), {"LabelMismatch": 4}, ()),
    (Request(cores=(1200,)), {"InsufficientCores": 4}, (Shortfall("core_milli", 1200, 1000, 1000),)),
    (Request(cpu_milli=4000, workers=4), {"InsufficientCpu": 2}, (Shortfall("workers", 4, 3, 3),)),
])
def test_could_ever_fit_refuses_with_detail(request_, counts, detail):
    got = pl.could_ever_fit(four_nodes(), request_)
    assert isinstance(got, Refusal) and got.reason == "BadConstraints"
    assert got.counts == counts and got.detail == detail


# ---------------------------------------------------------------- reserve / release


def test_reserve_release_restore_bit_for_bit():
    t = four_nodes()
    snap = snapshot(t)
    r = Request(cores=(500, 500), memory_mb=1000, workers=3)
    got = pl.place(t, r, "least_allocated")
    pl.reserve(t, r, got)
    assert not np.array_equal(t.free, snap[0])
    pl.release(t, r, got)
    assert_same(t, snap)


def test_stale_reserve_and_double_release_raise_and_change_nothing():
    t = identical(1)
    r = Request(cpu_milli=3000)
    p = pl.place(t, r)
    pl.reserve(t, r, p)
    snap = snapshot(t)
    with pytest.raises(ValueError, match="no longer fits"):
        pl.reserve(t, r, p)
    assert_same(t, snap)
    pl.release(t, r, p)
    snap = snapshot(t)
    with pytest.raises(ValueError, match="beyond total"):
        pl.release(t, r, p)
    assert_same(t, snap)
    with pytest.raises(ValueError, match="this request"):
        pl.reserve(t, Request(cpu_milli=3000, workers=2), p)


def test_placement_record_round_trip_and_rebuild():
    t = four_nodes()
    r = Request(cores=(500, 250), workers=2, memory_mb=100)
    p = pl.place(t, r)
    rec = pl.placement_record(t, p)
    assert [h[0] for h in rec["hosts"]] == [t.names[i] for i, _ in p.hosts]
    back = pl.placement_from_record(t, rec)
    assert back.hosts == p.hosts and np.array_equal(back.use, p.use)
    assert np.array_equal(back.core_use, p.core_use)
    rebuilt = pl.NodeTable.from_specs([{"name": "n3", "cpus": 3, "core_milli": [1000, 1000, 500, 500],
                                        "memory_mb": 32000}, {"name": "n0", "cpus": 4, "memory_mb": 8000}])
    moved = pl.placement_from_record(rebuilt, rec)
    assert [rebuilt.names[i] for i, _ in moved.hosts] == [h[0] for h in rec["hosts"]]
    with pytest.raises(KeyError):
        pl.placement_from_record(table_of({"name": "zz", "cpus": 4, "memory_mb": 1}), rec)
    with pytest.raises(ValueError, match="once"):
        pl.placement_from_record(t, {**rec, "hosts": [["n0", 1], ["n0", 1]], "use": [[0] * 3] * 2,
                                     "cores": [[], []]})


@pytest.mark.parametrize("free, use", [
    ([4000, 1000, 0], "IDLE"), ([1000, 1000, 0], "MIXED"), ([0, 1000, 0], "ALLOCATED"),
])
def test_node_use(free, use):
    t = identical(1)
    t.free[0] = free
    assert pl.node_use(t).tolist() == [use]


# ---------------------------------------------------------------- passes


def test_place_queue_assumes_each_placement_before_the_next():
    t = identical(2)
    snap = snapshot(t)
    reqs = [Request(cpu_milli=3000), Request(cpu_milli=3000), Request(cpu_milli=3000),
            Request(cpu_milli=1000, workers=2)]
    got = pl.place_queue(t, reqs, "first")
    assert [g.hosts if isinstance(g, Placement) else "refused" for g in got] == [
        ((0, 1),), ((1, 1),), "refused", ((0, 1), (1, 1))]
    assert_same(t, snap)
    for r, g in zip(reqs, got):
        if isinstance(g, Placement):
            pl.reserve(t, r, g)
    assert t.free[:, 0].tolist() == [0, 0]


def test_assign_batch_places_what_queue_order_strands():
    t = table_of({"name": "a", "cpus": 4, "memory_mb": 1, "labels": {"zone": "a"}},
                 {"name": "b", "cpus": 4, "memory_mb": 1, "labels": {"zone": "b"}})
    reqs = [Request(cpu_milli=4000), Request(cpu_milli=4000, labels={"zone": "a"})]
    greedy = pl.place_queue(t, reqs, "best")
    assert isinstance(greedy[1], Refusal)
    batch = assign_batch(t, reqs, "best")
    assert [b.hosts for b in batch] == [((1, 1),), ((0, 1),)]
    for r, b in zip(reqs, batch):
        pl.reserve(t, r, b)
    assert t.free[:, 0].tolist() == [0, 0]


def test_assign_batch_refuses_the_rest_and_keeps_order_when_scarce():
    t = identical(1)
    reqs = [Request(cpu_milli=2000), Request(cpu_milli=3000), Request(cpu_milli=2000)]
    got = assign_batch(t, reqs)
    assert isinstance(got[0], Placement) and isinstance(got[2], Placement)
    assert isinstance(got[1], Refusal) and got[1].counts == {"InsufficientCpu": 1}


def test_assign_batch_takes_only_single_worker_requests():
    with pytest.raises(ValueError, match="single-worker"):
        assign_batch(identical(1), [Request(cpu_milli=1, workers=2)])
    with pytest.raises(ValueError, match="single-worker"):
        assign_batch(identical(1), [Request(cpu_milli=1, exclusive=True)])
