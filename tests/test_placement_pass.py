"""place_queue (the lean pass) gives exactly what place + reserve give one by one."""

from __future__ import annotations

import numpy as np
import pytest

from oaasd import placement as pl


def _table(rng: np.random.Generator, n: int) -> pl.NodeTable:
    specs = []
    for i in range(n):
        cores = int(rng.choice([2, 4, 8, 16]))
        specs.append({"name": f"n{i}", "cpus": cores, "memory_mb": cores * int(rng.choice([1000, 2000, 4000])),
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
            gpus=int(rng.random() < 0.1),
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
            assert g.hosts == w.hosts
            assert np.array_equal(g.use, w.use) and np.array_equal(g.core_use, w.core_use)
            assert g.exclusive == w.exclusive
            pl.reserve(work, req, g)  # reserving the pass's placements in order never fails
        else:
            assert g == w
    assert np.array_equal(work.free, want_work.free)
    assert np.array_equal(work.core_free, want_work.core_free)


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
