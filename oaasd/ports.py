"""The seams between oaasd's parts, on one page.

Reading this module shows the architecture. A submission enters through
``Intake`` (the one submit verb of user tasks, tuning trials and pipeline
replicas), is committed by the ``TaskStore`` and joins the ``Queue``; the
scheduler hands its queue, what runs and its ``Policy`` to the pure pass
``oaasd.core.schedule.decide`` (which orders by the policy and places with
the functions of ``oaasd.core.placement``), reserves what it started and
hands that to the runner, which asks a ``Launcher`` to start the attempt and gets back a
``Handle``. The result reporter turns the Handle's ``Exit`` and the
reported lines into store verbs, tells an ``EventSink`` and fans out
through ``Hooks`` (tunings and callbacks subscribe there: the reporter never
calls back up). A ``Sampler`` proposes tuning configurations.

Components receive these collaborators in their constructors; nothing here
imports an implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, NamedTuple, Protocol, Sequence


# ---- the vocabulary of the seams ------------------------------------------
@dataclass(frozen=True)
class Binding:
    """What a placement decided for one node of an attempt, for the node to enforce.

    ``cores``: core indices on the node that are the CPU affinity of every
    process of the attempt there (empty: no affinity). ``cpu_quota``: cores'
    worth of CPU time per period (a cgroup quota; None: none). ``memory_mb``:
    the memory limit of the attempt on this node (0: none). ``gpus``: device
    indices the task sees (``CUDA_VISIBLE_DEVICES``); ``gpu_vendor`` picks the
    variable (``nvidia`` or ``amd``). ``socket``: the socket the cores lie in,
    when they lie in one.
    """

    cores: tuple[int, ...] = ()
    cpu_quota: float | None = None
    memory_mb: int = 0
    gpus: tuple[int, ...] = ()
    gpu_vendor: str = "nvidia"
    socket: int | None = None


NO_BINDING = Binding()


@dataclass(frozen=True)
class Host:
    """One node of a placement, how many worker slots it holds and what is bound there."""

    node: str
    address: str
    slots: int
    binding: Binding = NO_BINDING


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
    resources: Any = None  # the spec's per-worker Resources (a workload manager requests them: slurm)
    time_limit_s: float | None = None
    spread: bool = False  # placement "spread": one worker per node

    @property
    def stdout_path(self) -> Path:
        """The attempt's stdout log on the head node."""
        return self.attempt_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        """The attempt's stderr log on the head node."""
        return self.attempt_dir / "stderr.log"

    @property
    def result_path(self) -> Path:
        """Where the task may write its final JSON (``OAAS_RESULT_FILE``)."""
        return self.attempt_dir / "result.json"

    @property
    def exit_path(self) -> Path:
        """The exit record the wrapper writes."""
        return self.attempt_dir / "exit"


@dataclass(frozen=True)
class Exit:
    """How an attempt ended, as seen by its launcher.

    ``lost`` means the launcher could not learn the outcome (process gone
    without an exit record, connection dropped, node unreachable): the
    result reporter treats it as a node failure, never as success.
    ``oom``: the attempt's cgroup counted an OOM kill (it ends OUT_OF_MEMORY).
    ``max_rss_mb`` and ``cpu_s`` (user + system) are its accounting, None
    when unknown (sacct's MaxRSS and TotalCPU).
    """

    exit_code: int | None
    signal: str | None = None
    lost: bool = False
    reason: str | None = None
    fault: str | None = None  # a Reason blaming the task itself (BadWorkdir): final, never retried
    oom: bool = False
    max_rss_mb: float | None = None
    cpu_s: float | None = None
    state: str | None = None  # a final State a workload manager decided (Slurm's TIMEOUT, OUT_OF_MEMORY)


@dataclass(frozen=True)
class Locator:
    """What a restarted daemon needs to find a running attempt again."""

    pid: int
    start_time: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialLink:
    """A submission that is a trial of a daemon-run tuning (its ``trials`` row)."""

    tuning_id: int
    config: dict[str, Any]
    baseline: bool


@dataclass(frozen=True)
class ReplicaLink:
    """A submission that is a replica of a pipeline stage (its ``pipeline_tasks`` row)."""

    pipeline_id: int
    stage: str
    variant: str
    batch: int


Link = TrialLink | ReplicaLink  # committed in the same transaction as the task it links


