"""Task states and the one table of legal transitions (Slurm's words)."""

from __future__ import annotations

from enum import StrEnum

from oaasd.errors import IllegalTransitionError


class State(StrEnum):
    """A task's (or attempt's) state."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"  # the attempt's memory limit was hit and the OOM killer ended it


FINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT, State.NODE_FAIL,
                   State.OUT_OF_MEMORY})
ACTIVE = frozenset({State.PENDING, State.RUNNING})  # "pending or running": the one definition

# RUNNING -> PENDING is the requeue of a task whose node failed while it
# still has retries left; nothing ever leaves a final state.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.RUNNING, State.CANCELLED}),
    State.RUNNING: frozenset({State.PENDING, *FINAL}),
    **{s: frozenset() for s in FINAL},
}


class Reason(StrEnum):
    """Why a task is pending or why it changed state (CamelCase, as Slurm)."""

    SUBMITTED = "Submitted"
    RESOURCES = "Resources"
    PRIORITY = "Priority"
    REQ_NODE_NOT_AVAIL = "ReqNodeNotAvail"
    RESERVATION = "Reservation"  # fits now, but only on resources held for an earlier task (backfill)
    PLACED = "Placed"
    EXITED = "Exited"
    NON_ZERO_EXIT = "NonZeroExitCode"
    NO_RESULT = "NoResult"
    TIME_LIMIT = "TimeLimit"
    CANCELLED_BY_USER = "CancelledByUser"
    EARLY_STOPPED = "EarlyStopped"
    NODE_FAIL = "NodeFail"
    LAUNCH_FAILED = "LaunchFailed"
    BAD_WORKDIR = "BadWorkdir"  # the task's workdir is missing or not its user's to enter: no retry
    OUT_OF_MEMORY = "OutOfMemory"  # killed by the OOM killer inside its memory limit: no retry
    SLURM_REFUSED = "SlurmRefused"  # sbatch refused the job (e.g. --mem over the partition's nodes): no retry
    SLURM_PENDING = "SlurmPending"  # running for oaasd, still queued by Slurm (the message says Slurm's reason)
    LOST = "AttemptLost"
    REQUEUED = "Requeued"
    ADOPTED = "Adopted"


def check_transition(old: State | str, new: State | str) -> None:
    """Raise IllegalTransitionError unless old -> new is in the table."""
    if State(new) not in TRANSITIONS[State(old)]:
        raise IllegalTransitionError(f"illegal transition {old} -> {new}")


def is_final(state: State | str) -> bool:
    """True for states a task never leaves."""
    return State(state) in FINAL


# ---- tunings, pipelines and callbacks ------------------------------------
# Each has its own states and one table of legal transitions, checked by the
# store verb that writes the state (``check(TABLE, old, new)``).

class TuningState(StrEnum):
    """A tuning's state."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TUNING_TRANSITIONS: dict[TuningState, frozenset[TuningState]] = {
    TuningState.RUNNING: frozenset({TuningState.COMPLETED, TuningState.FAILED, TuningState.CANCELLED}),
    TuningState.COMPLETED: frozenset(),
    TuningState.FAILED: frozenset(),
    TuningState.CANCELLED: frozenset(),
}


class TuningReason(StrEnum):
    """Why a tuning ended, or what became of one of its worker trials."""

    NUMBER_OF_TRIALS = "NumberOfTrials"  # the trial budget is spent
    TIME_BUDGET = "TimeBudget"
    FIRST_FEASIBLE = "FirstFeasible"  # stop_when = "first_feasible" and one is
    SPACE_EXHAUSTED = "SpaceExhausted"  # the sampler has nothing left to try
    BASELINE_FAILED = "BaselineFailed"
    ALL_TRIALS_FAILED = "AllTrialsFailed"
    UNSATISFIABLE = "Unsatisfiable"  # the nodes changed since the tuning was accepted
    SUGGESTED = "Suggested"  # a worker trial handed out
    OBSERVED = "Observed"  # a worker reported its trial's metrics
    WORKER_FAILED = "WorkerFailed"  # a worker reported its trial failed
    TRIALS_RUNNING = "TrialsRunning"  # no suggestion now: ask again after the running ones


# A tuning ending for one of these reasons ends FAILED; any other reason but
# a user's cancel ends it COMPLETED.
TUNING_FAILING = frozenset({TuningReason.BASELINE_FAILED, TuningReason.ALL_TRIALS_FAILED,
                            TuningReason.UNSATISFIABLE})


def tuning_end_state(reason: str) -> TuningState:
    """The state a tuning ends in for ``reason``."""
    if reason == Reason.CANCELLED_BY_USER:
        return TuningState.CANCELLED
    return TuningState.FAILED if reason in TUNING_FAILING else TuningState.COMPLETED


class PipelineState(StrEnum):
    """A pipeline's state."""

    RUNNING = "RUNNING"
    STOPPED = "STOPPED"


PIPELINE_TRANSITIONS: dict[PipelineState, frozenset[PipelineState]] = {
    PipelineState.RUNNING: frozenset({PipelineState.STOPPED}),
    PipelineState.STOPPED: frozenset(),
}


class PipelineReason(StrEnum):
    """Why the pipeline loop acted, or why no configuration met the SLO."""

    PIPELINE_ADAPTED = "PipelineAdapted"  # a replica cancelled because the configuration changed
    SLO_UNMET = "SloUnmet"
    REPLICAS_CAPPED = "ReplicasCapped"


class CallbackState(StrEnum):
    """A task's callback delivery."""

    PENDING = "PENDING"  # not yet delivered; more POSTs to come
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"  # every POST failed, or the outbound policy refused the URL


CALLBACK_TRANSITIONS: dict[CallbackState, frozenset[CallbackState]] = {
    CallbackState.PENDING: frozenset({CallbackState.PENDING, CallbackState.DELIVERED, CallbackState.FAILED}),
    CallbackState.DELIVERED: frozenset(),
    CallbackState.FAILED: frozenset(),
}


def check(table: dict, old: str, new: str) -> None:
    """Raise IllegalTransitionError unless ``old -> new`` is in ``table`` (either state unknown: illegal)."""
    legal = next((targets for state, targets in table.items() if state == old), None)
    if legal is None or new not in legal:
        raise IllegalTransitionError(f"illegal transition {old} -> {new}")
