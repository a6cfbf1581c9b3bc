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
