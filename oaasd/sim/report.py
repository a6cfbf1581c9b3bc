"""What a replay measured, and the tables that compare policies.

Per policy: job completion time (end - submit) and queueing delay (start -
submit), average / p50 / p95 / p99; makespan (last end - first submit);
utilization of each resource (resource-seconds used / capacity x
makespan); Jain's fairness index over users of ``1 / mean slowdown``
(slowdown = completion time / max(run time, 1 s)): 1 when every user waits
in proportion to their work alike, 1/users when one user gets all the
service; tasks timed out, tasks never started.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from oaasd.core.placement import RESOURCES
from oaasd.sim.engine import SimRun

UNIT = {"cpu_milli": "cpu", "memory_mb": "memory", "gpu_milli": "gpus"}


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"avg": math.nan, "p50": math.nan, "p95": math.nan, "p99": math.nan}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"avg": float(values.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def jain(x: np.ndarray) -> float:
    """Jain's fairness index of non-negative amounts: (sum x)^2 / (n sum x^2), in [1/n, 1]."""
    if not len(x) or not (x > 0).any():
        return math.nan
    return float(x.sum() ** 2 / (len(x) * (x * x).sum()))


def metrics(run: SimRun) -> dict[str, Any]:
    """The figures of one replay, as a JSON-able dict."""
    done = [o for o in run.outcomes if not math.isnan(o.start_s)]
    submit = np.array([o.row.submit_s for o in done])
    start = np.array([o.start_s for o in done])
    end = np.array([o.end_s for o in done])
    jct, wait = end - submit, start - submit
    makespan = float(end.max() - min(o.row.submit_s for o in run.outcomes)) if done else 0.0
    use = np.zeros(3)
    for o in done:
        r = o.row
        use += (o.end_s - o.start_s) * r.workers * np.array([round(r.cpus * 1000), r.memory_mb, r.gpus * 1000])
    cap = run.capacity.astype(float) * makespan
    utilization = {UNIT[name]: (float(use[k] / cap[k]) if cap[k] > 0 else None) for k, name in enumerate(RESOURCES)}
    slow: dict[str, list[float]] = {}
    for o, t in zip(done, jct):
        slow.setdefault(o.row.user, []).append(t / max(o.end_s - o.start_s, 1.0))
    per_user = np.array([1.0 / np.mean(v) for v in slow.values()])
    return {
        "policy": run.policy, "tasks": len(run.outcomes), "started": len(done),
        "never_started": len(run.outcomes) - len(done), "timed_out": sum(o.timed_out for o in done),
        "passes": run.passes, "jct_s": _stats(jct), "wait_s": _stats(wait), "makespan_s": makespan,
        "utilization": utilization, "fairness_jain": jain(per_user), "users": len(slow),
    }


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def table(results: list[dict[str, Any]]) -> str:
    """A plain-text comparison, one row per policy."""
    head = ["policy", "tasks", "jct avg", "jct p50", "jct p95", "jct p99", "wait avg", "wait p95", "wait p99",
            "makespan", "util cpu", "util mem", "util gpu", "jain", "timeout", "unstarted"]
    rows = [[m["policy"], m["tasks"], m["jct_s"]["avg"], m["jct_s"]["p50"], m["jct_s"]["p95"], m["jct_s"]["p99"],
             m["wait_s"]["avg"], m["wait_s"]["p95"], m["wait_s"]["p99"], m["makespan_s"],
             m["utilization"]["cpu"], m["utilization"]["memory"], m["utilization"]["gpus"], m["fairness_jain"],
             m["timed_out"], m["never_started"]] for m in results]
    cells = [head] + [[_fmt(c) for c in r] for r in rows]
    width = [max(len(r[k]) for r in cells) for k in range(len(head))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, width))) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in width), *lines[1:]])


def markdown(results: list[dict[str, Any]]) -> str:
    """The same comparison as a Markdown table (for RESULTS)."""
    head = ("| policy | jct avg s | jct p50 | jct p95 | jct p99 | wait avg s | wait p95 | wait p99 | makespan s "
            "| util cpu | util gpu | Jain | timed out |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for m in results:
        out.append("| " + " | ".join(_fmt(x) for x in (
            m["policy"], m["jct_s"]["avg"], m["jct_s"]["p50"], m["jct_s"]["p95"], m["jct_s"]["p99"],
            m["wait_s"]["avg"], m["wait_s"]["p95"], m["wait_s"]["p99"], m["makespan_s"], m["utilization"]["cpu"],
            m["utilization"]["gpus"], m["fairness_jain"], m["timed_out"])) + " |")
    return "\n".join(out)
