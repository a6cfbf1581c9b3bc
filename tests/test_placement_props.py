"""Properties of the placement core (hypothesis): capacity, gangs, reserve/release, passes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oaasd.core import placement as pl
from oaasd.core.placement import (
    Placement,
    Refusal,
    Request,
    checks,
    cores,
    select,
)
from oaasd.core.placement.batch import assign_batch

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FITS = st.sampled_from(sorted(pl.SCORERS))


@st.composite
def tables(draw) -> pl.NodeTable:
    """1-6 small heterogeneous nodes, some drained, some with GPUs, labels and uneven cores."""
    n = draw(st.integers(1, 6))
    specs = []
    for i in range(n):
        cores = draw(st.lists(st.sampled_from([250, 500, 1000, 1500]), min_size=1, max_size=4))
        specs.append({"name": f"n{i}", "core_milli": cores, "sockets": draw(st.integers(1, len(cores))),
                      "memory_mb": draw(st.sampled_from([0, 1000, 2000, 4000])),
                      "gpus": draw(st.integers(0, 2)),
                      "labels": {"zone": draw(st.sampled_from("ab"))},
                      "schedulable": draw(st.booleans() | st.just(True))})
    return pl.NodeTable.from_specs(specs)


@st.composite
def requests(draw, single: bool = False) -> Request:
    """Small requests: plain or per-core, gangs of 1-5, labels, spread, sometimes exclusive."""
    cores = draw(st.just(()) | st.lists(st.sampled_from([250, 500, 750, 1000]), min_size=1, max_size=3))
    cpu = 0 if cores else draw(st.sampled_from([0, 250, 500, 1000, 2000]))
    memory = draw(st.sampled_from([0, 500, 1000, 3000]))
    gpus = draw(st.sampled_from([0, 0, 0, 1000, 250, 2000]))
    if not (cores or cpu or memory or gpus):
        memory = 500
    return Request(cpu_milli=cpu, memory_mb=memory, gpu_milli=gpus, cores=tuple(cores),
                   workers=1 if single else draw(st.integers(1, 5)),
                   labels=draw(st.just({}) | st.just({"zone": "a"})),
                   spread=draw(st.booleans()),
                   exclusive=not single and draw(st.sampled_from([False, False, False, True])))


def within_capacity(t: pl.NodeTable) -> None:
    """No node over capacity on any resource or any core; CPU budget never above its cores."""
    assert ((0 <= t.free) & (t.free <= t.total)).all()
    assert ((0 <= t.core_free) & (t.core_free <= t.core_total)).all()
    assert (t.free[:, 0] <= t.core_free.sum(1)).all()
    assert ((0 <= t.gpu_free) & (t.gpu_free <= t.gpu_total)).all()
    assert (t.free[:, 2] == t.gpu_free.sum(1)).all() and (t.core_bound >= 0).all()


def check_placement(t: pl.NodeTable, r: Request, p: Placement) -> None:
    """A placement holds every worker on distinct, schedulable, matching nodes."""
    rows = p.nodes
    assert p.workers == r.workers and len(set(rows.tolist())) == len(rows)
    assert all(s >= 1 for _, s in p.hosts)
    assert t.schedulable[rows].all()
    assert not checks.label_mismatch(t, r)[rows].any()
    if r.exclusive:
        assert not checks.not_idle(t, r)[rows].any()
    for (i, slots), u, b in zip(p.hosts, p.core_use, pl.host_bindings(t, p)):
        if r.cores and not r.exclusive:  # no core holds more than one share of each worker
            assert (u <= slots * int(r.shares[0])).all() and np.count_nonzero(u) >= len(r.cores)
    if r.gpu_milli and not r.exclusive:
        share, q = r.gpu_shares
        assert p.gpu_use is not None and (p.gpu_use.sum(1) == r.gpu_milli * np.array([s for _, s in p.hosts])).all()
        whole = r.gpu_milli >= 1000
        for (i, _), u in zip(p.hosts, p.gpu_use):  # whole devices fully free before; a share on one device
            if whole:
                assert set(u[u > 0].tolist()) == {1000} and (t.gpu_free[i, u > 0] == 1000).all()
            assert (u <= t.gpu_free[i]).all()


def check_bound(t: pl.NodeTable, r: Request, p: Placement) -> None:
    """After reserve: a plain cpu request is bound to ceil(cpus * slots) distinct cores of each node
    (all of them on a node with fewer, whose cores are larger)."""
    assert (p.bound is not None) == r.binds_cores
    for (i, slots), b in zip(p.hosts, pl.host_bindings(t, p)):
        if r.binds_cores:
            want = min(-(-r.cpu_milli * slots // 1000), int(t.ncores[i]))  # a core may hold over 1000
            assert len(b["cores"]) == len(set(b["cores"])) == want
            assert max(b["cores"]) < t.ncores[i]
            assert sum(u for _, u in p.bound[p.hosts.index((i, slots))]) == r.cpu_milli * slots


@SETTINGS
@given(tables(), st.lists(st.tuples(requests(), FITS, st.integers(0, 9)), max_size=12))
def test_any_sequence_of_place_reserve_release_stays_within_capacity(t, steps):
    held: list[tuple[Request, Placement]] = []
    for r, fit, release_at in steps:
        before = (t.free.copy(), t.core_free.copy())
        got = pl.place(t, r, fit)
        assert np.array_equal(t.free, before[0]) and np.array_equal(t.core_free, before[1])
        if isinstance(got, Placement):
            check_placement(t, r, got)
            pl.reserve(t, r, got)
            check_bound(t, r, got)
            assert pl.placement_from_record(t, pl.placement_record(t, got)).bound == got.bound
            held.append((r, got))
        else:
            assert got.workers == r.workers and got.slots < r.workers
        if held and release_at < 3:
            pl.release(t, *held.pop(release_at % len(held)))
        within_capacity(t)


@SETTINGS
@given(tables(), st.lists(st.tuples(requests(), FITS), max_size=6), requests(), FITS)
def test_reserve_then_release_restores_exactly(t, prior, r, fit):
    for q, f in prior:
        got = pl.place(t, q, f)
        if isinstance(got, Placement):
            pl.reserve(t, q, got)
    free, core_free = t.free.copy(), t.core_free.copy()
    gpu_free, bound = t.gpu_free.copy(), t.core_bound.copy()
    got = pl.place(t, r, fit)
    if isinstance(got, Placement):
        pl.reserve(t, r, got)
        pl.release(t, r, pl.placement_from_record(t, pl.placement_record(t, got)))  # as a restart would
    assert np.array_equal(t.free, free) and np.array_equal(t.core_free, core_free)
    assert np.array_equal(t.gpu_free, gpu_free) and np.array_equal(t.core_bound, bound)
    assert t.free.dtype == np.int64 and t.core_free.dtype == np.int64


@SETTINGS
@given(tables(), requests(), st.lists(st.integers(0, 5), max_size=3))
def test_gang_is_all_or_nothing_and_checks_agree(t, r, drain):
    for i in drain:
        t.schedulable[i % len(t.names)] = False
    assert np.array_equal(pl.passing(t, r), ~pl.failures(t, r).any(0))
    got = pl.place(t, r)
    if isinstance(got, Placement):
        check_placement(t, r, got)
        assert sum(s for _, s in got.hosts) == r.workers
    else:
        assert isinstance(got, Refusal) and got.reason in ("Resources", "ReqNodeNotAvail")
        assert sum(got.counts.values()) + int(pl.passing(t, r).sum()) == len(t.names)


@SETTINGS
@given(tables(), st.lists(requests(), max_size=15), FITS)
def test_place_queue_never_over_commits(t, queue, fit):
    free, core_free = t.free.copy(), t.core_free.copy()
    results = pl.place_queue(t, queue, fit)
    assert np.array_equal(t.free, free) and np.array_equal(t.core_free, core_free)
    for r, got in zip(queue, results):
        if isinstance(got, Placement):
            check_placement(t, r, got)
            pl.reserve(t, r, got)  # raises if the pass handed out more than there is
            check_bound(t, r, got)
            within_capacity(t)


@SETTINGS
@given(tables(), st.lists(requests(single=True), max_size=15), FITS)
def test_assign_batch_never_over_commits(t, queue, fit):
    results = assign_batch(t, queue, fit)
    greedy = pl.place_queue(t, queue, fit)
    for r, got in zip(queue, results):
        if isinstance(got, Placement):
            check_placement(t, r, got)
            pl.reserve(t, r, got)
            within_capacity(t)
    # A request nothing could hold alone is refused by both.
    for r, got, g in zip(queue, results, greedy):
        if pl.could_ever_fit(t, r) is not None:
            assert isinstance(got, Refusal) and isinstance(g, Refusal)


@SETTINGS
@given(tables(), requests(), st.lists(st.tuples(requests(), FITS), max_size=4))
def test_could_ever_fit_matches_placing_on_the_idle_cluster(t, r, load):
    for q, f in load:  # use and drains must not change the answer
        got = pl.place(t, q, f)
        if isinstance(got, Placement):
            pl.reserve(t, q, got)
    t.schedulable[0] = False
    idle = t.configured.copy()
    verdict = pl.could_ever_fit(t, r)
    assert (verdict is None) == isinstance(pl.place(idle, r), Placement)
    if verdict is not None:
        assert verdict.reason == "BadConstraints"


@SETTINGS
@given(tables(), requests(), st.lists(st.floats(0, 5), min_size=3, max_size=3), FITS)
def test_scores_are_finite_and_within_unit_interval(t, r, weights, fit):
    for w in (None, np.array(weights)):
        s = pl.SCORERS[fit](t, r, w)
        assert s.shape == (len(t.names),) and np.isfinite(s).all()
        assert (s >= -1e-12).all() and (s <= 1 + 1e-12).all()


def python_best_fit(cores: list[int], shares: list[int], limit: int) -> tuple[int, list[int]]:
    """Reference packing, one core at a time: each share of a worker on its own core.

    Equal shares: the most workers w with sum_j min(free_j // s, w) >= p * w, taking
    min(free_j // s, w) shares of each core, tightest first. Unequal shares: worker by
    worker, largest share first, on the tightest core the worker does not use yet.
    """
    if len(set(shares)) == 1:
        s, p = shares[0], len(shares)
        per = [c // s for c in cores]
        w = max(w for w in range(limit + 1) if sum(min(x, w) for x in per) >= p * w)
        use, left = [0] * len(cores), p * w
        for j in sorted(range(len(cores)), key=lambda j: (cores[j], j)):
            n = min(per[j], w, left)
            use[j], left = n * s, left - n
        return w, use
    rem = list(cores)
    for w in range(limit):
        trial, used = list(rem), set()
        for s in sorted(shares, reverse=True):
            fitting = [j for j, f in enumerate(trial) if f >= s and j not in used]
            if not fitting:
                return w, [c - r for c, r in zip(cores, rem)]
            j = min(fitting, key=lambda j: (trial[j], j))
            trial[j] -= s
            used.add(j)
        rem = trial
    return limit, [c - r for c, r in zip(cores, rem)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0, 100, 250, 300, 500, 700, 1000]), min_size=4, max_size=4),
                min_size=1, max_size=4),
       st.lists(st.sampled_from([100, 250, 300, 500]), min_size=1, max_size=4),
       st.lists(st.integers(0, 6), min_size=4, max_size=4))
def test_pack_cores_matches_reference_best_fit(rows, shares, limits):
    cf = np.array(rows, np.int64)
    lim = np.array(limits[: len(rows)], np.int64)
    sh = np.sort(np.array(shares, np.int64))[::-1].copy()
    packed, use = cores.pack_cores(cf, sh, lim)
    for i, row in enumerate(rows):
        ref_packed, ref_use = python_best_fit(row, shares, int(lim[i]))
        assert packed[i] == ref_packed and use[i].tolist() == ref_use
    fits = cores.cores_fit(cf, sh)
    assert fits.tolist() == [python_best_fit(row, shares, 1)[0] == 1 for row in rows]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=8), st.integers(1, 40))
def test_slot_dealers_match_one_worker_at_a_time(cap, k):
    spread, left = [0] * len(cap), k
    while left and any(t < c for t, c in zip(spread, cap)):
        for i, c in enumerate(cap):  # one per row per round, best rows first
            if left and spread[i] < c:
                spread[i], left = spread[i] + 1, left - 1
    pack, left = [0] * len(cap), k
    for i, c in enumerate(cap):  # fill the best row before the next
        while left and pack[i] < c:
            pack[i], left = pack[i] + 1, left - 1
    assert select.spread_slots(cap, k) == spread
    assert select.pack_slots(cap, k) == pack


@SETTINGS
@given(tables(), st.lists(requests(), max_size=6), requests(), st.lists(st.integers(0, 5), max_size=3))
def test_candidates_are_the_rows_passing_every_check_but_cores(t, prior, r, drain):
    """``candidates`` (labels and GPUs checked on their cached rows first) and ``passing`` agree,
    after use and after drains (the state is read per call, never cached)."""
    for q in prior:
        got = pl.place(t, q)
        if isinstance(got, Placement):
            pl.reserve(t, q, got)
    for i in drain:
        t.schedulable[i % len(t.names)] = False
    assert checks.candidates(t, r).tolist() == np.flatnonzero(pl.passing(t, r, cores=False)).tolist()
    assert checks.candidates(t.copy(), r).tolist() == checks.candidates(t, r).tolist()  # copies share the cache


@SETTINGS
@given(tables(), st.lists(requests(), max_size=6), requests())
def test_refusal_shortfalls_are_the_largest_eligible_amounts(t, prior, r):
    """Each resource shortfall names the most any schedulable, matching node has free and in total."""
    for q in prior:
        got = pl.place(t, q)
        if isinstance(got, Placement):
            pl.reserve(t, q, got)
    got = pl.place(t, r)
    if isinstance(got, Placement):
        return
    eligible = t.schedulable & checks.label_match(t, r)
    want = []
    if eligible.any():
        free, total = t.free[eligible].max(0), t.total[eligible].max(0)
        want = [pl.Shortfall(pl.RESOURCES[c], x, int(free[c]), int(total[c])) for c, x in r.asked if x > free[c]]
    assert [s for s in got.detail if s.resource in pl.RESOURCES] == want
