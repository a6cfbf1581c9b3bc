"""What a scheduling pass works on and what it answers (pure data, no I/O).

``Job`` is one pending task as the scheduler sees it; ``Running`` one task
holding resources, with when it started and how long it may run;
``PassResult`` what ``schedule.decide`` chose: the jobs to start with their
placements, why each other candidate waits, the reservations held and the
running tasks to preempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oaasd.core.placement import NodeTable, Placement, Request, passing

INF = math.inf
GPU_CPUS = 8.0  # a GPU-second is charged as this many cpu-seconds (fair share)


@dataclass(frozen=True, slots=True)
class Job:
    """One pending task: its placement request and what policies order it by.

    ``time_limit_s`` bounds how long it runs once started (None: unbounded);
    ``estimated_runtime_s`` is the user's guess (``sjf``), never enforced.
    """

    task_id: int
    priority: int
    submitted_at: float
    request: Request
    user: str = "anonymous"
    time_limit_s: float | None = None
    estimated_runtime_s: float | None = None
    preemptible: bool = False
    shape: tuple = field(init=False, repr=False, compare=False)  # ``shape(request)``, made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", shape(self.request))


@dataclass(frozen=True, slots=True)
class Running:
    """One task holding resources: its placement, start and limit (None: may run forever)."""

    task_id: int
    request: Request
    placement: Placement
    started_at: float
    time_limit_s: float | None = None
    user: str = "anonymous"
    ends_at: float = field(init=False)  # the latest time it can still hold its resources (inf: no limit)
    rate: float = field(init=False)  # usage charged per second: cpus + GPU_CPUS per GPU, times workers

    def __post_init__(self) -> None:
        object.__setattr__(self, "ends_at", INF if self.time_limit_s is None else self.started_at + self.time_limit_s)
        r = self.request
        object.__setattr__(self, "rate", r.workers * (r.cpu_milli / 1000 + GPU_CPUS * r.gpu_milli / 1000))


@dataclass(frozen=True, slots=True)
class Reservation:
    """Resources held for a job that does not fit now: from ``start_at`` (inf: not known) on
    ``placement`` (rows of the pass's table)."""

    task_id: int
    start_at: float
    placement: Placement


@dataclass
class PassResult:
    """What one pass decided.

    ``started``: (job, placement) in the order they must be reserved;
    ``reasons``: task id -> (Reason word, per-check node counts) of every
    candidate that waits; ``reservations``: held for jobs that wait;
    ``preemptions``: task ids of running tasks to stop (none yet).
    """

    started: list[tuple[Job, Placement]] = field(default_factory=list)
    reasons: dict[int, tuple[str, dict[str, int]]] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)
    preemptions: list[int] = field(default_factory=list)


def shape(r: Request) -> tuple:
    """A hashable shape of a request: equal shapes get equal placement answers on equal tables."""
    return (r.cpu_milli, r.memory_mb, r.gpu_milli, r.cores, r.workers, r.label_key, r.spread, r.exclusive,
            r.gpu_type)


def may_fit(t: NodeTable, request: Request) -> bool:
    """A necessary condition for ``place`` to succeed: enough worker slots on nodes passing the checks."""
    ok = passing(t, request, cores=False)
    if request.workers == 1:
        return bool(ok.any())
    rows = ok.nonzero()[0]
    if len(rows) == 0:
        return False
    cap = np.full(len(rows), request.workers, np.int64)
    for r, amount in request.asked:
        np.minimum(cap, t.free[rows, r] // amount, out=cap)
    return int(cap.sum()) >= request.workers