class Submitted(NamedTuple):
    """What intake answers: the task's id, whether it is new (not an idempotent repeat), when it came in."""

    task_id: int
    created: bool
    submitted_at: float


@dataclass(frozen=True)
class Placed:
    """What one scheduling pass decided for one task: its request and placement (core types)."""

    task_id: int
    request: Any  # oaasd.core.placement Request
    placement: Any  # oaasd.core.placement Placement, reserved on the cluster before it is handed on


@dataclass(frozen=True)
class TaskEnd:
    """A task reached a final state (committed): what the ``task_ended`` hooks learn."""

    task_id: int
    state: str
    result: Any
    callback_url: str | None


@dataclass(frozen=True)
class MetricsReport:
    """New ``OAAS_METRIC`` lines of a running attempt (committed): what the ``metrics_reported`` hooks learn."""

    task_id: int
    attempt_id: int
    series: Sequence[dict[str, Any]]  # every metric of this attempt so far, oldest first
    new: Sequence[dict[str, Any]]
    stopping: bool  # a cancel of the attempt is under way


# ---- the seams ----------------------------------------------------------------
class TaskStore(Protocol):
    """The store verbs the task services use (``oaasd.store`` implements them; all SQL lives there)."""

    async def submit(self, task: Any, link: Link | None = None) -> tuple[int, bool]:
        """Commit a task PENDING (and its link row, same transaction); (id, created)."""

    async def cancel_pending(self, task_id: int, reason: str, message: str | None = None) -> None:
        """PENDING -> CANCELLED by compare-and-set."""

    async def request_cancel(self, task_id: int, reason: str) -> bool:
        """Persist a cancel request on a RUNNING task before it is killed."""

    async def start_attempt(self, task_id: int, node: str, placement: dict[str, Any]) -> tuple[int, int]:
        """PENDING -> RUNNING and the attempt row; (attempt_id, seq)."""

    async def set_locator(self, attempt_id: int, locator: dict[str, Any]) -> None:
        """Record where a running attempt can be found again."""

    async def finish_attempt(self, attempt_id: int, task_id: int, attempt_state: Any, task_state: Any,
                             reason: str, message: str | None = None, **fields: Any) -> None:
        """End an attempt and move its task, in one transaction."""

    async def record_output(self, attempt_id: int, stdout_offset: int, metrics_stored: int,
                            metrics_dropped: int, metrics: list[tuple[int, float, dict]]) -> None:
        """Append an attempt's new metrics with the offset after them."""

    async def get_task(self, task_id: int) -> dict[str, Any]:
        """One task row (404 when unknown)."""

    async def list_tasks(self, *, state: str | None = None, user: str | None = None, name: str | None = None,
                         parent_id: int | None = None, before: int | None = None,
                         limit: int = 100) -> list[dict[str, Any]]:
        """Tasks newest first, filtered, with ids below ``before``."""

    async def task_events(self, task_id: int) -> list[dict[str, Any]]:
        """A task's state history, oldest first."""

    async def task_attempts(self, task_id: int) -> list[dict[str, Any]]:
        """A task's attempts, first first."""

    async def task_metrics(self, task_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """A task's last metrics, oldest first."""

    async def count_pending(self, user: str) -> int:
        """How many PENDING tasks a user holds."""

    async def count_by_state(self) -> dict[str, int]:
        """How many tasks are in each state."""

    async def pending_queue(self) -> list[tuple]:
        """(id, priority, submitted_at, spec, cancel_reason) of every PENDING task (at start)."""

    async def running_attempts(self) -> list[dict[str, Any]]:
        """Every attempt still RUNNING, with its task's spec and cancel request (at start)."""

    async def load_nodes(self) -> list[dict[str, Any]]:
        """Every stored node row: run-time additions, removals and intents."""

    async def save_node(self, name: str, config: dict[str, Any] | None, source: str) -> None:
        """Record a node added at run time or removed."""

    async def set_node_intent(self, name: str, intent: str | None, reason: str | None, user: str | None,
                              at: float | None) -> None:
        """Store an admin's intent for a node (None clears it)."""

    async def schema_version(self) -> int:
        """The applied schema version."""


class Queue(Protocol):
    """The pending queue the scheduler places from."""

    default_time_limit_s: float | None  # ``[scheduler] default_time_limit_s``: intake gives it to tasks without one

    def add(self, task_id: int, priority: int, submitted_at: float, request: Any, spec: Any = None) -> None:
        """Queue a committed PENDING task; ``spec`` (its TaskSpec: user, limits) None keeps what is known."""

    def discard(self, task_id: int) -> bool:
        """Drop a task from the queue (cancelled); False if it was not queued."""

    def wake(self) -> None:
        """Resources or nodes changed: ask for a full pass."""


class Intake(Protocol):
    """The one way tasks come in and are cancelled: user tasks, tuning trials, pipeline replicas."""

    async def submit(self, spec: Any, link: Link | None = None) -> Submitted:
        """Refuse what can never fit, commit (with ``link``), queue, publish."""

    async def cancel(self, task_id: int, reason: str) -> bool:
        """Cancel a pending task or kill a running one; False when it had already ended."""

    async def stop_running(self, task_id: int, reason: str) -> bool:
        """Kill a running task's attempt (it ends CANCELLED); False when it is not running here."""


class Policy(Protocol):
    """Orders the pending queue (pure); ``oaasd.core.schedule.decide`` runs the pass in that order.

    Jobs are ``oaasd.core.jobs.Job`` (id, priority, submission, user, limits,
    request); running tasks ``oaasd.core.jobs.Running`` (placement, start, limit).
    """

    name: str
    reserves: bool  # the first job that does not fit holds a reservation (EASY backfill)
    static: bool  # the key depends on the job alone; else on usage and time too (re-sorted now and then)

    def key(self, job: Any) -> tuple:
        """The sort key of one queued job (smaller goes first): the scheduler keeps its queue sorted by it."""

    def order(self, queue: Sequence[Any], running: Sequence[Any], now: float) -> list[Any]:
        """The jobs of ``queue`` in placement order, given what runs and the time."""


class Handle(Protocol):
    """A running attempt: wait for it, signal it, find it again later."""

    locator: Locator

    async def wait(self) -> Exit:
        """Return once the attempt's processes have ended."""

    async def kill(self, grace_s: float) -> None:
        """SIGTERM the whole process group (every rank), SIGKILL after grace_s."""


class Queued(Handle, Protocol):
    """A handle whose attempt a workload manager may still hold in its queue (slurm)."""

    waiting: str | None  # why it is not running yet ("SlurmPending: Priority"), None once it runs


class Detachable(Handle, Protocol):
    """A handle that follows a remote attempt (ssh): it can stop following and leave it running."""

    def detach(self) -> None:
        """Stop following (daemon shutdown); the attempt keeps running."""


class Launcher(Protocol):
    """Starts attempts on one kind of node (local, ssh, mpi)."""

    async def start(self, job: LaunchJob) -> Handle:
        """Start ``job``; its stdout/stderr must reach the job's log files."""

    async def adopt(self, job: LaunchJob, locator: Locator) -> Handle | None:
        """Reattach to an attempt started before a restart, or None if gone."""

    async def close(self) -> None:
        """Release connections; running attempts are left to be re-adopted."""


class Prober(Protocol):
    """A launcher that can probe its nodes (ssh): what the health loop asks."""

    async def probe(self, node: str) -> dict[str, Any]:
        """Reachability, load, memory and disk of ``node``; raises when it is unusable."""


class Sampler(Protocol):
    """Proposes tuning configurations from the history (pure, seeded)."""

    def suggest(self, history: Sequence[Any], pending: Sequence[dict], n: int) -> list[dict]:
        """Return up to ``n`` new configurations distinct from ``pending``."""


class EventSink(Protocol):
    """Receives every event the daemon publishes (state changes, metrics, tunings)."""

    def publish(self, event: dict[str, Any]) -> None:
        """Deliver without blocking; slow consumers must not stall the loops."""


TaskEnded = Callable[[TaskEnd], Awaitable[None]]
MetricsReported = Callable[[MetricsReport], Awaitable[None]]


class Hooks(Protocol):
    """Where "a task ended" and "an attempt reported metrics" fan out to their subscribers."""

    def on_task_ended(self, hook: TaskEnded) -> None:
        """Subscribe ``hook`` to every committed final state."""

    def on_metrics_reported(self, hook: MetricsReported) -> None:
        """Subscribe ``hook`` to every committed batch of intermediate metrics."""

    async def task_ended(self, end: TaskEnd) -> None:
        """Tell every subscriber, in subscription order."""

    async def metrics_reported(self, report: MetricsReport) -> None:
        """Tell every subscriber, in subscription order."""
