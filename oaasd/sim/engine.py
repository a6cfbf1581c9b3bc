"""The simulator's clock: a trace replayed in virtual time through the daemon's own pass.

Events are arrivals (``submit_s``) and ends (start + ``duration_s``, or
start + the time limit when the task would run past it: the daemon kills it
TIMEOUT then). At each event time, every end is released first, then every
arrival queued, then one pass: ``oaasd.core.schedule.decide`` with the
policy, fit and weights the daemon would use, on the simulated node table,
and what it starts is reserved (``placement.reserve``) as the daemon's
cluster does. The queue is kept as the daemon's scheduler keeps it: sorted
by the policy's key, at most ``max_pass`` candidates a pass, the refusal
cache kept while only arrivals happened (and then only the new jobs and the
one holding a reservation are tried).
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from oaasd.core import placement as pl
from oaasd.core.jobs import Job, Running
from oaasd.core.policies import RESORT_S
from oaasd.core.schedule import decide
from oaasd.sim.trace import TraceRow


@dataclass(slots=True)
class Outcome:
    """What became of one trace row (task ids count from 1 in submit order, as the daemon's)."""

    task_id: int
    row: TraceRow
    start_s: float = math.nan
    end_s: float = math.nan
    timed_out: bool = False


@dataclass
class SimRun:
    """One policy's replay: every task's outcome, start order, passes run."""

    policy: str
    outcomes: list[Outcome]
    order: list[int]  # task ids in start order
    passes: int
    capacity: np.ndarray  # (r,) int64 total of each resource


def simulate(rows: Sequence[TraceRow], table: pl.NodeTable, policy: Any, *, fit: str = "best",
             weights: np.ndarray | None = None, max_pass: int = 1000,
             default_time_limit_s: float | None = None) -> SimRun:
    """Replay ``rows`` (sorted by submit_s) on an idle copy of ``table`` under ``policy``."""
    table, policy = table.copy(), copy.deepcopy(policy)  # a policy's usage ledger starts empty each replay
    outcomes = [Outcome(i + 1, r) for i, r in enumerate(rows)]
    jobs: dict[int, Job] = {}
    queue: list[tuple[tuple, int]] = []  # (policy key, task id), sorted
    keys: dict[int, tuple] = {}
    running: dict[int, Running] = {}
    ends: list[tuple[float, int]] = []  # (end time, task id) heap
    refused: dict[tuple, dict[str, int]] = {}
    fresh: list[int] = []
    held: list = []  # the last pass's reservations
    order: list[int] = []
    changed, passes, i, n, sorted_at = True, 0, 0, len(rows), -math.inf
    while i < n or ends:
        now = min(rows[i].submit_s if i < n else math.inf, ends[0][0] if ends else math.inf)
        while ends and ends[0][0] <= now:
            _, tid = heapq.heappop(ends)
            done = running.pop(tid)
            pl.release(table, done.request, done.placement)
            changed = True
        while i < n and rows[i].submit_s <= now:
            row, tid = rows[i], i + 1
            i += 1
            job = Job(tid, 0, row.submit_s, row.request(), row.user,
                      row.time_limit_s if row.time_limit_s is not None else default_time_limit_s,
                      row.estimated_runtime_s, row.preemptible)
            jobs[tid] = job
            keys[tid] = key = policy.key(job)
            bisect.insort(queue, (key, tid))
            fresh.append(tid)
        if not policy.static and now - sorted_at >= RESORT_S:  # keys moved with usage and age
            queue = sorted((policy.key(jobs[t]), t) for _, t in queue)
            keys.update({t: k for k, t in queue})
            sorted_at = now
        hint = () if changed else held
        if changed:
            refused.clear()
            candidates = [jobs[t] for _, t in queue[:max_pass]]
            changed = False
        else:
            tried = sorted({t for t in fresh + [r.task_id for r in held] if t in jobs}, key=keys.__getitem__)
            candidates = [jobs[t] for t in tried[:max_pass]]
        fresh = []
        if not candidates:
            continue
        result = decide(candidates, list(running.values()) if policy.reserves or not policy.static else (), table,
                        policy, now,
                        fit=fit, weights=weights, refused=refused, default_time_limit_s=default_time_limit_s,
                        hint=hint, presorted=True, counts=False)
        passes += 1
        held = result.reservations
        for job, placed in result.started:
            tid = job.task_id
            pl.reserve(table, job.request, placed)
            del queue[bisect.bisect_left(queue, (keys.pop(tid), tid))]
            del jobs[tid]
            running[tid] = Running(tid, job.request, placed, now, job.time_limit_s, job.user)
            out = outcomes[tid - 1]
            out.start_s = now
            run_for = out.row.duration_s
            if job.time_limit_s is not None and run_for > job.time_limit_s:
                run_for, out.timed_out = job.time_limit_s, True
            out.end_s = now + run_for
            heapq.heappush(ends, (out.end_s, tid))
            order.append(tid)
    return SimRun(policy.name, outcomes, order, passes, table.total.sum(0))
