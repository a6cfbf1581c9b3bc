"""Cost of binding in the scheduling pass: this tree against a base commit, cpus-only queues.

Run: .venv/bin/python bench/bench_placement_binding.py [--base REV] [--rounds N]

The base commit's tree is unpacked from git (as ``compare.py`` does); each
round times, in a child process per tree (base first in odd rounds, this
tree first in even ones), on 1,000 nodes (4-64 cores, 2-8 GB per core, 20%
pre-loaded) built by that tree's own code:

  - ``place_queue`` of 1,000 cpus-only tasks of 1-8 workers, and of 1,000
    single-worker ones (fit=best): the pass, which now also binds cores;
  - the same pass followed by ``reserve`` of every placement in order, as
    the scheduler does after a pass.

Prints each tree's median over the rounds and the ratio this/base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import REPO, unpack  # noqa: E402

CHILD = r'''
import json, statistics, sys, time
import numpy as np
from oaasd.core import placement as pl

def cluster(n, seed=0):
    rng = np.random.default_rng(seed)
    cores = rng.choice([4, 8, 16, 32, 64], n)
    specs = [{"name": f"node{i:05d}", "cpus": int(cores[i]),
              "memory_mb": int(cores[i] * rng.choice([2000, 4000, 8000])),
              "labels": {"zone": "abcd"[i % 4]}} for i in range(n)]
    t = pl.NodeTable.from_specs(specs)
    for i in np.flatnonzero(rng.random(n) < 0.2):
        t.free[i, 0] -= int(rng.integers(0, cores[i] * 1000 // 2 + 1))
        t.free[i, 1] -= int(rng.integers(0, t.total[i, 1] * 3 // 4 + 1))
    return t

def queue(m, workers, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(m):
        cpus = float(rng.choice([0.5, 1, 1.5, 2, 4, 8]))
        out.append(pl.Request(cpu_milli=int(cpus * 1000), memory_mb=int(cpus * rng.choice([1000, 2000, 4000])),
                              workers=int(rng.integers(1, workers + 1)),
                              labels={"zone": "abcd"[int(rng.integers(4))]} if rng.random() < 0.1 else {},
                              spread=bool(rng.random() < 0.2)))
    return out

t = cluster(1000)
out = {}
for label, q in (("1-8 workers", queue(1000, 8)), ("1 worker", queue(1000, 1))):
    for what in ("pass", "pass+reserve"):
        times = []
        for _ in range(int(sys.argv[1]) + 1):
            work = t.copy()
            t0 = time.perf_counter()
            got = pl.place_queue(work, q, "best")
            if what == "pass+reserve":
                for r, p in zip(q, got):
                    if isinstance(p, pl.Placement):
                        pl.reserve(work, r, p)
            times.append(time.perf_counter() - t0)
        out[f"{what} {label}"] = statistics.median(times[1:])
print(json.dumps(out))
'''


def run(tree: Path, reps: int) -> dict[str, float]:
    """One child run on ``tree``'s code: median seconds per figure."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(reps)], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, timeout=900, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cb8a7a4")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = unpack(args.base, Path(tmp))
        runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        for k in range(args.rounds):
            order = [("base", base), ("new", REPO)] if k % 2 == 0 else [("new", REPO), ("base", base)]
            for name, tree in order:
                runs[name].append(run(tree, args.reps))
    print(f"## Pass cost with core binding, cpus-only queues, 1,000 tasks onto 1,000 nodes (fit=best), "
          f"base {args.base}, {args.rounds} interleaved rounds, median of medians")
    for key in runs["new"][0]:
        b = statistics.median(r[key] for r in runs["base"])
        n = statistics.median(r[key] for r in runs["new"])
        print(f"{key:<26} base {b * 1e3:7.1f} ms, now {n * 1e3:7.1f} ms, now/base {n / b:.2f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
