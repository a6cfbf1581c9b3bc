"""What the API answers, as pydantic models: the response half of the contract.

The handlers build these bodies as plain dicts (``Daemon.summarize``,
``Cluster.view``, ``Tunings.view``, ``Pipelines.view``...); the models here describe them for the
OpenAPI document (``oaasd/http/openapi.py``), and the schemathesis run checks
every live answer against them. Times are UTC epoch seconds (``*_at``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from oaasd.http.tunings import TUNING_STATES
from oaasd.models import TaskSpec
from oaasd.pipeline.loop import STATES as PIPELINE_STATES
from oaasd.service.cluster import NODE_STATES
from oaasd.states import State
from oaasd.tuning.description import Objective

NodeState = Literal[NODE_STATES]  # type: ignore[valid-type]
TuningState = Literal[TUNING_STATES]  # type: ignore[valid-type]
PipelineState = Literal[PIPELINE_STATES]  # type: ignore[valid-type]
TrialState = Literal[tuple(s.value for s in State) + ("PRUNED",)]  # type: ignore[valid-type]


class View(BaseModel):
    """Base of response bodies: a key not listed breaks the contract; one with a default may be absent."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    """One problem of a refused request; some carry more keys (``type``, ``requested``, ``capacity``...)."""

    model_config = ConfigDict(extra="allow")

    field: str = Field(description="the field, parameter or header at fault (dotted for nested fields)")
    problem: str


class Error(View):
    """Every 4xx and 5xx answer: a reason code, a sentence, and what was wrong where."""

    error: str = Field(description="reason code, e.g. ValidationFailed, NotFound, Unsatisfiable")
    message: str
    detail: list[ErrorDetail]


# ---- tasks ---------------------------------------------------------------
class TaskSummary(View):
    """A task in lists and in the answers to submit and cancel."""

    id: int
    name: str
    user: str
    state: State
    reason: str | None = Field(description="why it is in its state; for PENDING, why it waits (Resources, Priority...)")
    message: str | None
    priority: int
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    node_failures: int
    attempt_count: int
    result: Any = Field(description="the final OAAS_RESULT JSON, null until there is one")
    nodes_rejected: dict[str, int] | None = Field(
        None, description="PENDING only: how many nodes each placement check rejected")
    priority_factors: dict[str, float] | None = Field(
        None, description="PENDING under the priority policy only: each factor in [0, 1] (age, fair_share, "
                          "size, priority, qos) and their weighted sum, 'score', like Slurm's sprio")


class EnforcedView(View):
    """The cgroup an attempt ran in."""

    enforcement: Literal["cgroup1", "cgroup2"]
    cgroups: list[str] = Field(description="its directories (one per hierarchy in v1)")


class HistoryEntry(View):
    """One recorded state change."""

    at: float
    old: State | None
    new: State
    reason: str | None
    message: str | None


class HostBinding(View):
    """What placement bound on one node of an attempt, for the node to enforce."""

    cores: list[int] = Field(description="core indices: the CPU affinity of the attempt's processes there")
    cpu_quota: float | None = Field(description="cores' worth of CPU time when not a whole number, else null")
    memory_mb: int
    gpus: list[int] = Field(description="GPU device indices the task sees (CUDA_VISIBLE_DEVICES)")
    socket: int | None = Field(description="the socket every bound core lies in, null when they span several")


class AttemptView(View):
    """One launch of a task on a placement."""

    attempt: int
    node: str
    hosts: list[tuple[str, int]] = Field(description="[node, slots] per host of the gang")
    binding: dict[str, HostBinding] = Field(
        description="per node, what placement bound there (empty for attempts of an older daemon)")
    state: str
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: str | None
    reason: str | None
    message: str | None
    stdout_read_bytes: int = Field(description="stdout.log read for OAAS_ lines up to here (as last stored)")
    metrics_stored: int
    metrics_dropped: int = Field(description="OAAS_METRIC lines beyond reporting.max_metrics_per_attempt")
    max_rss_mb: float | None = Field(description="peak memory, MB (sacct MaxRSS); null when not measured")
    cpu_s: float | None = Field(description="user + system CPU seconds (sacct TotalCPU); null when not measured")
    elapsed_s: float | None = Field(description="wall seconds from start to end (sacct Elapsed); null while running")
    enforced: EnforcedView | None = Field(description="the cgroup the attempt ran in; null: none (rlimit or nothing)")
    notes: list[str] = Field(description="what the daemon did not keep of this attempt's output, and why")
    slurm_job_id: str | None = Field(None, description="the Slurm job of an attempt on a slurm node")


class CallbackView(View):
    """The delivery of a task's ``callback_url`` POST."""

    url: str
    state: Literal["PENDING", "DELIVERED", "FAILED"]
    attempts: int
    last_status: int | None = Field(description="HTTP status of the last POST")
    last_error: str | None
    created_at: float
    last_at: float | None
    delivered_at: float | None


