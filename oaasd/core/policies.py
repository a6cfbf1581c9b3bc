"""Queue policies: the order in which the scheduler tries pending tasks (pure, no asyncio).

A policy is named by ``[scheduler] policy``. Each gives a sort key per
queued task, so the scheduler can keep its queue sorted as tasks come and
go (one ``bisect`` per task, not a sort per pass), and an ``order`` over a
whole snapshot for callers that have one (a simulator, a test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def fifo_key(priority: int, task_id: int, submitted_at: float) -> tuple[int, int]:
    """FIFO within priority: higher priority first, then submission order (ids grow with it)."""
    return (-priority, task_id)


@dataclass(frozen=True)
class Fifo:
    """Priority, then submission: today's (and Slurm's default) order."""

    name: str = "fifo"

    def key(self, priority: int, task_id: int, submitted_at: float) -> tuple[int, int]:
        """The sort key of one queued task."""
        return fifo_key(priority, task_id, submitted_at)

    def order(self, pending: Sequence[Any], now: float) -> list[Any]:
        """Entries with ``priority``, ``task_id`` and ``submitted_at``, in placement order."""
        return sorted(pending, key=lambda e: fifo_key(e.priority, e.task_id, e.submitted_at))


POLICIES = {"fifo": Fifo()}


def policy_named(name: str) -> Fifo:
    """The policy ``[scheduler] policy`` names."""
    return POLICIES[name]
