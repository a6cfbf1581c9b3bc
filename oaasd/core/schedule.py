"""One scheduling pass as a pure function: ``decide``.

``decide(queue, running, table, policy, now)`` orders the queue by the
policy and places on a working copy of ``table`` (the table itself is never
changed), each placement assumed before the next. The daemon's scheduler,
the trace simulator (``oaasd simulate``) and the benchmarks call this very
function; the service around it only keeps the queue, the wake-ups and the
refusal cache, and reserves what the pass started.

Two ways through the ordered queue:

- greedy (``fifo``): every job that fits starts, in order; a refused job
  does not block later ones (``place_queue``, one call for the pass);
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
from oaasd.core.jobs import Job, PassResult, Running, shape
from oaasd.states import Reason

RESOURCES = Reason.RESOURCES.value


def decide(queue: Sequence[Job], running: Sequence[Running], table: pl.NodeTable, policy: Any, now: float, *,
           fit: str = "best", weights: np.ndarray | None = None, refused: dict[tuple, dict[str, int]] | None = None,
           default_time_limit_s: float | None = None) -> PassResult:
    """One pass: which of ``queue`` start now and where, and why the others wait.

    ``running``: what holds resources on ``table`` (their placements are on
    its rows), for the reservations of a policy that ``reserves``. ``fit`` and
    ``weights`` are the placement scorer's. ``default_time_limit_s`` is the
    limit assumed for a job without one when backfilling.
    """
    refused = {} if refused is None else refused
    ordered = policy.order(queue, running, now)
    if getattr(policy, "reserves", False):
        return easy_backfill(ordered, running, table, now, fit=fit, weights=weights, refused=refused,
                             default_time_limit_s=default_time_limit_s)
    return greedy(ordered, table, fit=fit, weights=weights, refused=refused)


def greedy(ordered: Sequence[Job], table: pl.NodeTable, *, fit: str = "best", weights: np.ndarray | None = None,
           refused: dict[tuple, dict[str, int]]) -> PassResult:
    """Every job that fits starts, in order, on one working copy (``place_queue``)."""
    result = PassResult()
    reasons = result.reasons
    todo: list[Job] = []
    for job in ordered:
        known = refused.get(shape(job.request))
        if known is not None:  # same shape, same (or smaller) free arrays: same answer
            reasons[job.task_id] = (RESOURCES, known)
        else:
            todo.append(job)
    placed = pl.place_queue(table, [j.request for j in todo], fit, weights)
    for job, got in zip(todo, placed):
        if isinstance(got, pl.Refusal):
            reasons[job.task_id] = (RESOURCES, refused.setdefault(shape(job.request), dict(got.counts)))
        else:
            result.started.append((job, got))
    return result
