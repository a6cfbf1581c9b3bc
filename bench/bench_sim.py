"""Benchmark of the simulator: simulated tasks per minute and a policy table (issue 15).

Run: .venv/bin/python bench/bench_sim.py [--tasks 10000] [--rate 2.5] [--repeat 3]

1. A synthetic trace of ``--tasks`` tasks (seed 7; heavy-tailed durations,
   diurnal arrivals, 70 % 1-cpu, GPU and gang tasks, 5 users) on 64 nodes
   (56 x 32 cpus, 8 x 32 cpus + 8 GPUs) is replayed under each policy, one
   core (``time.process_time``, median of ``--repeat``): simulated tasks per
   minute, passes run. Target: >= 100,000 tasks/min.
2. The simulator's metrics per policy on that trace and on the sample trace
   (``examples/sim/sample.csv`` on ``examples/sim/nodes.toml``), as Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oaasd.core.placement import NodeTable  # noqa: E402
from oaasd.core.policies import POLICIES  # noqa: E402
from oaasd.sim.engine import simulate  # noqa: E402
from oaasd.sim.report import markdown, metrics  # noqa: E402
from oaasd.sim.synth import generate  # noqa: E402
from oaasd.sim.trace import read_nodes, read_trace  # noqa: E402


def cluster() -> NodeTable:
    """56 CPU nodes of 32 cpus / 128 GB and 8 GPU nodes of 32 cpus / 256 GB / 8 GPUs."""
    specs = [{"name": f"cpu-{i}", "cpus": 32, "memory_mb": 131072} for i in range(56)]
    specs += [{"name": f"gpu-{i}", "cpus": 32, "memory_mb": 262144, "gpus": 8} for i in range(8)]
    return NodeTable.from_specs(specs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second (4: the cluster is contended)")
    ap.add_argument("--repeat", type=int, default=3)
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


if __name__ == "__main__":
    main()
