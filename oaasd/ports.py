"""The seams between oaasd's parts, on one page.

Reading this module shows the architecture: the scheduler asks a Policy to
order the queue, places with the pure functions of ``placement``, asks a
Launcher to start an attempt and gets back a Handle; the result reporter
turns the Handle's Exit and the reported lines into store verbs; a Sampler
proposes tuning configurations. Nothing here imports an implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Host:
    """One node of a placement and how many worker slots it holds."""

    node: str
    address: str
    slots: int


@dataclass(frozen=True)
class LaunchJob:
    """Everything a launcher needs to start one attempt.

    ``argv`` is the program to run (never a shell string); ``env`` is the
    complete extra environment (``OAAS_*`` and the user's); ``attempt_dir``
    is on the head node and holds ``stdout.log``, ``stderr.log``,
    ``result.json``, ``exit`` and, for MPI, ``hostfile``.
    """

    task_id: int
    attempt_id: int
    argv: Sequence[str]
    env: dict[str, str]
    workdir: str | None
    attempt_dir: Path
    hosts: Sequence[Host]
    workers: int
    user: str | None = None  # the API user: launchers map it to the Unix account the task runs as

    @property
    def stdout_path(self) -> Path:
        return self.attempt_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.attempt_dir / "stderr.log"

    @property
    def result_path(self) -> Path:
        return self.attempt_dir / "result.json"

    @property
    def exit_path(self) -> Path:
        return self.attempt_dir / "exit"


@dataclass(frozen=True)
class Exit:
    """How an attempt ended, as seen by its launcher.

    ``lost`` means the launcher could not learn the outcome (process gone
    without an exit record, connection dropped, node unreachable): the
    result reporter treats it as a node failure, never as success.
    """

    exit_code: int | None
    signal: str | None = None
    lost: bool = False
    reason: str | None = None
    fault: str | None = None  # a Reason blaming the task itself (BadWorkdir): final, never retried


@dataclass(frozen=True)
class Locator:
    """What a restarted daemon needs to find a running attempt again."""

    pid: int
    start_time: float
    extra: dict[str, Any] = field(default_factory=dict)


class Handle(Protocol):
    """A running attempt: wait for it, signal it, find it again later."""

    locator: Locator

    async def wait(self) -> Exit:
        """Return once the attempt's processes have ended."""

    async def kill(self, grace_s: float) -> None:
        """SIGTERM the whole process group (every rank), SIGKILL after grace_s."""


class Launcher(Protocol):
    """Starts attempts on one kind of node (local, ssh, mpi)."""

    async def start(self, job: LaunchJob) -> Handle:
        """Start ``job``; its stdout/stderr must reach the job's log files."""

    async def adopt(self, job: LaunchJob, locator: Locator) -> Handle | None:
        """Reattach to an attempt started before a restart, or None if gone."""

    async def close(self) -> None:
        """Release connections; running attempts are left to be re-adopted."""


class Policy(Protocol):
    """Orders the pending queue; the scheduler places in that order."""

    name: str

    def order(self, pending: Sequence[Any], now: float) -> list[Any]:
        """Return the pending tasks in the order placement should try them."""


class Sampler(Protocol):
    """Proposes tuning configurations from the history (pure, seeded)."""

    def suggest(self, history: Sequence[Any], pending: Sequence[dict], n: int) -> list[dict]:
        """Return ``n`` new configurations distinct from ``pending``."""


class Notifier(Protocol):
    """Receives every event the result reporter publishes."""

    def publish(self, event: dict[str, Any]) -> None:
        """Deliver without blocking; slow consumers must not stall the loops."""
