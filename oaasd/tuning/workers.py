"""External workers: tunings whose trials the user's own programs run (the OpenBox-style service).

A worker registers, asks for a configuration (``suggest``), evaluates it and
reports the result (``observe``); meanwhile it may report intermediate
values and ask whether to stop (``should_stop``). Every answer is computed
under the tuning's lock from the store, so the open suggestions of several
workers are distinct, and a suggestion handed out before a crash is still
open (RUNNING) after the restart.

Rules:
- a worker holds at most one open trial: asking again returns the same one
  (a restarted worker picks up where it was);
- ``async``: at most ``worker_num`` trials are open at once, and each
  suggest computes the one configuration it hands out;
- ``sync``: trials go in rounds of ``worker_num`` (a baseline runs alone
  first); a round's batch is computed once, at its first suggest, and handed
  out as workers ask; the next round starts when every trial of the round
  was observed, failed or timed out;
- a worker that finds no free slot is answered
  ``{"done": false, "trial_id": null, "retry_after_s": ..., "reason": TuningReason.TRIALS_RUNNING}``;
- once the budget is spent or the tuning has ended, ``suggest`` answers
  ``{"done": true, "reason": ...}`` with 200: the end of a worker's loop is
  no error;
- a trial told to stop ends at once (CANCELLED, ``EarlyStopped``) and shows
  as PRUNED; the one observation its worker sends after that only attaches
  its metrics;
- a trial not observed within ``trial_timeout_s`` ends TIMEOUT (reason
  ``TimeLimit``): the tuner counts it as a failed configuration.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Coroutine, Protocol

from oaasd.errors import ConflictError, ValidationFailedError
from oaasd.states import ACTIVE, Reason, State, TuningReason
from oaasd.store.tunings import TuningStore
from oaasd.tuning import Suggestion, Trial, Tuner
from oaasd.tuning.trials import CANCEL_ACTIVE, numbers, to_trial, trial_view

RETRY_AFTER_S = 0.5
OUTCOMES = {"SUCCEEDED": (State.COMPLETED, TuningReason.OBSERVED), "FAILED": (State.FAILED, TuningReason.WORKER_FAILED)}


def refused(field: str, value: int, problem: str) -> ConflictError:
    """A 409 naming the trial or worker id that does not fit the tuning's state."""
    name = field.split("_")[0]
    return ConflictError(f"{name} {value}: {problem}", [{"field": field, "problem": problem, field: value}])


class Driver(Protocol):
    """What the workers ask of the tuning driver (``Tunings``): its live tuners, their steps' lock, its decisions."""

    def lock(self, tuning_id: int) -> asyncio.Lock:
        """The lock that orders one tuning's steps."""

    def tuner(self, tuning_id: int) -> Tuner | None:
        """The live tuner of a tuning, None once it has ended."""

    def series_of(self, tuning_id: int) -> dict[int, list[tuple[float, float]]]:
        """The intermediate ``(step, value)`` series of a live tuning's trials, by trial id."""

    def stop_reason(self, tuning_id: int, rows: list[dict[str, Any]], trials: list[Trial]) -> str | None:
        """Why a live tuning hands out nothing more, or None."""

    async def suggest(self, tuning_id: int, trials: list[Trial], n: int | None = None) -> list[Suggestion]:
        """At most ``n`` next configurations."""

    async def end(self, tuning_id: int, reason: str) -> None:
        """End a tuning and forget it."""

    def spawn(self, coro: Coroutine, name: str) -> None:
        """Run a step in the background (a failure stops the daemon)."""


