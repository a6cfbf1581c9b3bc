"""One scheduling pass as a pure function: ``decide``.

``decide(queue, running, table, policy, now)`` orders the queue by the
policy and places on a working copy of ``table`` (the table itself is never
changed), each placement assumed before the next. The daemon's scheduler,
the trace simulator (``oaasd simulate``) and the benchmarks call this very
function; the service around it only keeps the queue, the wake-ups and the
refusal cache, and reserves what the pass started.

Two ways through the ordered queue:

- greedy (``fifo``): every job that fits starts, in order; a refused job
  does not block later ones (``place_queue`` on one working copy);
- EASY backfill (a policy with ``reserves``): see ``oaasd.core.backfill``.

``refused`` is the caller's cache, request shape -> per-check counts, of
shapes refused on the free arrays since they last grew: within one pass and
across passes while nothing was freed, the same shape gets the same "no",
so a deep queue of a few shapes costs a dict lookup per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from oaasd.core import placement as pl
from oaasd.core.backfill import easy_backfill
from oaasd.core.jobs import Job, PassResult, Reservation, Running, may_fit
from oaasd.core.placement.table import assume
from oaasd.states import Reason

RESOURCES = Reason.RESOURCES.value


def decide(queue: Sequence[Job], running: Sequence[Running], table: pl.NodeTable, policy: Any, now: float, *,
           fit: str = "best", weights: np.ndarray | None = None, refused: dict[tuple, dict[str, int]] | None = None,
           default_time_limit_s: float | None = None, hint: Sequence[Reservation] = (),
           presorted: bool = False, counts: bool = True) -> PassResult:
    """One pass: which of ``queue`` start now and where, and why the others wait.

    ``running``: what holds resources on ``table`` (their placements are on
    its rows), for the reservations of a policy that ``reserves``. ``fit`` and
    ``weights`` are the placement scorer's. ``default_time_limit_s`` is the
    limit assumed for a job without one when backfilling. ``hint``: the last
    pass's reservations, given only when nothing was freed since (a held one
    is then kept if its rows are still free at its start: no search).
    ``presorted``: ``queue`` is already in the order of the policy's ``key`` (a
    queue kept sorted by it), and the policy orders by that key alone.
    ``counts`` False: a job that cannot fit gets no per-check node counts
    (a simulator shows none), so a cheap check can refuse it: the same
    decisions at a fraction of the cost of a Refusal's counting.
    """
    refused = {} if refused is None else refused
    ordered = queue if presorted and getattr(policy, "static", False) else policy.order(queue, running, now)
    if getattr(policy, "reserves", False):
        return easy_backfill(ordered, running, table, now, fit=fit, weights=weights, refused=refused,
                             default_time_limit_s=default_time_limit_s, hint=hint, counts=counts)
    return greedy(ordered, table, fit=fit, weights=weights, refused=refused, counts=counts)


def greedy(ordered: Sequence[Job], table: pl.NodeTable, *, fit: str = "best", weights: np.ndarray | None = None,
           refused: dict[tuple, dict[str, int]], counts: bool = True) -> PassResult:
    """Every job that fits starts, in order, each placement assumed before the next.

    The same answers as one ``place_queue`` over the jobs whose shape is not
    known refused, at a cost bounded by what can change: the jobs go in
    chunks (8, 16, ... 256) on one working copy, and a shape refused in an
    earlier chunk is not placed again (free amounts only shrink in a pass),
    so a deep queue of a few shapes costs a few placements, then a dict
    lookup per job.
    """
    result = PassResult()
    reasons = result.reasons
    work: pl.NodeTable | None = None
    size, i, n = 8, 0, len(ordered)
    while i < n:
        todo: list[Job] = []
        while i < n and len(todo) < size:
            job = ordered[i]
            i += 1
            known = refused.get(job.shape)
            if known is not None:  # same shape, same (or smaller) free arrays: same answer
                reasons[job.task_id] = (RESOURCES, known)
            elif not counts and not may_fit(work or table, job.request):  # ``work`` lags this chunk: still a "no"
                reasons[job.task_id] = (RESOURCES, refused.setdefault(job.shape, {}))
            else:
                todo.append(job)
        if not todo:
            continue
        if work is None:
            work = table.copy()
        for job, got in zip(todo, pl.place_queue(work, [j.request for j in todo], fit, weights)):
            if isinstance(got, pl.Refusal):
                reasons[job.task_id] = (RESOURCES, refused.setdefault(job.shape, dict(got.counts)))
            else:
                assume(work, got)  # place_queue left ``work`` as it was: the next chunk sees this one
                result.started.append((job, got))
        size = min(2 * size, 256)
    return result
