"""Benchmark of the placement core: decision latency, pass time, baseline ratio, packing.

Run: .venv/bin/python bench/bench_placement.py [--quick] [--against REV]

``--against REV`` (e.g. HEAD) also times the passes of section 2 with the
placement modules of git revision REV (loaded from ``git show`` into a
temporary package), interleaved run by run with the working tree's on the
same cluster and queue, and prints both medians and their ratio.

Prints medians (time.perf_counter) of:
  1. one placement decision on 100 / 1,000 / 10,000 heterogeneous nodes
     (4-64 cores, 2-8 GB per core, 20% with GPUs, 20% pre-loaded, 3% drained)
     for four request shapes, against a plain-Python per-node loop doing the
     same filter / best-fit score / select, and the ratio;
  2. one scheduling pass (place_queue) of 1,000 queued tasks of 1-8 workers
     onto 1,000 nodes, and assign_batch of 1,000 single-worker tasks;
  3. packing quality of the fits (and the linear_sum_assignment batch) on the
     same queues: tasks placed, nodes used (touched by the queue), mean CPU use
     of the used nodes, and the wall time of the whole pass.
"""

from __future__ import annotations

import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oaasd.core import placement as pl  # noqa: E402
from oaasd.core.placement.batch import assign_batch  # noqa: E402

CORES = np.array([4, 8, 16, 32, 64])
GB_PER_CORE = np.array([2000, 4000, 8000])


