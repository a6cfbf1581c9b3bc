"""The state vocabularies and their transition tables, and the store verbs that check them."""

from __future__ import annotations

import itertools

import pytest

from oaasd.errors import IllegalTransitionError
from oaasd.states import (
    CALLBACK_TRANSITIONS,
    FINAL,
    PIPELINE_TRANSITIONS,
    TRANSITIONS,
    TUNING_TRANSITIONS,
    CallbackState,
    PipelineState,
    Reason,
    State,
    TuningReason,
    TuningState,
    check,
    check_transition,
    tuning_end_state,
)
from oaasd.store.callbacks import CallbackStore
from oaasd.store.db import Store
from oaasd.store.pipelines import PipelineStore
from oaasd.store.tunings import TuningStore

TABLES = [(State, TRANSITIONS), (TuningState, TUNING_TRANSITIONS), (PipelineState, PIPELINE_TRANSITIONS),
          (CallbackState, CALLBACK_TRANSITIONS)]


@pytest.mark.parametrize("enum, table", TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_every_state_has_a_row_and_targets_are_states(enum, table):
    assert set(table) == set(enum)
    for targets in table.values():
        assert targets <= set(enum)


@pytest.mark.parametrize("enum, table", TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_check_accepts_exactly_the_table(enum, table):
    for old, new in itertools.product(enum, enum):
        if new in table[old]:
            check(table, old, new)
            check(table, old.value, new.value)  # the bare strings the store reads back
        else:
            with pytest.raises(IllegalTransitionError):
                check(table, old, new)


@pytest.mark.parametrize("old, new", [("RUNNING", "DONE"), ("NOPE", "FAILED"), ("", "")])
def test_unknown_states_are_illegal(old, new):
    with pytest.raises(IllegalTransitionError):
        check(TUNING_TRANSITIONS, old, new)


def test_final_task_states_are_dead_ends_and_out_of_memory_is_one():
    assert State.OUT_OF_MEMORY in FINAL
    check_transition(State.RUNNING, State.OUT_OF_MEMORY)
    for state in FINAL:
        assert TRANSITIONS[state] == frozenset()


@pytest.mark.parametrize("reason, state", [
    (TuningReason.NUMBER_OF_TRIALS, TuningState.COMPLETED),
    (TuningReason.TIME_BUDGET, TuningState.COMPLETED),
    (TuningReason.FIRST_FEASIBLE, TuningState.COMPLETED),
    (TuningReason.SPACE_EXHAUSTED, TuningState.COMPLETED),
    (TuningReason.BASELINE_FAILED, TuningState.FAILED),
    (TuningReason.ALL_TRIALS_FAILED, TuningState.FAILED),
    (TuningReason.UNSATISFIABLE, TuningState.FAILED),
    (Reason.CANCELLED_BY_USER, TuningState.CANCELLED),
    ("NumberOfTrials", TuningState.COMPLETED),  # the bare string read back from a row
])
def test_tuning_end_state_by_reason(reason, state):
    assert tuning_end_state(reason) == state


def test_values_are_the_words_stored_and_documented():
    # the stored words must never change: rows written by older daemons use them
    assert [s.value for s in TuningState] == ["RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
    assert [s.value for s in PipelineState] == ["RUNNING", "STOPPED"]
    assert [s.value for s in CallbackState] == ["PENDING", "DELIVERED", "FAILED"]


@pytest.fixture
async def store(tmp_path):
    s = Store(tmp_path / "oaasd.db")
    await s.open()
    yield s
    await s.close()


async def test_end_tuning_refuses_a_state_running_cannot_reach_and_writes_nothing(store):
    tunings = TuningStore(store)
    tid, _ = await tunings.create_tuning("t", "alice", {}, "fp")
    with pytest.raises(IllegalTransitionError):
        await tunings.end_tuning(tid, "RUNNING", "NumberOfTrials")
    with pytest.raises(IllegalTransitionError):
        await tunings.end_tuning(tid, "PAUSED", "NumberOfTrials")
    assert (await tunings.get_tuning(tid))["state"] == "RUNNING"
    assert await tunings.end_tuning(tid, TuningState.COMPLETED, TuningReason.NUMBER_OF_TRIALS)
    assert not await tunings.end_tuning(tid, TuningState.FAILED, TuningReason.ALL_TRIALS_FAILED)  # already ended
    row = await tunings.get_tuning(tid)
    assert (row["state"], row["reason"]) == ("COMPLETED", "NumberOfTrials")


async def test_end_worker_trials_checks_the_task_table(store):
    tunings = TuningStore(store)
    with pytest.raises(IllegalTransitionError):
        await tunings.end_worker_trials([1], "RUNNING", "Observed")


async def test_pipeline_stop_is_the_one_transition(store):
    pipelines = PipelineStore(store)
    pid = await pipelines.create("p", "alice", "{}")
    await pipelines.stop(pid)
    await pipelines.stop(pid)  # a second stop is a no-op, not an error
    rows = await store.fetch("SELECT state FROM pipelines WHERE id=?", (pid,))
    assert rows[0]["state"] == "STOPPED"


async def test_callback_state_after_a_post_must_follow_pending(store):
    callbacks = CallbackStore(store)
    with pytest.raises(IllegalTransitionError):
        await callbacks.attempted(1, 1, 500, "boom", "RETRYING")
