"""Queue policies: the order in which a scheduling pass tries pending jobs (pure, no asyncio).

A policy is named by ``[scheduler] policy``. Each gives a sort key per
queued job, so the scheduler can keep its queue sorted as jobs come and go
(one ``bisect`` per job, not a sort per pass), and an ``order`` over a
whole snapshot, which ``schedule.decide`` calls. ``reserves`` says whether
the pass holds a reservation for the first job that does not fit (EASY
backfill) instead of letting any later job that fits overtake it.

A job (``schedule.Job``) carries ``priority``, ``task_id``,
``submitted_at``, ``user``, ``time_limit_s`` and ``estimated_runtime_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def fifo_key(priority: int, task_id: int, submitted_at: float) -> tuple[int, int]:
    """FIFO within priority: higher priority first, then submission order (ids grow with it)."""
    return (-priority, task_id)


@dataclass(frozen=True)
class Fifo:
    """Priority, then submission; any later job that fits starts (may starve wide jobs)."""

    name: str = "fifo"
    reserves: bool = False
    static: bool = True  # ``order`` is the sort by ``key``: a queue kept sorted by it is in order

    def key(self, job: Any) -> tuple:
        """The sort key of one queued job (smaller goes first)."""
        return fifo_key(job.priority, job.task_id, job.submitted_at)

    def order(self, queue: Sequence[Any], running: Sequence[Any], now: float) -> list[Any]:
        """The jobs in placement order (a stable sort: an already sorted queue costs one scan)."""
        return sorted(queue, key=self.key)


@dataclass(frozen=True)
class Backfill(Fifo):
    """FIFO order with EASY backfill: the first job that does not fit holds a reservation."""

    name: str = "backfill"
    reserves: bool = True


POLICIES: dict[str, Any] = {p.name: p for p in (Fifo(), Backfill())}


def policy_named(name: str) -> Any:
    """The policy ``[scheduler] policy`` names; ValueError naming the choices for another name."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; choose one of {', '.join(POLICIES)}") from None
