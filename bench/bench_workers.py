"""The external-worker service under load: what one suggestion costs the daemon.

One worker drives a Branin tuning through the real daemon (HTTP on
loopback): suggest -> evaluate -> observe, ``--trials`` times. For each
suggest it records the round trip and the daemon process's CPU time
(psutil, user + system), and reports medians by the number of
observations already stored. The `random` sampler in the same run is the
baseline: everything but the GP (HTTP, SQLite, view building).

    .venv/bin/python bench/bench_workers.py [--trials 210]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import Daemon  # noqa: E402  (the same harness the tests use)


def branin(x0: float, x1: float) -> float:
    """Branin-Hoo on x0 in [-5, 10], x1 in [0, 15]; optimum 0.397887."""
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x1 - b * x0 ** 2 + c * x0 - 6) ** 2 + 10 * (1 - t) * math.cos(x0) + 10


def tuning(sampler: str, trials: int) -> dict:
    return {"name": f"bench-{sampler}", "sampler": sampler, "seed": 1, "number_of_trials": trials,
            "parameters": [{"name": "x0", "type": "float", "low": -5.0, "high": 10.0},
                           {"name": "x1", "type": "float", "low": 0.0, "high": 15.0}],
            "objectives": [{"metric": "loss", "sense": "minimize"}]}


def drive(d: Daemon, sampler: str, trials: int) -> list[tuple[int, float, float]]:
    """Run one tuning to its end; return (observations before, wall s, daemon CPU s) per suggest."""
    proc = psutil.Process(d.proc.pid)
    status, view = d.request("POST", "/v1/tunings", tuning(sampler, trials))
    assert status == 201, view
    tid = view["id"]
    status, worker = d.request("POST", f"/v1/tunings/{tid}/workers", {})
    assert status == 201, worker
    out = []
    for seen in range(trials):
        cpu = sum(proc.cpu_times()[:2])
        started = time.perf_counter()
        status, s = d.request("POST", f"/v1/tunings/{tid}/suggest", {"worker_id": worker["worker_id"]})
        wall = time.perf_counter() - started
        out.append((seen, wall, sum(proc.cpu_times()[:2]) - cpu))
        assert status == 200 and not s["done"], s
        loss = branin(s["config"]["x0"], s["config"]["x1"])
        status, body = d.request("POST", f"/v1/tunings/{tid}/observations",
                                 {"trial_id": s["trial_id"], "objectives": {"loss": loss}})
        assert status == 200, body
    status, view = d.request("GET", f"/v1/tunings/{tid}")
    best = view['best']['value']
    print(f"{sampler}: best loss {best:.5f} after {trials} trials "
          f"(regret {best - 0.397887:.2e})")
    return out


def summary(rows: list[tuple[int, float, float]], lo: int, hi: int) -> tuple[float, float]:
    window = [(w, c) for seen, w, c in rows if lo <= seen < hi]
    return statistics.median(w for w, _ in window) * 1e3, statistics.median(c for _, c in window) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=210)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(Path(tmp) / "d")
        d.start()
        try:
            runs = {s: drive(d, s, args.trials) for s in ("random", "gp")}
        finally:
            d.stop()
    print(f"machine: {psutil.cpu_count()} cores, load {psutil.getloadavg()[0]:.2f}; "
          f"one worker, {args.trials} trials per tuning; medians over windows of observations")
    print("| observations | gp suggest round trip | gp daemon CPU | random round trip | random daemon CPU |")
    print("|---|---:|---:|---:|---:|")
    for lo, hi in ((10, 30), (90, 110), (190, 210)):
        if hi > args.trials:
            continue
        gw, gc = summary(runs["gp"], lo, hi)
        rw, rc = summary(runs["random"], lo, hi)
        print(f"| {lo}-{hi - 1} | {gw:.1f} ms | {gc:.1f} ms | {rw:.1f} ms | {rc:.1f} ms |")
    print(json.dumps({"gp_at_200_cpu_ms": summary(runs["gp"], 190, 210)[1]}) if args.trials >= 210 else "")


if __name__ == "__main__":
    main()
