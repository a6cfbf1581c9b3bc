"""Benchmark of the simulator: simulated tasks per minute and a policy table (issue 15).

Run: .venv/bin/python bench/bench_sim.py [--tasks 10000] [--rate 2.5] [--repeat 3]

1. A synthetic trace of ``--tasks`` tasks (seed 7; heavy-tailed durations,
   diurnal arrivals, 70 % 1-cpu, GPU and gang tasks, 5 users) on 64 nodes
   (56 x 32 cpus, 8 x 32 cpus + 8 GPUs) is replayed under each policy, one
   core (``time.process_time``, median of ``--repeat``): simulated tasks per
   minute, passes run. Target: >= 100,000 tasks/min.
2. The simulator's metrics per policy on that trace and on the sample trace
   (``examples/sim/sample.csv`` on ``examples/sim/nodes.toml``), as Markdown.
3. ``--passes``: one scheduling pass (``decide``, median wall time) on a deep
   queue: 30,000 one-cpu tasks queued on 4 nodes of 8 cores with one core
   free (the pass of max_pass = 1,000 candidates, against one ``place_queue``
   over them, what the scheduler did before); and 100,000 pending tasks of 24
   shapes on 1,000 nodes kept full by ~16,000 running, over 1,000 and over all
   100,000 candidates, per policy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from oaasd.core import placement as pl  # noqa: E402
from oaasd.core.jobs import Job, Running  # noqa: E402
from oaasd.core.placement import NodeTable  # noqa: E402
from oaasd.core.schedule import decide  # noqa: E402
from oaasd.core.policies import POLICIES, policy_named  # noqa: E402
from oaasd.sim.engine import simulate  # noqa: E402
from oaasd.sim.report import markdown, metrics  # noqa: E402
from oaasd.sim.synth import generate  # noqa: E402
from oaasd.sim.trace import read_nodes, read_trace  # noqa: E402


def cluster() -> NodeTable:
    """56 CPU nodes of 32 cpus / 128 GB and 8 GPU nodes of 32 cpus / 256 GB / 8 GPUs."""
    specs = [{"name": f"cpu-{i}", "cpus": 32, "memory_mb": 131072} for i in range(56)]
    specs += [{"name": f"gpu-{i}", "cpus": 32, "memory_mb": 262144, "gpus": 8} for i in range(8)]
    return NodeTable.from_specs(specs)


def median_s(f, n: int = 7) -> float:
    """Median wall time of n calls of f."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def passes() -> None:
    """Section 3: one pass on deep queues."""
    print("\n## One pass on a deep queue (wall ms, median)\n")
    table = NodeTable.from_specs([{"name": f"n{i}", "cpus": 8, "memory_mb": 8192} for i in range(4)])
    req = pl.Request(cpu_milli=1000, memory_mb=100)
    running = []
    for k in range(31):
        p = pl.place(table, req)
        pl.reserve(table, req, p)
        running.append(Running(10**6 + k, req, p, 0.0, 600.0))
    cand = [Job(i, 0, float(i), req, time_limit_s=60.0) for i in range(30_000)][:1000]
    old = median_s(lambda: pl.place_queue(table, [j.request for j in cand]))
    now = {name: median_s(lambda: decide(cand, running, table, policy_named(name), 0.0, presorted=True))
           for name in ("fifo", "backfill")}
    print(f"- 30,000 queued, 1 core free, 1,000 candidates: one place_queue over them {old * 1e3:.2f} ms; "
          + "; ".join(f"decide {name} {t * 1e3:.2f} ms" for name, t in now.items()))
    rng = np.random.default_rng(1)
    table = NodeTable.from_specs([{"name": f"n{i}", "cpus": int(rng.choice([16, 32, 64])), "memory_mb": 131072,
                                   "gpus": int(rng.random() < 0.2) * 4} for i in range(1000)])
    running, k = [], 0
    while True:
        r = pl.Request(cpu_milli=int(rng.choice([1000, 2000, 4000])), memory_mb=1024)
        p = pl.place(table, r)
        if isinstance(p, pl.Refusal):
            break
        pl.reserve(table, r, p)
        running.append(Running(10**7 + k, r, p, 0.0, float(rng.integers(60, 7200))))
        k += 1
    shapes = [pl.Request(cpu_milli=c * 1000, memory_mb=1024 * c, gpus=g, workers=w)
              for c in (1, 2, 4, 8) for g in (0, 1) for w in (1, 2, 4)]
    queue = [Job(i, 0, float(i), shapes[int(rng.integers(len(shapes)))],
                 time_limit_s=float(rng.choice([60, 600, 3600]))) for i in range(100_000)]
    print(f"- 100,000 pending ({len(shapes)} shapes), {len(running):,} running on 1,000 full nodes:")
    for name in ("fifo", "backfill", "priority"):
        policy = policy_named(name)
        got = [median_s(lambda: decide(queue[:m], running, table, policy, 100.0, presorted=True), n=3)
               for m in (1000, 100_000)]
        print(f"  - {name}: 1,000 candidates {got[0] * 1e3:.1f} ms; all 100,000 {got[1] * 1e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second (4: the cluster is contended)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--passes", action="store_true", help="also section 3: one pass on deep queues")
    args = ap.parse_args()
    rows, table = generate(args.tasks, seed=7, rate_per_s=args.rate), cluster()
    print(f"## Speed: {len(rows)} synthetic tasks on {len(table.names)} nodes, one core, median of {args.repeat}\n")
    print("| policy | CPU s | simulated tasks/min | passes |\n|---|---|---|---|")
    results = []
    for name, policy in POLICIES.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            run = simulate(rows, table, policy)
            times.append(time.process_time() - t0)
        t = statistics.median(times)
        print(f"| {name} | {t:.2f} | {len(rows) / t * 60:,.0f} | {run.passes:,} |")
        results.append(metrics(run))
    print(f"\n## Metrics on the {len(rows)}-task synthetic trace (seconds)\n")
    print(markdown(results))
    nodes = read_nodes(ROOT / "examples/sim/nodes.toml")
    sample, _ = read_trace(ROOT / "examples/sim/sample.csv", nodes)
    print(f"\n## Metrics on the sample trace ({len(sample)} tasks, {len(nodes.names)} nodes)\n")
    print(markdown([metrics(simulate(sample, nodes, p)) for p in POLICIES.values()]))
    if args.passes:
        passes()


if __name__ == "__main__":
    main()
