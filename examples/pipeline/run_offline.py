"""Run the pipeline adaptation loop offline over a recorded load series.

Every interval: forecast the next interval's load from the history, solve
for variant, batch and replicas per stage, and check the decision against
the load that actually came. Prints a decision table (every ``--every``
intervals), a summary per predictor, and writes ``decisions.png`` when
matplotlib is installed.

    .venv/bin/python examples/pipeline/run_offline.py [--predictor window_max]
        [--window 3] [--headroom 0.2] [--every 12] [--plot decisions.png]

Only the pure functions of ``oaasd.pipeline`` are used: this is the same
code the daemon's periodic loop runs, minus the applying.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from oaasd.pipeline import Pipeline
from oaasd.pipeline.adapt import ReplayStep, replay
from oaasd.pipeline.predictors import (
    HoltPredictor,
    LastValuePredictor,
    SeasonalPredictor,
    WindowMaxPredictor,
    backtest,
)

HERE = Path(__file__).resolve().parent


def load_inputs() -> tuple[Pipeline, np.ndarray, int]:
    """The example's pipeline profile and load series (interval in seconds)."""
    pipeline = Pipeline.model_validate_json((HERE / "profile.json").read_text())
    series = json.loads((HERE / "load.json").read_text())
    return pipeline, np.array(series["load_rps"]), int(series["interval_s"])


def make_predictor(name: str, window: int):
    """The predictor named on the command line."""
    return {"last_value": LastValuePredictor(), "window_max": WindowMaxPredictor(window=window),
            "holt": HoltPredictor(alpha=0.5, beta=0.3),
            "seasonal": SeasonalPredictor(period=180, alpha=0.5, beta=0.1, gamma=0.2)}[name]


def config(step: ReplayStep) -> str:
    return "  ".join(f"{s.variant:>10}/b{s.batch:<2}x{s.replicas:<2}" for s in step.decision.stages)


def print_table(steps: list[ReplayStep], interval_s: int, every: int) -> None:
    """One row per ``every`` intervals: what was seen, forecast and decided."""
    stages = [s.stage for s in steps[0].decision.stages]
    print("per stage: variant/b<batch> x<replicas>; obs = load seen, pred = forecast, "
          "next = load that came; ok = SLO and capacity held at that load")
    print(f"{'time':>5} {'obs':>6} {'pred':>6} {'next':>6}  "
          + "  ".join(f"{name:>19}" for name in stages)
          + f" {'lat_ms':>7} {'acc':>6} {'cores':>5}  ok")
    for step in steps[::every]:
        d, o = step.decision, step.outcome
        minutes, seconds = divmod(step.t * interval_s, 60)
        print(f"{minutes:02d}:{seconds:02d} {step.observed_rps:6.1f} {step.predicted_rps:6.1f} "
              f"{step.actual_rps:6.1f}  {config(step)} {d.latency_ms:7.1f} {d.accuracy:6.3f} "
              f"{d.cost_cores:5.0f}  {'yes' if o.meets_slo else 'NO'}")


def summarise(steps: list[ReplayStep]) -> dict:
    """SLO attainment at the actual load, mean cores and accuracy, changes."""
    configs = [config(s) for s in steps]
    return {"slo_met": float(np.mean([s.outcome.meets_slo for s in steps])),
            "capacity_short": int(sum(s.outcome.capacity_rps < s.actual_rps for s in steps)),
            "latency_over": int(sum(s.outcome.latency_ms > s.decision.latency_ms
                                    and not s.outcome.meets_slo for s in steps)),
            "mean_cores": float(np.mean([s.decision.cost_cores for s in steps])),
            "mean_accuracy": float(np.mean([s.decision.accuracy for s in steps])),
            "changes": sum(a != b for a, b in zip(configs, configs[1:]))}


