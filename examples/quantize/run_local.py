"""Drive the quantization tuning on this machine, without the daemon.

It plays the daemon's part with the same pure core (``oaasd.tuning.Tuner``):
ask for configurations, start ``trial.py`` with ``OAAS_TRIAL_CONFIG``, read
its ``OAAS_RESULT`` line, record the trial, ask again, until the tuner says
stop; then print the best feasible configuration. Up to ``worker_num``
trials run at once (async strategy: a free worker is refilled at once).

    .venv/bin/python examples/quantize/run_local.py [--trials N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from oaasd.tuning import Trial, Tuner  # noqa: E402


def run_trial(config: dict) -> tuple[str, dict | None]:
    env = {**os.environ, "OAAS_TRIAL_CONFIG": json.dumps(config)}
    proc = subprocess.run([sys.executable, str(HERE / "trial.py")], env=env, capture_output=True, text=True)
    results = [line for line in proc.stdout.splitlines() if line.startswith("OAAS_RESULT ")]
    if proc.returncode != 0 or not results:
        return "FAILED", None
    return "COMPLETED", json.loads(results[-1].split(" ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=None, help="override number_of_trials")
    args = ap.parse_args()
    data = json.loads((HERE / "tuning.json").read_text())
    if args.trials:
        data["number_of_trials"] = args.trials
    tuner = Tuner.from_json(data)
    trials: dict[int, Trial] = {}
    running = {}
    t0 = time.time()
    with ThreadPoolExecutor(tuner.description.worker_num) as pool:
        while True:
            for s in tuner.suggest(list(trials.values())):
                tid = len(trials)
                trials[tid] = Trial(tid, s.config, "RUNNING", baseline=s.baseline)
                running[pool.submit(run_trial, s.config)] = tid
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                tid = running.pop(fut)
                state, metrics = fut.result()
                t = trials[tid]
                trials[tid] = Trial(tid, t.config, state, metrics, t.baseline)
                feasible = "baseline" if t.baseline else (
                    "feasible" if tuner.is_feasible(metrics, list(trials.values())) else "infeasible")
                acc = metrics and f"accuracy {metrics['accuracy']:.4f} latency {metrics['latency_ms']:.3f} ms"
                print(f"trial {tid:2d} {state} {acc} {feasible} {json.dumps(t.config)}", flush=True)
    everything = list(trials.values())
    best = tuner.best(everything)
    print(f"\nstopped: {tuner.stop_reason(everything, time.time() - t0)} after {len(everything)} trials, "
          f"{time.time() - t0:.0f} s")
    print(f"accuracy bound: {tuner.thresholds(everything)[0]:.4f} (0.99 x baseline)")
    print("best:", json.dumps({"trial": best.trial_id, "config": best.config, "metrics": best.metrics}) if best else None)


if __name__ == "__main__":
    main()
