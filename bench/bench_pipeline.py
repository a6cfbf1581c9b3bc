"""Benchmark the pipeline solver: exact against exhaustive search, and the greedy.

    .venv/bin/python bench/bench_pipeline.py [--seeds 7] [--repeat 5]

Instances: ``synthetic.random_pipeline`` with 5 variants x 8 batch sizes
(1..128) per stage, max 32 replicas, product accuracy, a random load of
20-1500 requests/s (seeded). For each stage count it reports medians over
the seeds of:

- ``solve`` (exact DP), median of ``--repeat`` runs per instance;
- ``solve_exhaustive`` (itertools over all 40^S combinations, the tested
  reference) where it finishes within about a minute, and a numpy brute
  force (the last three stages vectorised) as a fairer brute-force
  baseline; beyond that, an estimate = 40^S x measured time per
  combination at the largest measured size x S / S_measured (scoring is
  linear in S), labelled as an estimate;
- ``solve_greedy`` time, and its objective gap to the exact optimum
  (exact - greedy, in objective units; alpha = 1, so 0.01 is one point of
  end-to-end accuracy) over ``--gap-seeds`` further instances per size;
- an ablation: ``solve`` with the incumbent bound switched off.

Every measured brute-force answer is checked against the exact one
(objective, relative tolerance 1e-9, and feasibility).
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import time

import numpy as np

from oaasd.pipeline import solve, solve_exhaustive, solve_greedy
from oaasd.pipeline import solver as solver_module
from oaasd.pipeline.options import final_accuracy, option_tables
from oaasd.pipeline.synthetic import random_load, random_pipeline

STAGES = (3, 4, 5, 6, 8)
OPTIONS = 5 * 8


def instance(n_stages: int, seed: int, combine: str = "product"):
    rng = np.random.default_rng(10_000 * n_stages + seed)
    pipeline = random_pipeline(rng, n_stages, n_variants=5, max_replicas=32,
                               accuracy_combine=combine)
    return pipeline, random_load(rng, pipeline)


def timed(fn, *args, repeat: int = 1):
    """(median seconds over ``repeat`` runs, last result)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def solve_without_bounds(pipeline, load_rps: float):
    """Ablation: the exact DP with the incumbent bound off (Pareto and latency
    pruning only), to show what the bound buys and that the DP stands alone."""
    original = solver_module._Bounds.upper
    solver_module._Bounds.upper = lambda self, lat, g, cost, s: np.full(len(lat), np.inf)
    try:
        return solve(pipeline, load_rps)
    finally:
        solver_module._Bounds.upper = original


def numpy_brute_force(pipeline, load_rps: float):
    """Best (key, objective, feasible) over all combinations, last 3 stages vectorised.

    Same canonical float order and ranking key as the package's solvers."""
    tables = option_tables(pipeline, load_rps)
    n, slo, kind = len(tables), pipeline.slo_ms, pipeline.accuracy_combine
    head, tail = tables[:max(0, n - 3)], tables[max(0, n - 3):]
    shape = tuple(len(t) for t in tail)
    grids = [np.ix_(*[np.arange(k) if i == j else np.zeros(1, dtype=int)
                      for j, k in enumerate(shape)]) for i in range(len(tail))]
    best = None
    for prefix in itertools.product(*(range(len(t)) for t in head)):
        lat, cost, short = 0.0, 0.0, 0.0
        g = {"product": 1.0, "min": math.inf}.get(kind, 0.0)
        for t, o in zip(head, prefix):
            lat, cost = lat + float(t.latency_ms[o]), cost + float(t.cost[o])
            short = max(short, float(t.shortfall_rps[o]))
            g = g * float(t.accuracy[o]) if kind == "product" else (
                min(g, float(t.accuracy[o])) if kind == "min" else g + float(t.accuracy[o]))
        lat_a, g_a, cost_a, short_a = lat, g, cost, short
        for axis, (t, grid) in enumerate(zip(tail, grids)):
            idx = grid[axis]
            lat_a = lat_a + t.latency_ms[idx]
            cost_a = cost_a + t.cost[idx]
            short_a = np.maximum(short_a, t.shortfall_rps[idx])
            g_a = (g_a * t.accuracy[idx] if kind == "product" else
                   np.minimum(g_a, t.accuracy[idx]) if kind == "min" else g_a + t.accuracy[idx])
        full = np.broadcast_shapes(*(np.shape(x) for x in (lat_a, g_a, cost_a, short_a)))
        lat_a, g_a, cost_a, short_a = (np.broadcast_to(x, full).ravel()
                                       for x in (lat_a, g_a, cost_a, short_a))
        acc = final_accuracy(kind, g_a, n)
        obj = pipeline.alpha * acc - cost_a
        cand = np.arange(len(obj))  # lexicographic minimum of the key, by successive filters
        for column in (short_a, np.maximum(lat_a, slo), -obj, lat_a, cost_a, -acc):
            values = column[cand]
            cand = cand[values == values.min()]
        i = int(cand[0])
        key = (short_a[i], max(lat_a[i], slo), -obj[i], lat_a[i], cost_a[i], -acc[i], prefix, i)
        if best is None or key < best[0]:
            best = (key, float(obj[i]), bool(short_a[i] == 0 and lat_a[i] <= slo))
    return best[1], best[2]


def agree(obj_a: float, feas_a: bool, obj_b: float, feas_b: bool) -> bool:
    return feas_a == feas_b and math.isclose(obj_a, obj_b, rel_tol=1e-9, abs_tol=1e-12)


