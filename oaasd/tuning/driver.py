"""The tuning driver: runs each tuning's pure ``Tuner`` over trials that are ordinary tasks.

A tuning is a row in ``tunings``; each trial is a task with ``parent_id`` set
to the tuning and a ``trials`` row (configuration, baseline, pruned) written
in the same transaction. A tuning without a trial template is driven by
the user's own workers instead (``tuning_workers``). Everything the driver
decides is recomputed from the store on every step (a trial ended, a time
budget ran out, a restart), so a crash loses nothing but the GP's warm
start. Per tuning, one lock orders the steps; cancelling trials happens
outside it, because a pending trial's cancel calls back into
``task_ended`` (the hook this driver subscribes to).

Trials are submitted through the one ``Intake`` verb (the trial row is its
link, committed with the task); the driver never reaches into the
scheduler, the runner or the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

from oaasd.errors import ConflictError, UnsatisfiableError
from oaasd.models import TaskSpec
from oaasd.ports import EventSink, Intake, MetricsReport, TaskEnd, TrialLink
from oaasd.service.auth import Grant, Users
from oaasd.service.background import Background
from oaasd.service.pools import SUGGEST
from oaasd.states import ACTIVE, Reason, State, TuningReason, TuningState, tuning_end_state
from oaasd.store.db import Store
from oaasd.store.tunings import TuningStore
from oaasd.tuning import Suggestion, Trial, Tuner, TuningDescription, space_fingerprint
from oaasd.tuning.trials import (
    CANCEL_ACTIVE,
    FAILED_STATES,
    best_of,
    brief,
    numbers,
    series_of,
    summarize,
    to_trial,
    trial_template,
    trial_view,
)
from oaasd.tuning.workers import Workers

log = logging.getLogger("oaasd.tunings")


class Tunings:
    """Every live tuning of the daemon: its Tuner, trial template, history and intermediate series."""

    def __init__(self, store: Store, intake: Intake, users: Users, events: EventSink, fatal: Callable[[str], None]):
        self.store = store
        self.db = TuningStore(store)
        self.intake = intake
        self.users = users
        self.events = events
        self.workers = Workers(self.db, self)
        self.tuners: dict[int, Tuner] = {}
        self.templates: dict[int, TaskSpec] = {}  # daemon-run tunings only
        self.prior: dict[int, list[Trial]] = {}  # use_history: earlier tunings' finished trials
        self.created_at: dict[int, float] = {}
        self.trial_of: dict[int, int] = {}  # task id -> tuning id, live tunings only
        self.series: dict[int, dict[int, list[tuple[float, float]]]] = {}  # tuning -> trial -> (step, value)
        self.pruning: set[int] = set()
        self._locks: dict[int, asyncio.Lock] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._retries: dict[int, asyncio.TimerHandle] = {}  # held back by the owner's limits: step again
        self.quota_wait: dict[int, dict[str, Any]] = {}  # tuning -> the limit holding it back
        self.bg = Background(fatal)

    # ---- intake -----------------------------------------------------
    async def create(self, raw: dict[str, Any], desc: TuningDescription, template: TaskSpec | None,
                     owner: str) -> int:
        """Commit a tuning owned by ``owner``, then submit its first trials; return its id.

        Without a template, the tuning waits for its owner's workers to ask.
        """
        if template is not None:
            self.intake.request_for(template, "no node could ever hold a trial")
        name = desc.name or "tuning"
        tuning_id, created_at = await self.db.create_tuning(name, owner, raw, space_fingerprint(desc))
        await self._load(tuning_id, raw, created_at, owner)
        await self.step(tuning_id)
        return tuning_id

    async def _load(self, tuning_id: int, raw: dict[str, Any], created_at: float, owner: str) -> Tuner:
        tuner = Tuner.from_json(raw)
        self.tuners[tuning_id] = tuner
        template = trial_template(tuner.description.trial)
        if template is not None:
            self.templates[tuning_id] = template.model_copy(update={"user": owner})
        if tuner.description.use_history:
            self.prior[tuning_id] = await self._history(tuning_id, owner, tuner.description)
        self.created_at[tuning_id] = created_at
        self.series.setdefault(tuning_id, {})
        budget = tuner.description.time_budget_s
        if budget is not None:
            # The loop may run a timer a hair before its delay, and the step
            # measures the budget on the wall clock: arm just past it, never before.
            delay = max(0.0, created_at + budget - time.time()) + 0.05
            self._timers[tuning_id] = asyncio.get_running_loop().call_later(
                delay, lambda: self.bg.spawn(self.step(tuning_id), f"tuning-{tuning_id}-budget"))
        return tuner

    def _forget(self, tuning_id: int) -> None:
        for mapping in (self.tuners, self.templates, self.prior, self.created_at, self.series, self._locks,
                        self.quota_wait):
            mapping.pop(tuning_id, None)
        self.workers.forget(tuning_id)
        for timers in (self._timers, self._retries):
            timer = timers.pop(tuning_id, None)
            if timer is not None:
                timer.cancel()
        for task_id in [t for t, tid in self.trial_of.items() if tid == tuning_id]:
            del self.trial_of[task_id]
            self.pruning.discard(task_id)

    async def resume(self) -> None:
        """At start: reload every RUNNING tuning and top up its trials."""
        for tuning_id in await self.db.running_tunings():
            row = await self.db.get_tuning(tuning_id)
            await self._load(tuning_id, row["description"], row["created_at"], row["user"])
            metric = self.tuners[tuning_id].intermediate_metric()
            if self.is_external(tuning_id):
                self.series[tuning_id] = await self.db.reports(tuning_id)
            for t in await self.db.trials(tuning_id):
                if t["task_id"] is None:
                    continue
                self.trial_of[t["task_id"]] = tuning_id
                if metric is not None:
                    rows = await self.store.task_metrics(t["task_id"])
                    self.series[tuning_id][t["task_id"]] = series_of([m["data"] for m in rows], metric)
            log.info("tuning %d: resumed", tuning_id)
            await self.step(tuning_id)

    # ---- the step ---------------------------------------------------
    async def step(self, tuning_id: int) -> None:
        """Record what ended, launch what the tuner suggests, stop when it says so."""
        if self.is_external(tuning_id):
            await self.workers.step(tuning_id)
            return
        cancel: list[int] = []
        async with self.lock(tuning_id):
            if tuning_id not in self.tuners:
                return
            rows = await self.db.trials(tuning_id)
            trials = [to_trial(r) for r in rows]
            active = [r["task_id"] for r in rows if r["state"] in ACTIVE]
            reason = self.stop_reason(tuning_id, rows, trials)
            if reason is None:
                reason = await self._launch(tuning_id, trials)
            if reason in CANCEL_ACTIVE and active:
                cancel = active
            elif reason is not None and not active:
                await self.end(tuning_id, reason)
        for task_id in cancel:  # each cancel ends a trial, whose final state steps again
            try:
                await self.intake.cancel(task_id, reason)
            except ConflictError as exc:  # mid-launch: the next step cancels it, or it ends by itself
                log.warning("tuning %d: %s", tuning_id, exc)

    async def suggest(self, tuning_id: int, trials: list[Trial], n: int | None = None) -> list[Suggestion]:
        """At most ``n`` next configurations (default: all there is room for), computed off the event loop.

        A GP fit takes 10-100 ms. Callers hold the tuning's lock, so one tuner
        never suggests twice at once. Each computation is logged with its count.
        """
        tuner = self.tuners[tuning_id]
        out = await SUGGEST.run(tuner.suggest, trials, self.prior.get(tuning_id, ()), n)  # a pool of their own
        if out:
            log.info("tuning %d: computed %d configuration(s)", tuning_id, len(out))
        return out

    def is_external(self, tuning_id: int) -> bool:
        """True for a live tuning driven by external workers (it has no trial template)."""
        return tuning_id in self.tuners and tuning_id not in self.templates

    def stop_reason(self, tuning_id: int, rows: list[dict[str, Any]], trials: list[Trial]) -> str | None:
        """Why a live tuning launches nothing more (its tuner's reason, or ``AllTrialsFailed``), or None."""
        tuner = self.tuners[tuning_id]
        reason = tuner.stop_reason(trials, time.time() - self.created_at[tuning_id])
        if reason not in (None, TuningReason.NUMBER_OF_TRIALS):
            return reason
        # every trial so far failed (pruned ones are not failures): stop after a few, not the whole budget
        ended = [r for r in rows if not r["baseline"] and r["state"] not in ACTIVE]
        enough = min(tuner.description.number_of_trials - tuner.description.needs_baseline,
                     max(3, tuner.description.worker_num))
        if len(ended) >= max(1, enough) and all(r["state"] in FAILED_STATES for r in ended):
            return TuningReason.ALL_TRIALS_FAILED
        return reason

    async def _launch(self, tuning_id: int, trials: list[Trial]) -> str | None:
        """Submit as many suggested trials as there is room for and the owner's limits admit; a stop reason or None.

        Only what is admitted is computed. Held back by ``max_pending`` or the
        submit rate, the tuning waits and steps again later (``quota_wait`` in
        its view says why).
        """
        room = self.tuners[tuning_id].room(trials)
        owner = self.templates[tuning_id].user
        async with self.users.admission(owner, room, self.store.count_pending) as grant:
            suggestions = await self.suggest(tuning_id, trials, grant.count) if grant.count else []
            reason = await self._submit_all(tuning_id, suggestions, len(trials))
        self._wait_for_quota(tuning_id, grant if grant.count < room else None)
        if reason is None and grant.count and not suggestions and not any(t.state in ACTIVE for t in trials):
            return TuningReason.SPACE_EXHAUSTED
        return reason

    def _wait_for_quota(self, tuning_id: int, held: Grant | None) -> None:
        """Record why a tuning is held back by its owner's limits and arm one retry (None: it is not)."""
        if held is None:
            self.quota_wait.pop(tuning_id, None)
            return
        self.quota_wait[tuning_id] = {**held.refusal.detail[0], "message": held.refusal.message}
        if tuning_id not in self._retries:
            def retry() -> None:
                self._retries.pop(tuning_id, None)
                self.bg.spawn(self.step(tuning_id), f"tuning-{tuning_id}-quota")
            self._retries[tuning_id] = asyncio.get_running_loop().call_later(held.retry_after_s, retry)

    async def _submit_all(self, tuning_id: int, suggestions: list[Suggestion], count: int) -> str | None:
        template = self.templates[tuning_id]
        for k, s in enumerate(suggestions, start=count + 1):
            name = f"{self.tuners[tuning_id].description.name or 'tuning'}-{'baseline' if s.baseline else k}"
            spec = template.model_copy(update={"trial_config": s.config, "name": name[:200]})
            try:
                task_id = (await self.intake.submit(spec, TrialLink(tuning_id, s.config, s.baseline))).task_id
            except UnsatisfiableError:
                return TuningReason.UNSATISFIABLE
            except ConflictError:  # cancelled meanwhile
                return None
            self.trial_of[task_id] = tuning_id
        return None

    async def end(self, tuning_id: int, reason: str) -> None:
        """End a tuning (FAILED or COMPLETED by its reason) and forget it."""
        state = tuning_end_state(reason)
        if await self.db.end_tuning(tuning_id, state, reason):
            log.info("tuning %d: %s (%s)", tuning_id, state, reason)
            self.events.publish({"type": "tuning", "tuning_id": tuning_id, "state": state, "reason": reason})
        self._forget(tuning_id)

    async def cancel(self, tuning_id: int) -> bool:
        """End a tuning CANCELLED and cancel its pending and running trials; False when it had already ended."""
        await self.db.get_tuning(tuning_id)  # 404 when unknown
        async with self.lock(tuning_id):
            if not await self.db.end_tuning(tuning_id, TuningState.CANCELLED, Reason.CANCELLED_BY_USER):
                return False
            rows = await self.db.trials(tuning_id)
            open_ids = [r["trial_id"] for r in rows if r["state"] in ACTIVE and r["task_id"] is None]
            await self.db.end_worker_trials(open_ids, State.CANCELLED.value, Reason.CANCELLED_BY_USER.value)
            self._forget(tuning_id)
        for r in rows:
            if r["state"] in ACTIVE and r["task_id"] is not None:
                await self.intake.cancel(r["task_id"], Reason.CANCELLED_BY_USER)
        return True

    # ---- hooks ------------------------------------------------------
    async def task_ended(self, end: TaskEnd) -> None:
        """The ``task_ended`` hook: when the task is a trial, its tuning takes its next step."""
        tuning_id = self.trial_of.get(end.task_id)
        if tuning_id is None:
            return
        self.pruning.discard(end.task_id)
        await self.step(tuning_id)

    async def metrics_reported(self, report: MetricsReport) -> None:
        """The ``metrics_reported`` hook: stop a running trial early when the pruner says so."""
        task_id = report.task_id
        tuning_id = self.trial_of.get(task_id)
        if tuning_id is None or tuning_id not in self.tuners:
            return
        tuner = self.tuners[tuning_id]
        metric = tuner.intermediate_metric()
        if metric is None:
            return
        series = self.series[tuning_id]
        series[task_id] = series_of(report.series, metric)
        if task_id in self.pruning or report.stopping:
            return
        decision = tuner.should_stop(task_id, series[task_id], series)
        if decision.stop:
            self.pruning.add(task_id)
            await self.db.prune_trial(task_id, decision.reason)
            log.info("tuning %d: trial %d stopped early: %s", tuning_id, task_id, decision.reason)
            await self.intake.stop_running(task_id, Reason.EARLY_STOPPED.value)

    # ---- views --------------------------------------------------------
    async def view(self, tuning_id: int) -> dict[str, Any]:
        """State, stop reason, best, Pareto front, history used and every trial of one tuning."""
        row = await self.db.get_tuning(tuning_id)
        tuner = self.tuners.get(tuning_id) or Tuner.from_json(row["description"])
        rows = await self.db.trials(tuning_id)
        trials = [to_trial(r) for r in rows]
        number = numbers(rows)
        by_id = {r["trial_id"]: {**r, "number": number[r["trial_id"]]} for r in rows}
        out = summarize(row)
        d = tuner.description
        out["objectives"] = [o.model_dump(mode="json") for o in d.objectives]
        out["number_of_trials"] = d.number_of_trials
        out["driven_by"] = "daemon" if d.trial is not None else "workers"
        if d.trial is None:
            out["workers"] = await self.db.count_workers(tuning_id)
        else:
            out["quota_wait"] = self.quota_wait.get(tuning_id)
        out["prior_observations"] = len(tuner.observations(await self._prior(tuning_id, row), baseline_from=trials)) \
            if d.use_history else 0
        out["thresholds"] = tuner.thresholds(trials)
        out["best"] = best_of(tuner, trials, by_id)
        out["pareto_front"] = [brief(by_id[t.trial_id], tuner) for t in tuner.pareto(trials)] \
            if len(d.objectives) > 1 else None
        views = [trial_view(r, number[r["trial_id"]]) for r in rows]
        out["trial_counts"] = {s: sum(v["state"] == s for v in views) for s in sorted({v["state"] for v in views})}
        out["trials"] = views
        out["description"] = row["description"]
        return out

    async def _prior(self, tuning_id: int, row: dict[str, Any]) -> list[Trial]:
        """The history a tuning was warm-started with (re-read for one that has ended)."""
        if tuning_id in self.prior:
            return self.prior[tuning_id]
        return await self._history(tuning_id, row["user"], TuningDescription.model_validate(row["description"]))

    async def _history(self, tuning_id: int, owner: str, desc: TuningDescription) -> list[Trial]:
        """The finished trials of the owner's earlier tunings with the same space fingerprint."""
        earlier = await self.db.history_tunings(owner, space_fingerprint(desc), tuning_id)
        return [to_trial(r) for r in await self.db.finished_trials(earlier)]

    # ---- plumbing -----------------------------------------------------
    def lock(self, tuning_id: int) -> asyncio.Lock:
        """The lock that orders one tuning's steps."""
        return self._locks.setdefault(tuning_id, asyncio.Lock())

    def tuner(self, tuning_id: int) -> Tuner | None:
        """The live tuner of a tuning, None once it has ended."""
        return self.tuners.get(tuning_id)

    def series_of(self, tuning_id: int) -> dict[int, list[tuple[float, float]]]:
        """The intermediate ``(step, value)`` series of a live tuning's trials, by trial id."""
        return self.series.setdefault(tuning_id, {})

    def spawn(self, coro: Coroutine, name: str) -> None:
        """Run a step in the background (a failure stops the daemon)."""
        self.bg.spawn(coro, name)

    async def row(self, tuning_id: int) -> dict[str, Any]:
        """A tuning's stored row, or 404."""
        return await self.db.get_tuning(tuning_id)

    async def summaries(self, *, state: str | None, user: str | None, before: int | None,
                        limit: int) -> list[dict[str, Any]]:
        """Summaries newest first, filtered by state and owner, ids below ``before``."""
        rows = await self.db.list_tunings(state=state, user=user, before=before, limit=limit)
        return [summarize(r) for r in rows]

    def stop(self) -> None:
        """Daemon shutdown: drop timers and pending steps (a restart resumes them)."""
        for timer in (*self._timers.values(), *self._retries.values()):
            timer.cancel()
        self.workers.stop()
        for task in list(self.bg.tasks):
            task.cancel()