def make_cluster(n: int, seed: int = 0, preload: float = 0.2, drained: float = 0.03) -> pl.NodeTable:
    """A heterogeneous table of n nodes, ``preload`` of them partly used."""
    rng = np.random.default_rng(seed)
    cores = rng.choice(CORES, n)
    gpus = np.where(rng.random(n) < 0.2, rng.choice([1, 2, 4, 8], n), 0)
    specs = [{"name": f"node{i:05d}", "cpus": int(cores[i]),
              "memory_mb": int(cores[i] * rng.choice(GB_PER_CORE)), "gpus": int(gpus[i]),
              "labels": {"zone": "abcd"[i % 4], "arch": "arm" if i % 10 == 0 else "x86"},
              "schedulable": bool(rng.random() >= drained)} for i in range(n)]
    table = pl.NodeTable.from_specs(specs)
    for i in np.flatnonzero(rng.random(n) < preload):
        pinned = int(rng.integers(0, cores[i] // 2 + 1))  # whole cores pinned by per-core tasks
        loose = int(rng.integers(0, (cores[i] - pinned) * 1000 // 2 + 1))  # unpinned millicores
        table.core_free[i, :pinned] = 0
        table.free[i, 0] -= pinned * 1000 + loose
        table.free[i, 1] -= int(rng.integers(0, table.total[i, 1] * 3 // 4 + 1))
        busy = int(rng.integers(0, table.total[i, 2] // 1000 + 1))  # whole devices in use
        table.gpu_free[i, :busy] = 0
        table.free[i, 2] -= busy * 1000
    return table


def make_queue(m: int, seed: int = 1, max_workers: int = 8, arm: float = 0.0) -> list[pl.Request]:
    """m requests: 1-max_workers workers of 1-8 cpus, 1-4 GB per cpu; 10% with GPUs,
    10% per-core shares, 10% a zone label, 20% spread; ``arm`` of them need arch=arm only."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(m):
        cpus = int(rng.choice([1, 2, 4, 8], p=[0.4, 0.3, 0.2, 0.1]))
        kind = rng.random()
        labels = {"zone": "abcd"[int(rng.integers(4))]} if 0.2 <= kind < 0.3 else {}
        if arm:
            kind, labels = 1.0, ({"arch": "arm"} if rng.random() < arm else {})
        out.append(pl.Request(
            cpu_milli=cpus * 1000, memory_mb=cpus * int(rng.choice([1000, 2000, 4000])),
            gpu_milli=1000 * int(rng.choice([1, 2])) if kind < 0.1 else 0,
            cores=(500,) * (2 * cpus) if 0.1 <= kind < 0.2 else (),
            workers=int(rng.integers(1, max_workers + 1)), labels=labels,
            spread=bool(rng.random() < 0.2)))
    return out


DECISIONS = {
    "2 cpu, 4 GB": pl.Request(cpu_milli=2000, memory_mb=4000),
    "gang 8 x (4 cpu, 8 GB)": pl.Request(cpu_milli=4000, memory_mb=8000, workers=8),
    "1 GPU, zone=b": pl.Request(cpu_milli=4000, memory_mb=16000, gpu_milli=1000, labels={"zone": "b"}),
    "cores 4 x 500": pl.Request(cores=(500, 500, 500, 500), memory_mb=2000),
}


# ---------------------------------------------------------------- baseline


def python_nodes(table: pl.NodeTable) -> list[tuple]:
    """The table as plain Python rows, built once (the baseline keeps lists natively)."""
    labels = [{table.label_vocab[j] for j in np.flatnonzero(row)} for row in table.labels]
    return list(zip(table.schedulable.tolist(), labels, table.total.tolist(),
                    table.free.tolist(), table.core_free.tolist()))


def python_pack(cores: list[int], shares: list[int], limit: int) -> int:
    """Workers of ``shares`` that fit on ``cores``, best-fit decreasing on distinct cores, at most limit."""
    rem = list(cores)
    for w in range(limit):
        trial, used = list(rem), set()
        for s in shares:
            best = None
            for j, f in enumerate(trial):
                if f >= s and j not in used and (best is None or f < trial[best]):
                    best = j
            if best is None:
                return w
            trial[best] -= s
            used.add(best)  # each share of a worker on its own core
        rem = trial
    return limit


def python_place(nodes: list[tuple], request: pl.Request, cap_max: list[int]) -> list[tuple[int, int]] | None:
    """The same filter / best-fit score / pack select as ``pl.place``, one node at a time."""
    want = {f"{k}={v}" for k, v in request.labels.items()}
    d = [request.cpu_milli, request.memory_mb, request.gpu_milli]
    shares = sorted(request.cores, reverse=True)
    weights = [1.0 if c > 0 else 0.0 for c in cap_max]
    wsum = sum(weights)
    scored = []
    for i, (up, labels, total, free, cores) in enumerate(nodes):
        if not up or not want <= labels:
            continue
        if request.exclusive and free != total:
            continue
        if free[0] < d[0] or free[1] < d[1] or free[2] < d[2]:
            continue
        if shares and python_pack(cores, shares, 1) < 1:
            continue
        left = sum(w * min(max((f - x) / c, 0.0), 1.0) for w, f, x, c in zip(weights, free, d, cap_max) if c)
        scored.append((-(1.0 - left / wsum), i))
    scored.sort()
    hosts, need = [], request.workers
    for _, i in scored[:need]:
        free = nodes[i][3]
        cap = min(min(f // x for f, x in zip(free, d) if x), need)
        if shares:
            cap = python_pack(nodes[i][4], shares, cap)
        hosts.append((i, cap))
        need -= cap
        if need <= 0:
            hosts[-1] = (i, cap + need)
            return hosts
    return None


# ---------------------------------------------------------------- timing


def median_s(fn, reps: int, clock=time.perf_counter) -> float:
    """Median time of fn() over reps runs on ``clock``, after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def bench_decisions(quick: bool) -> None:
    """Section 1: one decision, numpy vs the Python loop."""
    print("## One placement decision (fit=best), median")
    print(f"{'nodes':>7} {'request':<24} {'numpy':>10} {'python loop':>12} {'ratio':>7}")
    for n in (100, 1_000, 10_000):
        table = make_cluster(n)
        nodes = python_nodes(table)
        cap_max = table.cap_max.tolist()
        for label, req in DECISIONS.items():
            got = pl.place(table, req, "best")
            ref = python_place(nodes, req, cap_max)
            assert (list(got.hosts) if isinstance(got, pl.Placement) else None) == ref, (n, label)
            reps = 300 if quick else 2000
            t_np = median_s(lambda: pl.place(table, req, "best"), reps)
            t_py = median_s(lambda: python_place(nodes, req, cap_max), max(5, reps // (n // 50)))
            print(f"{n:>7} {label:<24} {t_np * 1e3:>8.3f}ms {t_py * 1e3:>10.3f}ms {t_py / t_np:>6.0f}x")
    print()


def bench_pass(quick: bool) -> None:
    """Section 2: one scheduling pass of 1,000 tasks onto 1,000 nodes (wall and CPU time)."""
    print("## One scheduling pass, 1,000 queued tasks onto 1,000 nodes, median wall (CPU)")
    table = make_cluster(1_000)
    queue = make_queue(1_000)
    single = make_queue(1_000, max_workers=1)
    reps = 3 if quick else 11
    runs = [("place_queue fit=best            1-8 workers", pl.place_queue, queue, "best", reps),
            ("place_queue fit=least_allocated 1-8 workers", pl.place_queue, queue, "least_allocated", reps),
            ("place_queue fit=best            1 worker   ", pl.place_queue, single, "best", reps),
            ("assign_batch fit=best           1 worker   ", assign_batch, single, "best",
             max(1, reps // 3))]
    for label, run, q, fit, n in runs:
        wall = median_s(lambda: run(table, q, fit), n)
        cpu = median_s(lambda: run(table, q, fit), n, time.process_time)
        placed = sum(isinstance(x, pl.Placement) for x in run(table, q, fit))
        print(f"{label}: {wall * 1e3:7.1f} ms ({cpu * 1e3:6.1f} ms CPU), {placed} placed")
    print()


def load_revision(rev: str):
    """The placement module of git revision ``rev``, imported as package ``oaasd_at_rev``."""
    root = Path(__file__).resolve().parents[1]
    pkg = Path(tempfile.mkdtemp(prefix="oaasd-rev-")) / "oaasd_at_rev"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("placement", "placement_pass", "scoring"):
        text = subprocess.run(["git", "show", f"{rev}:oaasd/{name}.py"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(text.replace("oaasd.", "oaasd_at_rev.").replace(
            "from oaasd import", "from oaasd_at_rev import"))
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module("oaasd_at_rev.placement")


def bench_against(rev: str, quick: bool) -> None:
    """Section 2 again, revision ``rev`` and the working tree interleaved run by run."""
    global pl
    print(f"## One scheduling pass, {rev} vs working tree, interleaved, median wall")
    new, old = pl, load_revision(rev)
    try:
        pl = old  # make_cluster and make_queue build with the module in ``pl``
        before = (make_cluster(1_000), make_queue(1_000), make_queue(1_000, max_workers=1))
    finally:
        pl = new
    after = (make_cluster(1_000), make_queue(1_000), make_queue(1_000, max_workers=1))
    reps = 5 if quick else 15
    for label, q, fit in [("fit=best            1-8 workers", 1, "best"),
                          ("fit=least_allocated 1-8 workers", 1, "least_allocated"),
                          ("fit=best            1 worker   ", 2, "best")]:
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(reps + 1):  # the first run of each warms up
            for mod, args, out in ((old, before, times[0]), (new, after, times[1])):
                t0 = time.perf_counter()
                mod.place_queue(args[0], args[q], fit)
                out.append(time.perf_counter() - t0)
        t_old, t_new = (statistics.median(t[1:]) for t in times)
        print(f"{label}: {rev} {t_old * 1e3:7.1f} ms, now {t_new * 1e3:7.1f} ms, "
              f"now/{rev} {t_new / t_old:.2f}")
    print()


def quality(table: pl.NodeTable, queue: list[pl.Request], results: list) -> str:
    """Tasks placed, workers placed, nodes used, mean CPU use of used nodes."""
    work = table.copy()
    for req, res in zip(queue, results):
        if isinstance(res, pl.Placement):
            pl.reserve(work, req, res)
    touched = (work.free != table.free).any(1) | (work.core_free != table.core_free).any(1)
    used_cpu = (work.total[:, 0] - work.free[:, 0]) / np.maximum(work.total[:, 0], 1)
    placed = [(r, x) for r, x in zip(queue, results) if isinstance(x, pl.Placement)]
    return (f"{len(placed):>6} {sum(r.workers for r, _ in placed):>8} {int(touched.sum()):>6} "
            f"{used_cpu[touched].mean() * 100 if touched.any() else 0:>8.1f}%")


def bench_quality() -> None:
    """Section 3: packing quality of the fits on the same queues."""
    head = f"{'method':<30} {'tasks':>6} {'workers':>8} {'nodes':>6} {'cpu use':>9} {'time':>9}"
    cases = [
        ("1,000 gang tasks (1-8 workers) onto 1,000 empty nodes",
         make_cluster(1_000, preload=0, drained=0), make_queue(1_000), False),
        ("1,000 single-worker tasks onto 1,000 nodes, 20% pre-loaded",
         make_cluster(1_000), make_queue(1_000, seed=5, max_workers=1), True),
        ("1,000 single-worker tasks onto 100 empty nodes (over-subscribed)",
         make_cluster(100, seed=3, preload=0, drained=0), make_queue(1_000, seed=4, max_workers=1), True),
        ("1,500 single-worker tasks, 10% needing arch=arm (20 of 200 nodes), onto 200 empty nodes",
         make_cluster(200, seed=3, preload=0, drained=0),
         make_queue(1_500, seed=9, max_workers=1, arm=0.1), True),
    ]
    for title, table, queue, batch in cases:
        print(f"## Packing: {title}")
        print(head)
        runs = [(f"place_queue {fit}", pl.place_queue, fit) for fit in
                ("first", "best", "worst", "most_allocated", "least_allocated", "balanced")]
        if batch:
            runs += [(f"assign_batch {fit}", assign_batch, fit) for fit in ("best", "least_allocated")]
        for name, run, fit in runs:
            t0 = time.perf_counter()
            results = run(table, queue, fit)
            took = time.perf_counter() - t0
            print(f"{name:<30} {quality(table, queue, results)} {took * 1e3:>7.0f}ms")
        print()


def main() -> None:
    quick = "--quick" in sys.argv
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}, "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    bench_decisions(quick)
    bench_pass(quick)
    if "--against" in sys.argv:
        bench_against(sys.argv[sys.argv.index("--against") + 1], quick)
    bench_quality()
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
