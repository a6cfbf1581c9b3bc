"""Benchmark the tuning samplers: simple regret vs evaluations, and GP cost.

Usage::

    .venv/bin/python bench/bench_tuning.py            # 10 seeds, 50 evaluations (a few minutes)
    .venv/bin/python bench/bench_tuning.py --quick    # 3 seeds, 20 evaluations

Problems: Branin (2-D), Hartmann6 (6-D), Ackley (5-D on [-15, 30]^5) and a
mixed int/log-int/categorical/conditional space with optimum 0. Samplers
``random``, ``sobol`` and ``gp``, sequential (batches of 1) and synchronous
batches of 4 (4 parallel workers). Regret is best value found minus the
known optimum; the table gives median and IQR over seeds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: threads cost more than they give

import argparse
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oaasd.tuning.description import TuningDescription  # noqa: E402
from oaasd.tuning.samplers import Observation, make_sampler  # noqa: E402
from oaasd.tuning.space import Space  # noqa: E402

HARTMANN_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                       [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
HARTMANN_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                              [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(c: dict) -> float:
    x, y = c["x0"], c["x1"]
    b, cc = 5.1 / (4 * math.pi ** 2), 5 / math.pi
    return (y - b * x * x + cc * x - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


def hartmann6(c: dict) -> float:
    x = np.array([c[f"x{i}"] for i in range(6)])
    return float(-HARTMANN_ALPHA @ np.exp(-(HARTMANN_A * (x - HARTMANN_P) ** 2).sum(1)))


def ackley(c: dict) -> float:
    x = np.array([c[f"x{i}"] for i in range(5)])
    d = len(x)
    return float(-20 * math.exp(-0.2 * math.sqrt((x * x).sum() / d))
                 - math.exp(np.cos(2 * math.pi * x).sum() / d) + 20 + math.e)


def mixed(c: dict) -> float:
    f = (c["x"] - 1.3) ** 2 + 0.05 * (c["n"] - 7) ** 2 + 0.3 * (math.log10(c["k"]) - 2) ** 2
    if c["opt"] == "sgd":
        return f + 0.5 + (c["momentum"] - 0.9) ** 2
    i = [0.9, 0.99, 0.999].index(c["beta"])
    return f + ([0.6, 0.0, 0.3][i] if c["opt"] == "adam" else [0.6, 0.5, 0.4][i])


def _floats(bounds: list[tuple[float, float]]) -> list[dict]:
    return [{"name": f"x{i}", "type": "float", "low": lo, "high": hi} for i, (lo, hi) in enumerate(bounds)]


MIXED_PARAMS = [
    {"name": "x", "type": "float", "low": -5, "high": 5},
    {"name": "n", "type": "int", "low": 1, "high": 20},
    {"name": "k", "type": "int", "low": 1, "high": 1000, "log": True},
    {"name": "opt", "type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    {"name": "momentum", "type": "float", "low": 0, "high": 1, "condition": {"parent": "opt", "equals": "sgd"}},
    {"name": "beta", "type": "ordinal", "choices": [0.9, 0.99, 0.999],
     "condition": {"parent": "opt", "in": ["adam", "rmsprop"]}},
]

PROBLEMS = {
    "branin": (branin, _floats([(-5, 10), (0, 15)]), 0.397887),
    "hartmann6": (hartmann6, _floats([(0, 1)] * 6), -3.32237),
    "ackley5": (ackley, _floats([(-15, 30)] * 5), 0.0),
    "mixed": (mixed, MIXED_PARAMS, 0.0),
}


def description(problem: str, sampler: str, seed: int) -> TuningDescription:
    return TuningDescription.model_validate({
        "parameters": PROBLEMS[problem][1], "objectives": [{"metric": "f"}],
        "sampler": sampler, "seed": seed})


def run(job: tuple[str, str, int, int, int]) -> tuple[tuple, list[float], float, int]:
    """One optimization run: best-so-far after each evaluation, CPU seconds, suggestions."""
    problem, sampler, batch, seed, evals = job
    fn, _, _ = PROBLEMS[problem]
    d = description(problem, sampler, seed)
    space = Space(d.parameters)
    s = make_sampler(sampler, space, ["minimize"], seed)
    history: list[Observation] = []
    best, trace, cpu, calls = math.inf, [], 0.0, 0
    while len(history) < evals:
        t = time.process_time()
        configs = s.suggest(history, [], min(batch, evals - len(history)))
        cpu += time.process_time() - t
        calls += len(configs)
        for c in configs:
            v = fn(c)
            history.append(Observation(c, (v,)))
            best = min(best, v)
            trace.append(best)
    return job, trace, cpu, calls


def cost_at(n_obs: int, problem: str = "hartmann6", repeats: int = 5) -> dict:
    """CPU ms of one gp suggestion with ``n_obs`` random observations.

    Cold: a fresh sampler (hyper-parameters fitted from scratch, as after a
    daemon restart). Warm: the next suggestions of the same sampler, each
    with one more observation (the steady state of a running tuning).
    """
    fn, _, _ = PROBLEMS[problem]
    d = description(problem, "gp", 0)
    space = Space(d.parameters)
    rng = np.random.default_rng(0)
    hist = [Observation(c, (fn(c),)) for c in space.sample(rng, n_obs + repeats)]
    make_sampler("gp", space, ["minimize"], 1).suggest(hist[:10], [], 1)  # import scipy's modules first
    s = make_sampler("gp", space, ["minimize"], 0)
    t = time.process_time()
    s.suggest(hist[:n_obs - 1], [], 1)
    cold = time.process_time() - t
    warm = []
    for i in range(repeats):
        t = time.process_time()
        s.suggest(hist[:n_obs + i], [], 1)
        warm.append(time.process_time() - t)
    return {"cold_ms": 1e3 * cold, "warm_ms": 1e3 * float(np.median(warm)), "warm_max_ms": 1e3 * max(warm)}


def summarize(results: list, checkpoints: list[int]) -> str:
    table: dict[tuple, list] = {}
    cpu: dict[tuple, list] = {}
    for (problem, sampler, batch, seed, evals), trace, sec, calls in results:
        opt = PROBLEMS[problem][2]
        table.setdefault((problem, sampler, batch), []).append([trace[c - 1] - opt for c in checkpoints])
        cpu.setdefault((problem, sampler, batch), []).append(1e3 * sec / calls)
    cols = " | ".join(f"regret@{c} median [IQR]" for c in checkpoints)
    lines = [f"| problem | sampler | batch | {cols} | CPU ms/suggestion |",
             "|---|---|---|" + "---|" * len(checkpoints) + "---|"]
    for key in sorted(table, key=lambda k: (list(PROBLEMS).index(k[0]), k[2], k[1])):
        r = np.array(table[key])
        cells = []
        for j in range(len(checkpoints)):
            q1, med, q3 = np.percentile(r[:, j], [25, 50, 75])
            cells.append(f"{med:.3g} [{q1:.3g}, {q3:.3g}]")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells)
                     + f" | {np.median(cpu[key]):.1f} |")
    return "\n".join(lines) + f"\n\n(n = {len(r)} seeds per row)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds, 20 evaluations, fewer problems' seeds")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--samplers", default="random,sobol,gp")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    seeds = args.seeds or (3 if args.quick else 10)
    evals = 20 if args.quick else 50
    checkpoints = [20] if args.quick else [20, 50]
    jobs = [(p, s, int(b), seed, evals)
            for p in args.problems.split(",") for s in args.samplers.split(",")
            for b in args.batches.split(",") for seed in range(seeds)]
    jobs.sort(key=lambda j: j[1] != "gp")  # long jobs first balance the pool
    t0 = time.time()
    with Pool(min(2, args.processes)) as pool:
        results = pool.map(run, jobs, chunksize=1)
    print(summarize(results, checkpoints))
    print(f"\nwall time {time.time() - t0:.0f} s, {len(jobs)} runs, {min(2, args.processes)} processes")
    if "gp" in args.samplers.split(","):
        for n_obs in ([50] if args.quick else [50, 200]):
            for problem in ("hartmann6", "mixed"):
                c = cost_at(n_obs, problem)
                print(f"gp suggestion CPU at {n_obs} observations ({problem}): cold fit {c['cold_ms']:.0f} ms, "
                      f"warm-started median {c['warm_ms']:.0f} ms (max {c['warm_max_ms']:.0f} ms)")


if __name__ == "__main__":
    main()
