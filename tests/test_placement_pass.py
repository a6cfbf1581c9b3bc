"""place_queue (the lean pass) gives exactly what place + reserve give one by one."""

from __future__ import annotations

import numpy as np
import pytest

from oaasd.core import placement as pl
from oaasd.core.placement import scoring as sc
from oaasd.core.placement.cores import equal_fit_row, pack_cores, pack_equal_row


def _table(rng: np.random.Generator, n: int) -> pl.NodeTable:
    specs = []
    for i in range(n):
        cores = int(rng.choice([2, 4, 8, 16]))
        specs.append({"name": f"n{i}", "cpus": cores, "memory_mb": cores * int(rng.choice([1000, 2000, 4000])),
                      "sockets": int(rng.choice([1, 2])),
                      "gpus": int(rng.choice([0, 0, 0, 1, 2])),
                      "labels": {"zone": "ab"[i % 2], "arch": "arm" if i % 5 == 0 else "x86"},
                      "schedulable": bool(rng.random() > 0.05)})
    table = pl.NodeTable.from_specs(specs)
    for i in np.flatnonzero(rng.random(n) < 0.3):  # some pre-load, cores pinned too
        pinned = int(rng.integers(0, table.total[i, 0] // 2000 + 1))
        table.core_free[i, :pinned] = 0
        table.free[i, 0] -= pinned * 1000 + int(rng.integers(0, 500))
        table.free[i, 1] -= int(rng.integers(0, table.total[i, 1] // 2 + 1))
    return table


def _queue(rng: np.random.Generator, m: int) -> list[pl.Request]:
    out = []
    for _ in range(m):
        cpus = int(rng.choice([1, 2, 4]))
        kind = rng.random()
        cores = ()
        if kind < 0.15:
            cores = (500,) * (2 * cpus)
        elif kind < 0.2:
            cores = (700, 300) * cpus
        out.append(pl.Request(
            cpu_milli=0 if cores else cpus * 1000, cores=cores,
            memory_mb=cpus * int(rng.choice([500, 1000, 2000])),
            gpu_milli=int(rng.choice([0] * 17 + [1000, 250, 2000])),
            workers=int(rng.choice([1, 1, 2, 3, 5, 8, 12])),
            labels={"zone": "ab"[int(rng.integers(2))]} if rng.random() < 0.15
            else ({"arch": "arm"} if rng.random() < 0.05 else ({"gpu": "x"} if rng.random() < 0.02 else {})),
            spread=bool(rng.random() < 0.3), exclusive=bool(rng.random() < 0.03)))
    return out


def _one_by_one(table, queue, fit, weights=None):
    work = table.copy()
    out = []
    for req in queue:
        res = pl.place(work, req, fit, weights)
        if isinstance(res, pl.Placement):
            pl.reserve(work, req, res)
        out.append(res)
    return out, work


@pytest.mark.parametrize("fit", list(pl.SCORERS))
@pytest.mark.parametrize("seed", range(6))
def test_place_queue_equals_place_and_reserve(fit: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = _table(rng, int(rng.choice([20, 60, 300])))
    queue = _queue(rng, 250)
    weights = None if seed % 2 else np.array([1.0, 0.5, 2.0])
    before = (table.free.copy(), table.core_free.copy())
    want, want_work = _one_by_one(table, queue, fit, weights)
    got = pl.place_queue(table, queue, fit, weights)
    assert np.array_equal(table.free, before[0]) and np.array_equal(table.core_free, before[1])
    assert len(got) == len(want)
    assert sum(isinstance(r, pl.Refusal) for r in got) == sum(isinstance(r, pl.Refusal) for r in want)
    work = table.copy()
    for req, g, w in zip(queue, got, want):
        assert type(g) is type(w)
        if isinstance(w, pl.Placement):
            assert g.bound is None or req.cores or req.exclusive  # the pass binds no cores
            pl.reserve(work, req, g)  # reserving the pass's placements in order never fails, and binds
            assert g.hosts == w.hosts
            assert np.array_equal(g.use, w.use) and np.array_equal(g.core_use, w.core_use)
            assert g.exclusive == w.exclusive and g.bound == w.bound
            assert (g.gpu_use is None) == (w.gpu_use is None) and (g.gpu_use is None or np.array_equal(g.gpu_use, w.gpu_use))
        else:
            assert g == w
    assert np.array_equal(work.free, want_work.free)
    assert np.array_equal(work.core_free, want_work.core_free)
    assert np.array_equal(work.gpu_free, want_work.gpu_free) and np.array_equal(work.core_bound, want_work.core_bound)


def test_place_queue_custom_scorer_and_empty_queue(monkeypatch) -> None:
    rng = np.random.default_rng(42)
    table = _table(rng, 40)
    queue = _queue(rng, 80)
    assert pl.place_queue(table, [], "no-such-fit") == []

    def odd(t, r, weights=None):  # may score -inf: the pass must not treat it as "no candidate"
        return np.where(np.arange(len(t.names)) % 3 == 0, -np.inf, pl.SCORERS["best"](t, r, weights))

    monkeypatch.setitem(pl.SCORERS, "odd", odd)
    want, _ = _one_by_one(table, queue, "odd")
    got = pl.place_queue(table, queue, "odd")
    assert [g.hosts if isinstance(g, pl.Placement) else g for g in got] == \
        [w.hosts if isinstance(w, pl.Placement) else w for w in want]


# ---------------------------------------------------------------- the lean path's own parts


@pytest.mark.parametrize("fit", list(pl.SCORERS))
@pytest.mark.parametrize("weights", [None, [1.0, 0.3, 0.7], [0.0, 1.0, 0.0]])
def test_scoring_some_rows_is_bit_for_bit_scoring_them_all(fit: str, weights) -> None:
    rng = np.random.default_rng(11)
    table = _table(rng, 300)
    w = None if weights is None else np.array(weights)
    for req in _queue(rng, 40):
        full = pl.SCORERS[fit](table, req, w)
        rows = np.sort(rng.choice(300, int(rng.integers(1, 120)), replace=False))
        assert np.array_equal(pl.SCORERS[fit](table, req, w, rows), full[rows])
        assert np.array_equal(sc.score_rows(pl.SCORERS[fit], table, req, w, rows), full[rows])


def test_python_leftover_is_bit_for_bit_the_worst_scorer() -> None:
    rng = np.random.default_rng(12)
    table = _table(rng, 200)
    for weights in (None, np.array([1.0, 0.3, 0.7]), np.array([0.1, 0.0, 3.0])):
        factors = sc.node_weights(table, weights).absolute
        for req in _queue(rng, 30):
            want = sc.worst(table, req, weights)
            got = [sc.absolute_left(row, req.demand.tolist(), factors) for row in table.free.tolist()]
            assert np.array_equal(np.array(got), want)


def test_pack_equal_row_is_pack_cores_for_equal_shares() -> None:
    rng = np.random.default_rng(13)
    cores = rng.choice([0, 250, 500, 700, 1000], size=(200, 6))
    for share in (250, 500, 1000):
        shares = np.full(int(rng.integers(1, 4)), share, np.int64)
        limit = rng.integers(0, 4, 200)
        packed, use = pack_cores(cores, shares, limit)
        for row, n, u, lim in zip(cores.tolist(), packed.tolist(), use.tolist(), limit.tolist()):
            assert pack_equal_row(row, share, len(shares), n) == u
            assert equal_fit_row(row, share, len(shares), lim) == n


def _lattice(rng: np.random.Generator, n: int) -> pl.NodeTable:
    """Nodes whose free amounts sit on a coarse grid: many rows have mathematically equal
    leftovers (4000 cpu + 8000 MB = 2000 cpu + 12000 MB against 8000 / 16000), so their
    best/worst scores tie or differ by a rounding step."""
    specs = [{"name": f"n{i}", "cpus": 8, "memory_mb": 16000, "gpus": int(i % 7 == 0),
              "labels": {"zone": "ab"[i % 2]}} for i in range(n)]
    table = pl.NodeTable.from_specs(specs)
    table.free[:, 0] = rng.integers(0, 9, n) * 1000
    table.free[:, 1] = rng.integers(0, 9, n) * 2000
    for i in range(n):
        table.core_free[i] = [1000] * (table.free[i, 0] // 1000) + [0] * (8 - table.free[i, 0] // 1000)
    return table


@pytest.mark.parametrize("fit", ["best", "worst"])
@pytest.mark.parametrize("seed", range(4))
def test_near_ties_are_ranked_exactly_as_place_ranks_them(fit: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    table = _lattice(rng, 400)
    queue = []
    for _ in range(300):
        cores = (500, 500) if rng.random() < 0.2 else ()
        queue.append(pl.Request(cpu_milli=0 if cores else 1000 * int(rng.integers(1, 3)), cores=cores,
                                memory_mb=2000 * int(rng.integers(0, 3)), workers=int(rng.integers(1, 9)),
                                spread=bool(rng.random() < 0.3)))
    for weights in (None, np.array([1.0, 0.3, 0.7]), np.array([3.0, 1.0, 0.0])):
        want, want_work = _one_by_one(table, queue, fit, weights)
        got = pl.place_queue(table, queue, fit, weights)
        assert [g.hosts if isinstance(g, pl.Placement) else g for g in got] == \
            [w.hosts if isinstance(w, pl.Placement) else w for w in want]
        work = table.copy()
        for req, g in zip(queue, got):
            if isinstance(g, pl.Placement):
                pl.reserve(work, req, g)
        assert np.array_equal(work.free, want_work.free)
        assert np.array_equal(work.core_free, want_work.core_free)


def test_per_core_requests_that_most_rows_refuse_fall_back_to_place() -> None:
    """Past 4k + 16 rows refused by the per-core check the pass asks ``place`` itself."""
    rng = np.random.default_rng(7)
    table = pl.NodeTable.from_specs([{"name": f"n{i}", "core_milli": [1000] * 4, "memory_mb": 8000}
                                     for i in range(120)])
    table.core_free[:100] = [300, 300, 300, 300]  # cpu budget left, but no core takes 500
    table.free[:100, 0] = 1200
    queue = [pl.Request(cores=(500, 500), memory_mb=100, workers=int(rng.integers(1, 4))) for _ in range(60)]
    for fit in ("best", "first", "balanced"):
        want, _ = _one_by_one(table, queue, fit)
        got = pl.place_queue(table, queue, fit)
        assert [g.hosts if isinstance(g, pl.Placement) else g for g in got] == \
            [w.hosts if isinstance(w, pl.Placement) else w for w in want]
        assert all(h[0] >= 100 for g in got if isinstance(g, pl.Placement) for h in g.hosts)


@pytest.mark.parametrize("fit", ["best", "worst"])
def test_gangs_dealt_by_the_shortcuts_and_the_general_dealers_agree_with_place(fit: str) -> None:
    """Spread gangs with k rows (one worker each) and with fewer rows than k (several per
    row), packed gangs filling rows to capacity then a last partial row, per-core ones too."""
    table = pl.NodeTable.from_specs([{"name": f"n{i}", "cpus": 2 + 2 * (i % 3), "memory_mb": 16000}
                                     for i in range(5)])
    queue = [pl.Request(cpu_milli=1000, workers=4, spread=True),   # 4 rows, one each
             pl.Request(cpu_milli=1000, workers=9, spread=True),   # 5 rows, several each
             pl.Request(cpu_milli=1000, workers=7),                # rows to capacity, then a partial one
             pl.Request(cores=(500, 500), workers=3, spread=True),
             pl.Request(cores=(500, 500), workers=3),
             pl.Request(cpu_milli=1000, workers=8, spread=True)]   # too few slots left: refused
    want, _ = _one_by_one(table, queue, fit)
    got = pl.place_queue(table, queue, fit)
    assert [getattr(r, "hosts", None) for r in got] == [getattr(r, "hosts", None) for r in want]
    assert got[-1] == want[-1] and isinstance(got[-1], pl.Refusal)
    assert any(s > 1 for _, s in got[1].hosts) and got[0].workers == len(got[0].hosts) == 4