class TaskView(TaskSummary):
    """``GET /v1/tasks/{id}``: the summary plus spec, history, attempts, metrics and callback."""

    spec: TaskSpec
    history: list[HistoryEntry]
    attempts: list[AttemptView]
    metrics: list[dict[str, Any]] = Field(description="OAAS_METRIC lines, each with 'at' and 'attempt' added")
    callback: CallbackView | None = Field(description="null until a task with a callback_url ends")


class TaskPage(View):
    """A page of tasks, newest first; pass ``next`` as ``cursor`` for the following page."""

    items: list[TaskSummary]
    next: str | None


# ---- nodes ---------------------------------------------------------------
class NodeResources(View):
    """Resources of a node, total or free."""

    cpus: float
    memory_mb: int
    gpus: float = Field(description="whole devices; a device partly used counts its free share")


class GpuDeviceView(View):
    """One GPU device of a node."""

    index: int
    type: str
    memory_mb: int
    used: float = Field(description="share in use, 0 to 1 (1: a whole-GPU task holds it)")


class NodeIntent(View):
    """An admin's DRAIN or DOWN of a node."""

    state: Literal["DRAIN", "DOWN"]
    reason: str
    user: str | None
    at: float


class NodeSummary(View):
    """A node in ``GET /v1/nodes``."""

    name: str
    state: NodeState
    reason: str | None
    launcher: Literal["local", "ssh", "mpi", "slurm"]
    host: str
    labels: dict[str, str]
    capacity: NodeResources
    free: NodeResources
    intent: NodeIntent | None
    sockets: int = Field(description="cores are split evenly in order over the sockets")
    gpu_vendor: Literal["nvidia", "amd"]
    gpu_devices: list[GpuDeviceView]
    running: list[int] = Field(description="tasks with an attempt on the node (a non-admin sees only their own)")
    running_count: int = Field(description="how many tasks have an attempt on the node, whoever owns them")
    enforcement: Literal["cgroup2", "cgroup1", "rlimit", "none"] | None = Field(
        description="how the node enforces bindings; null for a remote node not probed yet")
    enforcement_reason: str = Field(description="why: the cgroup directories, or what is missing")


class NodeView(NodeSummary):
    """One node: its summary plus its last health probe."""

    probe: dict[str, Any] | None = Field(description="the last probe of a remote node: ok, at, load, memory, disk")


class NodeList(View):
    """Every node of the cluster."""

    items: list[NodeSummary]


class NodeDeleted(View):
    """Answer to deleting a node."""

    name: str
    deleted: bool
    requeued: list[int] = Field(description="tasks whose attempts on the node were requeued")


# ---- tunings -------------------------------------------------------------
class TuningSummary(View):
    """A tuning in lists."""

    id: int
    name: str
    user: str
    state: TuningState
    reason: str | None = Field(description="why it ended: NumberOfTrials, TimeBudget, SpaceExhausted...")
    created_at: float
    ended_at: float | None
    elapsed_s: float


class TrialBrief(View):
    """A trial on the Pareto front, by its first objective."""

    trial_id: int
    number: int | None = Field(None, description="the trial's number within its tuning: 0, 1, 2, ... in creation order")
    task_id: int | None = Field(description="the trial's task (daemon-run tunings); null for external workers")
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    metric: str
    value: Any


class BestTrial(TrialBrief):
    """The best trial; ``feasible`` is false when no trial met the constraints."""

    feasible: bool