def run_size(n: int, seeds: int, repeat: int, brute_seeds: int, limits: dict) -> dict:
    """Measure one stage count; brute forces only within ``limits`` (seconds)."""
    rows = {"exact": [], "unbounded": [], "greedy": [], "feasible": 0, "itertools": [],
            "numpy": []}
    for seed in range(seeds):
        pipeline, load = instance(n, seed)
        t_exact, exact = timed(solve, pipeline, load, repeat=repeat)
        t_greedy, greedy = timed(solve_greedy, pipeline, load, repeat=repeat)
        rows["exact"].append(t_exact)
        t_unbounded, unbounded = timed(solve_without_bounds, pipeline, load, repeat=repeat)
        assert agree(exact.objective, exact.feasible, unbounded.objective, unbounded.feasible)
        rows["unbounded"].append(t_unbounded)
        rows["greedy"].append(t_greedy)
        rows["feasible"] += exact.feasible
        if seed >= brute_seeds:
            continue
        if OPTIONS ** n * limits["itertools_per_combo"] * n <= limits["budget_s"]:
            t, ref = timed(solve_exhaustive, pipeline, load)
            assert agree(exact.objective, exact.feasible, ref.objective, ref.feasible), (n, seed)
            rows["itertools"].append(t)
            limits["itertools_per_combo"] = t / OPTIONS ** n / n
        if OPTIONS ** n * limits["numpy_per_combo"] * n <= limits["budget_s"]:
            t, (obj, feas) = timed(numpy_brute_force, pipeline, load)
            assert agree(exact.objective, exact.feasible, obj, feas), (n, seed)
            rows["numpy"].append(t)
            limits["numpy_per_combo"] = t / OPTIONS ** n / n
    return rows


def greedy_gaps(seeds: int) -> None:
    """The greedy's objective gap to the exact optimum, over many instances."""
    print(f"\ngreedy gap to the exact objective ({seeds} instances per size, other seeds):")
    print("| stages | greedy optimal | gap median | gap p95 | gap max | exact objective (median) |")
    print("|---|---|---|---|---|---|")
    for n in (3, 5, 6, 8):
        gaps, objectives = [], []
        for seed in range(1000, 1000 + seeds):
            pipeline, load = instance(n, seed)
            exact, greedy = solve(pipeline, load), solve_greedy(pipeline, load)
            assert greedy.feasible == exact.feasible
            gaps.append(exact.objective - greedy.objective)
            objectives.append(exact.objective)
        print(f"| {n} | {sum(g <= 1e-9 for g in gaps)}/{seeds} | {np.median(gaps):.4f} | "
              f"{np.percentile(gaps, 95):.4f} | {max(gaps):.4f} | {np.median(objectives):.4f} |")


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 3:
        return f"{seconds / 3600:.0f} h"
    if seconds < 86400 * 365:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / 86400 / 365:.1f} years"


def brute_cell(times: list[float], n: int, per_combo: float, measured_n: int | None) -> str:
    if times:
        return f"{fmt_s(statistics.median(times))} (measured, {len(times)} runs)"
    if measured_n is None:
        return "n/a"
    return f"~{fmt_s(OPTIONS ** n * per_combo * n)} (estimate)"


def print_timings(results: dict, limits: dict, measured: dict, seeds: int) -> None:
    """The side-by-side table of solve times per stage count."""
    print("| stages | combinations | exact `solve` (median / max) | exhaustive itertools "
          "(median) | brute force numpy (median) | exact, bound off (median / max) "
          "| greedy (median) | feasible |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        slow = brute_cell(r["itertools"], n, limits["itertools_per_combo"], measured["itertools"])
        print(f"| {n} | 40^{n} = {OPTIONS ** n:.2e} | {fmt_s(statistics.median(r['exact']))} / "
              f"{fmt_s(max(r['exact']))} | {slow}"
              f" | {brute_cell(r['numpy'], n, limits['numpy_per_combo'], measured['numpy'])} | "
              f"{fmt_s(statistics.median(r['unbounded']))} / {fmt_s(max(r['unbounded']))} | "
              f"{fmt_s(statistics.median(r['greedy']))} | {r['feasible']}/{seeds} |")
    print(f"\nper combination x stage: itertools {limits['itertools_per_combo'] * 1e9:.0f} ns "
          f"(at {measured['itertools']} stages), numpy {limits['numpy_per_combo'] * 1e9:.1f} ns "
          f"(at {measured['numpy']} stages)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gap-seeds", type=int, default=50,
                    help="instances per size for the greedy's gap")
    ap.add_argument("--brute-seeds", type=int, default=3,
                    help="seeds on which the brute forces run (they are slow)")
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="largest predicted brute-force run to attempt")
    args = ap.parse_args()
    # Start optimistic: the first (3-stage) runs calibrate the per-combination cost.
    limits = {"itertools_per_combo": 1e-7, "numpy_per_combo": 1e-9, "budget_s": args.budget_s}
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{args.seeds} seeds ({args.brute_seeds} for brute force), exact and greedy timed as "
          f"the median of {args.repeat} runs\n")
    results, measured = {}, {"itertools": None, "numpy": None}
    for n in STAGES:
        results[n] = run_size(n, args.seeds, args.repeat, args.brute_seeds, limits)
        for kind in measured:
            if results[n][kind]:
                measured[kind] = n
    print_timings(results, limits, measured, args.seeds)
    greedy_gaps(args.gap_seeds)
    print("\nexact `solve` at 8 stages by accuracy_combine (median / max over seeds):")
    for combine in ("product", "sum", "mean", "min"):
        times = [timed(solve, *instance(8, seed, combine), repeat=args.repeat)[0]
                 for seed in range(args.seeds)]
        print(f"- {combine}: {fmt_s(statistics.median(times))} / {fmt_s(max(times))}")


if __name__ == "__main__":
    main()