def compare_predictors(pipeline: Pipeline, load: np.ndarray, headroom: float) -> None:
    """Backtest every predictor and replay the loop with it."""
    print(f"\npredictor comparison (horizon 1 interval, headroom {headroom:.0%}):")
    print(f"{'predictor':<14} {'mae':>6} {'rmse':>6} {'under':>6} {'slo_met':>8} "
          f"{'cores':>6} {'acc':>6} {'changes':>7}")
    for name, pred in [("last_value", LastValuePredictor()),
                       ("window_max/3", WindowMaxPredictor(window=3)),
                       ("window_max/6", WindowMaxPredictor(window=6)),
                       ("holt", HoltPredictor(alpha=0.5, beta=0.3)),
                       ("seasonal/180", SeasonalPredictor(period=180, gamma=0.2))]:
        bt = backtest(load, pred, horizon=1, warmup=6)
        s = summarise(replay(pipeline, load, pred, horizon=1, headroom=headroom, warmup=6))
        print(f"{name:<14} {bt['mae']:6.1f} {bt['rmse']:6.1f} {bt['under_rate']:6.2f} "
              f"{s['slo_met']:8.3f} {s['mean_cores']:6.1f} {s['mean_accuracy']:6.3f} "
              f"{s['changes']:7d}")


def plot(pipeline: Pipeline, steps: list[ReplayStep], interval_s: int, path: Path) -> None:
    """Load, capacity, and per-stage variant, batch, replicas and latency over time."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nmatplotlib is not installed: skipping {path.name}")
        return
    t = np.array([s.t for s in steps]) * interval_s / 60.0
    fig, ax = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    ax[0].plot(t, [s.actual_rps for s in steps], lw=1, label="actual load (next interval)")
    ax[0].plot(t, [s.predicted_rps for s in steps], lw=1, label="forecast")
    ax[0].plot(t, [s.outcome.capacity_rps for s in steps], lw=1, ls="--",
               label="capacity of the bottleneck stage")
    ax[0].set_ylabel("requests/s")
    ticks, labels = [], []
    for i, stage in enumerate(pipeline.stages):
        names = [v.name for v in stage.variants]
        ax[1].step(t, [i + 0.25 * names.index(s.decision.stages[i].variant) for s in steps],
                   where="post", label=stage.name)
        ticks += [i + 0.25 * r for r in range(len(names))]
        labels += names
        ax[2].step(t, [s.decision.stages[i].batch for s in steps], where="post", label=stage.name)
        ax[3].step(t, [s.decision.stages[i].replicas for s in steps], where="post",
                   label=stage.name)
    ax[1].set_yticks(ticks, labels, fontsize=7)
    ax[1].set_ylabel("variant")
    ax[2].set_yscale("log", base=2)
    ax[2].set_ylabel("batch")
    ax[3].set_ylabel("replicas")
    ax[4].plot(t, [s.outcome.latency_ms for s in steps], lw=1, label="latency at actual load")
    ax[4].axhline(pipeline.slo_ms, color="red", lw=1, ls=":", label="SLO")
    ax[4].set_ylabel("ms")
    ax[4].set_xlabel("minutes")
    for a in ax:
        a.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{pipeline.name}: adaptation over the load series")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="window_max",
                    choices=["last_value", "window_max", "holt", "seasonal"])
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--headroom", type=float, default=0.2)
    ap.add_argument("--every", type=int, default=12, help="print every N-th interval")
    ap.add_argument("--plot", type=Path, default=HERE / "decisions.png")
    args = ap.parse_args()
    pipeline, load, interval_s = load_inputs()
    steps = replay(pipeline, load, make_predictor(args.predictor, args.window), horizon=1,
                   headroom=args.headroom, warmup=6)
    print(f"{pipeline.name}: SLO {pipeline.slo_ms:.0f} ms (p{pipeline.latency_percentile:.0f}), "
          f"{len(load)} intervals of {interval_s} s, predictor {args.predictor}, "
          f"headroom {args.headroom:.0%}\n")
    print_table(steps, interval_s, args.every)
    s = summarise(steps)
    print(f"\nSLO met at the actual load in {s['slo_met']:.1%} of intervals "
          f"({s['capacity_short']} short of capacity, {s['latency_over']} over the SLO because "
          f"batches filled slower than planned); mean {s['mean_cores']:.1f} cores, "
          f"mean accuracy {s['mean_accuracy']:.3f}; configuration changed {s['changes']} times")
    compare_predictors(pipeline, load, args.headroom)
    plot(pipeline, steps, interval_s, args.plot)


if __name__ == "__main__":
    main()