class TrialView(View):
    """One trial of a tuning: its configuration and how it ended."""

    trial_id: int
    number: int | None = Field(None, description="the trial's number within its tuning: 0, 1, 2, ... in creation order")
    task_id: int | None
    config: dict[str, Any]
    baseline: bool
    state: TrialState
    reason: str | None
    message: str | None
    metrics: dict[str, Any] | None
    node: str | None
    worker_id: int | None
    started_at: float | None
    ended_at: float | None
    duration_s: float | None


class TuningView(TuningSummary):
    """``GET /v1/tunings/{id}``: state, best, Pareto front and every trial."""

    objectives: list[Objective]
    number_of_trials: int
    driven_by: Literal["daemon", "workers"] = Field(description="daemon: trials are tasks; workers: external workers")
    workers: int | None = Field(None, description="workers registered (tunings driven by workers only)")
    quota_wait: dict[str, Any] | None = Field(
        None, description="daemon-run tunings: the owner's limit holding trials back ({field, problem, message})")
    prior_observations: int = Field(description="earlier trials of the same space used as history (use_history)")
    thresholds: list[float] | None = Field(description="each constraint's absolute bound, null until the baseline ran")
    best: BestTrial | None
    pareto_front: list[TrialBrief] | None = Field(description="multi-objective tunings only")
    trial_counts: dict[str, int]
    trials: list[TrialView]
    description: dict[str, Any] = Field(description="the description as submitted (an OpenBox one normalized)")


class TuningPage(View):
    """A page of tunings, newest first."""

    items: list[TuningSummary]
    next: str | None


class WorkerRegistered(View):
    """A worker registered with a tuning driven by external workers."""

    worker_id: int
    tuning_id: int
    name: str | None


class WorkerSuggestion(View):
    """The next trial for a worker: a configuration, or ``done`` with the reason, or come back later."""

    done: bool
    trial_id: int | None
    reason: str | None = Field(None, description="why no trial: the tuning's stop reason, or TrialsRunning")
    number: int | None = Field(None, description="the trial's number within its tuning: 0, 1, 2, ... in creation order")
    worker_id: int | None = None
    config: dict[str, Any] | None = None
    baseline: bool | None = None
    deadline_at: float | None = Field(None, description="the trial ends TIMEOUT when not observed by then")
    retry_after_s: float | None = Field(None, description="TrialsRunning: ask again after this long")


class StopDecision(View):
    """Whether a worker should stop a trial now (early stopping)."""

    trial_id: int
    stop: bool
    reason: str | None


# ---- pipelines -----------------------------------------------------------
class PipelineSummary(View):
    """A registered pipeline in lists."""

    id: int
    name: str
    user: str
    state: PipelineState
    created_at: float
    stopped_at: float | None
    # None only for a row an older version stored that no longer validates (then STOPPED)
    interval_s: float | None
    source: Literal["http", "prometheus", "file"] | None
    predictor: str | None
    actuator: Literal["command", "tasks"] | None


class Adaptation(View):
    """One interval of a pipeline's loop: observed and forecast load, the decision, what was applied."""

    id: int
    at: float
    observed_rps: float | None
    predicted_rps: float | None
    configuration: list[dict[str, Any]] | None = Field(description="stage, variant, batch, replicas, cores, gpus")
    latency_ms: float | None
    accuracy: float | None
    cost_cores: float | None
    objective: float | None
    feasible: bool | None
    reasons: list[dict[str, Any]] | None
    changed: bool
    actuator: dict[str, Any] | None = Field(description="what the actuator did, when it did anything")
    source_error: str | None


class PipelineView(PipelineSummary):
    """One pipeline: registration, current configuration and its last adaptations, newest first."""

    registration: dict[str, Any]
    configuration: list[dict[str, Any]] | None
    applied: list[dict[str, Any]] | None = Field(description="command actuator: what each stage runs now")
    tasks: list[dict[str, Any]] | None = Field(None, description="tasks actuator: the live replica tasks")
    adaptation_count: int
    adaptations: list[Adaptation]


class PipelinePage(View):
    """A page of pipelines, newest first."""

    items: list[PipelineSummary]
    next: str | None


# ---- daemon --------------------------------------------------------------
class Health(View):
    """``GET /healthz``: the daemon is up."""

    status: Literal["ok"]
    schema_version: int
    running: int
    pending: int