class Workers:
    """The external-worker side of a tuning: register, suggest, observe, should-stop, deadlines."""

    def __init__(self, db: TuningStore, driver: Driver):
        self.t = driver
        self.db = db
        self._deadlines: dict[int, asyncio.TimerHandle] = {}
        self._batches: dict[int, list[Suggestion]] = {}  # sync: the current round's configurations not handed out

    # ---- routes -------------------------------------------------------
    async def register(self, tuning_id: int, name: str | None) -> dict[str, Any]:
        """Register a worker with a tuning driven by workers."""
        await self._external(tuning_id)
        worker_id = await self.db.add_worker(tuning_id, name)
        return {"worker_id": worker_id, "tuning_id": tuning_id, "name": name}

    async def suggest(self, tuning_id: int, worker_id: int) -> dict[str, Any]:
        """The worker's open trial, else a new configuration, else why there is none."""
        await self._external(tuning_id)
        await self._check_worker(tuning_id, worker_id)
        async with self.t.lock(tuning_id):
            if self.t.tuner(tuning_id) is None:
                return await self._ended(tuning_id)
            rows, reason = await self._settle(tuning_id)
            mine = [r for r in rows if r["worker_id"] == worker_id and r["state"] in ACTIVE]
            if mine:
                return _handout(mine[0], numbers(rows)[mine[0]["trial_id"]])
            if reason is not None:
                return {"done": True, "reason": reason, "trial_id": None}
            return await self._new_trial(tuning_id, worker_id, rows)

    async def observe(self, tuning_id: int, trial_id: int, outcome: str, metrics: dict[str, Any],
                      elapsed_s: float | None) -> dict[str, Any]:
        """Record a worker's result for one of the tuning's open trials."""
        await self._external(tuning_id)
        async with self.t.lock(tuning_id):
            row = await self._trial(tuning_id, trial_id)
            if row["state"] not in ACTIVE:
                if not (row["pruned"] and await self.db.attach_result(trial_id, metrics, elapsed_s)):
                    raise refused("trial_id", trial_id, f"already finished ({_state(row)})")
            else:
                tuner = self._tuner(tuning_id)
                if outcome == "SUCCEEDED":
                    _check_complete(tuner.description, metrics)
                state, reason = OUTCOMES[outcome]
                await self.db.end_worker_trials([trial_id], state.value, reason, result=metrics, elapsed_s=elapsed_s)
                await self._settle(tuning_id)
        return trial_view(await self.db.worker_trial(trial_id), numbers(await self.db.trials(tuning_id))[trial_id])

    async def should_stop(self, tuning_id: int, trial_id: int, step: float, value: float | None,
                          metrics: dict[str, float] | None) -> dict[str, Any]:
        """Record an intermediate value of an open trial; ask the tuning's pruner whether to stop it."""
        await self._external(tuning_id)
        async with self.t.lock(tuning_id):
            row = await self._trial(tuning_id, trial_id)
            if row["state"] not in ACTIVE:
                raise refused("trial_id", trial_id, f"already finished ({_state(row)})")
            tuner = self._tuner(tuning_id)
            metric = tuner.intermediate_metric()
            if metric is None:
                return {"trial_id": trial_id, "stop": False, "reason": "early stopping is off"}
            if value is None:
                if metric not in (metrics or {}):
                    raise ValidationFailedError("invalid should-stop report", [
                        {"field": f"metrics.{metric}", "problem": f"early stopping watches {metric!r}"}])
                value = metrics[metric]
            await self.db.add_report(trial_id, step, value)
            series = self.t.series_of(tuning_id)
            series.setdefault(trial_id, []).append((step, value))
            decision = tuner.should_stop(trial_id, series[trial_id], series)
            if decision.stop:
                await self.db.end_worker_trials([trial_id], State.CANCELLED.value, Reason.EARLY_STOPPED.value,
                                                prune_reason=decision.reason)
                await self._settle(tuning_id)
        return {"trial_id": trial_id, "stop": decision.stop, "reason": decision.reason}

    # ---- the step -----------------------------------------------------
    async def step(self, tuning_id: int) -> None:
        """Expire overdue trials and end the tuning when its tuner says stop (timers, restart)."""
        async with self.t.lock(tuning_id):
            if self.t.tuner(tuning_id) is not None:
                await self._settle(tuning_id)

    async def _settle(self, tuning_id: int) -> tuple[list[dict[str, Any]], str | None]:
        """Under the lock: end overdue (and no longer wanted) trials, end the tuning when done.

        Returns the trials and the tuner's stop reason (None while it suggests more).
        """
        rows = await self.db.trials(tuning_id)
        now = time.time()
        overdue = [r["trial_id"] for r in rows if r["state"] in ACTIVE and _due(r, now)]
        if overdue:
            await self.db.end_worker_trials(overdue, State.TIMEOUT.value, Reason.TIME_LIMIT.value)
            rows = await self.db.trials(tuning_id)
        reason = self.t.stop_reason(tuning_id, rows, [to_trial(r) for r in rows])
        open_ids = [r["trial_id"] for r in rows if r["state"] in ACTIVE]
        if reason in CANCEL_ACTIVE and open_ids:
            await self.db.end_worker_trials(open_ids, State.CANCELLED.value, reason)
            rows, open_ids = await self.db.trials(tuning_id), []
        if reason is not None and not open_ids:
            await self.t.end(tuning_id, reason)
        else:
            self._arm(tuning_id, rows)
        return rows, reason

    async def _new_trial(self, tuning_id: int, worker_id: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        tuner = self.t.tuner(tuning_id)
        s = await self._next_suggestion(tuning_id, [to_trial(r) for r in rows])
        if s is None:
            if any(r["state"] in ACTIVE for r in rows):
                return {"done": False, "trial_id": None, "retry_after_s": RETRY_AFTER_S, "reason": TuningReason.TRIALS_RUNNING}
            await self.t.end(tuning_id, TuningReason.SPACE_EXHAUSTED)
            return {"done": True, "reason": TuningReason.SPACE_EXHAUSTED, "trial_id": None}
        new = await self.db.add_worker_trial(tuning_id, worker_id, s.config, s.baseline,
                                             tuner.description.trial_timeout_s)
        rows = await self.db.trials(tuning_id)
        self._arm(tuning_id, rows)
        return {"done": False, "trial_id": new["trial_id"], "number": numbers(rows)[new["trial_id"]],
                "worker_id": worker_id, "config": s.config,
                "baseline": s.baseline, "deadline_at": new["deadline_at"]}

    async def _next_suggestion(self, tuning_id: int, trials: list[Trial]) -> Suggestion | None:
        """The next configuration to hand out, or None when no trial may start now.

        ``sync`` computes a round's batch once, at the round's first suggest,
        and hands the rest out from memory as workers ask (a restart
        recomputes only the part of the round not yet handed out); ``async``
        computes one configuration per suggest.
        """
        tuner = self.t.tuner(tuning_id)
        room = tuner.room(trials)
        batch = self._batches.get(tuning_id, [])
        if room == 0:
            return None
        if not batch or len(batch) > room:  # no batch, or one of a round that has ended
            sync = tuner.description.parallel_strategy == "sync"
            batch = await self.t.suggest(tuning_id, trials, room if sync else 1)
        self._batches[tuning_id] = batch[1:]
        return batch[0] if batch else None

    # ---- deadlines ------------------------------------------------------
    def _arm(self, tuning_id: int, rows: list[dict[str, Any]]) -> None:
        """One timer per tuning, just past the earliest deadline of its open trials."""
        self._disarm(tuning_id)
        deadlines = [r["deadline_at"] for r in rows if r["state"] in ACTIVE and r.get("deadline_at") is not None]
        if deadlines:
            delay = max(0.0, min(deadlines) - time.time()) + 0.05
            self._deadlines[tuning_id] = asyncio.get_running_loop().call_later(
                delay, lambda: self.t.spawn(self.step(tuning_id), f"tuning-{tuning_id}-deadline"))

    def forget(self, tuning_id: int) -> None:
        """Drop a tuning's deadline timer and its round's batch (it ended)."""
        self._batches.pop(tuning_id, None)
        self._disarm(tuning_id)

    def _disarm(self, tuning_id: int) -> None:
        timer = self._deadlines.pop(tuning_id, None)
        if timer is not None:
            timer.cancel()

    def stop(self) -> None:
        """Daemon shutdown: drop every deadline timer (a restart re-arms them)."""
        for tuning_id in list(self._deadlines):
            self._disarm(tuning_id)

    # ---- checks ---------------------------------------------------------
    async def _external(self, tuning_id: int) -> dict[str, Any]:
        row = await self.db.get_tuning(tuning_id)
        if row["description"].get("trial") is not None:
            raise ConflictError(f"tuning {tuning_id} runs its own trials", [
                {"field": "id", "problem": "this tuning has a trial template: the daemon runs its trials"}])
        return row

    async def _check_worker(self, tuning_id: int, worker_id: int) -> None:
        worker = await self.db.worker(worker_id)
        if worker is None:
            raise refused("worker_id", worker_id, "unknown worker id (register first)")
        if worker["tuning_id"] != tuning_id:
            raise refused("worker_id", worker_id, f"not a worker of tuning {tuning_id}")

    async def _trial(self, tuning_id: int, trial_id: int) -> dict[str, Any]:
        row = await self.db.worker_trial(trial_id)
        if row is None:
            raise refused("trial_id", trial_id, "unknown trial id")
        if row["tuning_id"] != tuning_id:
            raise refused("trial_id", trial_id, f"not a trial of tuning {tuning_id}")
        return row

    def _tuner(self, tuning_id: int) -> Tuner:
        tuner = self.t.tuner(tuning_id)
        if tuner is None:  # its open trials were ended with it
            raise ConflictError(f"tuning {tuning_id} has ended", [{"field": "id", "problem": "the tuning has ended"}])
        return tuner

    async def _ended(self, tuning_id: int) -> dict[str, Any]:
        row = await self.db.get_tuning(tuning_id)
        return {"done": True, "reason": row["reason"], "trial_id": None}


def _due(row: dict[str, Any], now: float) -> bool:
    return row.get("deadline_at") is not None and row["deadline_at"] <= now


def _state(row: dict[str, Any]) -> str:
    return "PRUNED" if row["pruned"] else row["state"]


def _handout(row: dict[str, Any], number: int) -> dict[str, Any]:
    return {"done": False, "trial_id": row["trial_id"], "number": number, "worker_id": row["worker_id"], "config": row["config"],
            "baseline": row["baseline"], "deadline_at": row["deadline_at"]}


def _check_complete(description: Any, metrics: dict[str, Any]) -> None:
    """A successful observation carries every objective and constraint metric (422 naming each missing one)."""
    wanted = [("objectives", o.metric) for o in description.objectives] + \
             [("constraints", c.metric) for c in description.constraints]
    missing = [f"{kind}.{m}" for kind, m in wanted if m not in metrics]
    if missing:
        raise ValidationFailedError("a SUCCEEDED observation reports every objective and constraint", [
            {"field": f, "problem": "missing from a SUCCEEDED observation"} for f in missing])
