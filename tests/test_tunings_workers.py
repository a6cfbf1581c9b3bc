"""Tunings driven by external workers: asyncio clients against the real daemon subprocess."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import aiohttp

TUNING_FINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def loss_of(config: dict) -> float:
    """The toy objective the workers evaluate: best at x = 0.8, k = 0."""
    return (config["x"] - 0.8) ** 2 + 0.1 * config.get("k", 0)


def external(**over) -> dict:
    """A tuning without a trial template: the user's workers run its trials."""
    body = {"name": "ext",
            "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                           {"name": "k", "type": "int", "low": 0, "high": 3}],
            "objectives": [{"metric": "loss", "sense": "minimize"}],
            "constraints": [{"metric": "margin", "op": ">=", "value": 0.0}],
            "number_of_trials": 12, "worker_num": 4, "sampler": "gp", "seed": 2}
    return body | over


class Client:
    """A small asyncio JSON client for one daemon."""

    def __init__(self, session: aiohttp.ClientSession, port: int):
        self.session, self.base = session, f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
        kwargs = {"data": raw} if raw is not None else ({} if body is None else {"json": body})
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def create(self, body: dict) -> int:
        status, view = await self.call("POST", "/v1/tunings", body)
        assert status == 201, view
        return view["id"]

    async def worker(self, tuning_id: int, name: str | None = None) -> int:
        status, body = await self.call("POST", f"/v1/tunings/{tuning_id}/workers", {"name": name} if name else None)
        assert status == 201, body
        return body["worker_id"]

    async def suggest(self, tuning_id: int, worker_id: int) -> dict:
        status, body = await self.call("POST", f"/v1/tunings/{tuning_id}/suggest", {"worker_id": worker_id})
        assert status == 200, body
        return body

    async def observe(self, tuning_id: int, trial_id: int, config: dict, **extra) -> tuple[int, dict]:
        body = {"trial_id": trial_id, "objectives": {"loss": loss_of(config)},
                "constraints": {"margin": 0.5 - config["x"]}, **extra}
        return await self.call("POST", f"/v1/tunings/{tuning_id}/observations", body)

    async def should_stop(self, tuning_id: int, trial_id: int, body: dict) -> tuple[int, dict]:
        return await self.call("POST", f"/v1/tunings/{tuning_id}/trials/{trial_id}/should-stop", body)

    async def view(self, tuning_id: int) -> dict:
        status, view = await self.call("GET", f"/v1/tunings/{tuning_id}")
        assert status == 200, view
        return view


async def work(c: Client, tuning_id: int, worker_id: int, done: list[dict]) -> None:
    """A worker's loop: suggest, evaluate, observe, until the tuning says done."""
    while True:
        s = await c.suggest(tuning_id, worker_id)
        if s["done"]:
            return
        if s["trial_id"] is None:  # every slot is taken: come back later
            await asyncio.sleep(s["retry_after_s"])
            continue
        status, view = await c.observe(tuning_id, s["trial_id"], s["config"], elapsed_s=0.25)
        assert status == 200 and view["state"] == "COMPLETED", view
        done.append({**s, "loss": loss_of(s["config"])})


async def wait_view(c: Client, tuning_id: int, until, timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = await c.view(tuning_id)
        if until(view):
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"tuning {tuning_id} stuck: {view}")


async def test_concurrent_workers_get_distinct_configurations_and_the_best(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        tid = await c.create(external())
        workers = [await c.worker(tid, f"w{i}") for i in range(4)]
        first = await asyncio.gather(*(c.suggest(tid, w) for w in workers))
        keys = {tuple(sorted(s["config"].items())) for s in first}
        assert len(keys) == 4 and all(s["trial_id"] for s in first), first
        again = await c.suggest(tid, workers[0])  # a worker holds one open trial: asking again returns it
        assert (again["trial_id"], again["config"]) == (first[0]["trial_id"], first[0]["config"])
        extra = await c.worker(tid)
        wait = await c.suggest(tid, extra)  # worker_num slots are all taken
        assert (wait["done"], wait["trial_id"], wait["reason"]) == (False, None, "TrialsRunning"), wait
        done: list[dict] = []
        for s in first:
            status, view = await c.observe(tid, s["trial_id"], s["config"], elapsed_s=0.25)
            assert status == 200 and view["worker_id"] == s["worker_id"], view
            done.append({**s, "loss": loss_of(s["config"])})
        await asyncio.gather(*(work(c, tid, w, done) for w in workers + [extra]))
        view = await c.view(tid)
        assert (view["state"], view["reason"], view["driven_by"], view["workers"]) == \
            ("COMPLETED", "NumberOfTrials", "workers", 5), view
        trials = view["trials"]
        assert len(trials) == 12 and len(done) == 12 and view["trial_counts"] == {"COMPLETED": 12}
        assert len({tuple(sorted(t["config"].items())) for t in trials}) == 12
        assert all(t["worker_id"] in workers + [extra] and t["node"] is None and t["task_id"] is None
                   and t["duration_s"] == 0.25 for t in trials)
        feasible = [t for t in done if t["config"]["x"] <= 0.5]
        want = min(feasible, key=lambda t: t["loss"])
        best = view["best"]
        assert best["feasible"] and best["trial_id"] == want["trial_id"], (best, want)
        assert best["value"] == want["loss"] and best["config"] == want["config"]
        end = await c.suggest(tid, workers[1])
        assert (end["done"], end["reason"], end["trial_id"]) == (True, "NumberOfTrials", None)


async def test_observations_of_unknown_finished_or_foreign_trials_are_409(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        a, b = await c.create(external()), await c.create(external(name="other"))
        wa, wb = await c.worker(a), await c.worker(b)
        s = await c.suggest(a, wa)
        foreign = f"not a trial of tuning {b}"
        for tuning_id, trial_id, problem in ((a, 9999, "unknown trial id"), (b, s["trial_id"], foreign)):
            status, body = await c.observe(tuning_id, trial_id, s["config"])
            assert status == 409 and body["detail"][0]["field"] == "trial_id", body
            assert body["detail"][0]["problem"] == problem and body["detail"][0]["trial_id"] == trial_id
        status, view = await c.observe(a, s["trial_id"], s["config"])
        assert status == 200 and view["state"] == "COMPLETED" and view["metrics"]["loss"] == loss_of(s["config"])
        status, body = await c.observe(a, s["trial_id"], s["config"])
        assert status == 409 and body["detail"][0]["field"] == "trial_id", body
        assert "already finished (COMPLETED)" in body["message"]
        status, body = await c.should_stop(a, s["trial_id"], {"step": 1, "value": 0.5})
        assert status == 409 and body["detail"][0]["field"] == "trial_id", body
        for worker in (wb, 777):
            status, body = await c.call("POST", f"/v1/tunings/{a}/suggest", {"worker_id": worker})
            assert status == 409 and body["detail"][0]["field"] == "worker_id", body
        s = await c.suggest(a, wa)  # a failed trial is recorded; it does not stop the tuning
        status, view = await c.call("POST", f"/v1/tunings/{a}/observations",
                                    {"trial_id": s["trial_id"], "state": "FAILED"})
        assert status == 200 and view["state"] == "FAILED" and view["metrics"] == {}, view
        assert (await c.view(a))["state"] == "RUNNING"


async def test_bad_bodies_name_the_field(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        tid = await c.create(external())
        w = await c.worker(tid)
        s = await c.suggest(tid, w)
        obs, stop = f"/v1/tunings/{tid}/observations", f"/v1/tunings/{tid}/trials/{s['trial_id']}/should-stop"
        cases = [
            (f"/v1/tunings/{tid}/suggest", {"worker_id": "1"}, 422, "worker_id"),
            (f"/v1/tunings/{tid}/suggest", {}, 422, "worker_id"),
            (f"/v1/tunings/{tid}/workers", {"name": 5}, 422, "name"),
            (obs, {"objectives": {"loss": 1.0}}, 422, "trial_id"),
            (obs, {"trial_id": s["trial_id"], "objectives": "fast"}, 422, "objectives"),
            (obs, {"trial_id": s["trial_id"], "objectives": {"loss": 1.0}, "state": "DONE"}, 422, "state"),
            (obs, {"trial_id": s["trial_id"], "objectives": {"loss": 1.0}, "elapsed_s": -1}, 422, "elapsed_s"),
            (obs, {"trial_id": s["trial_id"], "objectives": {"latency": 1.0}}, 422, "objectives.loss"),
            (obs, {"trial_id": s["trial_id"], "objectives": {"loss": 1.0}}, 422, "constraints.margin"),
            (obs, {"trial_id": s["trial_id"], "objectives": {"loss": 1.0}, "color": 1}, 422, "color"),
            (stop, {"value": 1.0}, 422, "step"),
            (stop, {"step": 1, "value": 1.0, "metrics": {"loss": 1.0}}, 422, "value"),
            (stop, {"step": 1}, 422, "value"),
        ]
        for path, body, want, field in cases:
            status, answer = await c.call("POST", path, body)
            assert (status, answer["detail"][0]["field"]) == (want, field), (path, body, answer)
            assert answer["error"] and answer["message"]
        status, answer = await c.call("POST", obs, raw=b"{not json")
        assert status == 400 and answer["error"] == "InvalidRequest", answer
        status, answer = await c.call("POST", "/v1/tunings/999/suggest", {"worker_id": w})
        assert status == 404 and answer["detail"][0]["field"] == "id", answer
        status, answer = await c.call("POST", f"/v1/tunings/{tid}/trials/0/should-stop", {"step": 1, "value": 1.0})
        assert status == 400 and answer["detail"][0]["field"] == "tid", answer
        status, view = await c.observe(tid, s["trial_id"], s["config"])  # the trial is still open after all that
        assert status == 200 and view["state"] == "COMPLETED", view
        daemon_run = external(trial={"command": [sys.executable, "-c", "print('OAAS_RESULT {\"loss\": 1}')"]},
                              number_of_trials=1, worker_num=1)
        other = await c.create(daemon_run)
        status, answer = await c.call("POST", f"/v1/tunings/{other}/workers")
        assert status == 409 and answer["detail"][0]["field"] == "id", answer


async def test_should_stop_prunes_a_clearly_bad_curve(daemon_factory):
    d = daemon_factory()
    body = external(constraints=[], parameters=[{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
                    early_stopping={"rule": "median", "grace_steps": 1, "min_trials": 2}, worker_num=3)
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        tid = await c.create(body)
        ws = [await c.worker(tid) for _ in range(3)]
        good1, good2, bad = [await c.suggest(tid, w) for w in ws]
        for s, form in ((good1, "value"), (good2, "metrics")):
            for step in (1, 2, 3):
                report = {"step": step, "value": 0.1} if form == "value" else {"step": step, "metrics": {"loss": 0.1}}
                status, answer = await c.should_stop(tid, s["trial_id"], report)
                assert status == 200 and answer["stop"] is False, answer
            status, _ = await c.observe(tid, s["trial_id"], s["config"])
            assert status == 200
        status, answer = await c.should_stop(tid, bad["trial_id"], {"step": 1, "value": 9.0})
        assert status == 200 and answer["stop"] is True and answer["reason"].startswith("median rule"), answer
        status, again = await c.should_stop(tid, bad["trial_id"], {"step": 2, "value": 9.0})
        assert status == 409 and again["detail"][0]["field"] == "trial_id", again
        view = await c.view(tid)
        pruned = [t for t in view["trials"] if t["trial_id"] == bad["trial_id"]][0]
        assert pruned["state"] == "PRUNED" and pruned["reason"] == answer["reason"] and pruned["metrics"] is None
        status, late = await c.observe(tid, bad["trial_id"], bad["config"])  # the worker's report after the stop
        assert status == 200 and late["state"] == "PRUNED" and late["metrics"]["loss"] == loss_of(bad["config"])
        status, body = await c.observe(tid, bad["trial_id"], bad["config"])
        assert status == 409 and "already finished (PRUNED)" in body["message"], body
        assert view["best"]["trial_id"] in (good1["trial_id"], good2["trial_id"])


async def test_kill9_keeps_observed_trials_and_accepts_a_pre_kill_suggestion(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        tid = await c.create(external(number_of_trials=4, worker_num=2))
        w1, w2 = await c.worker(tid), await c.worker(tid)
        s1, s2 = await c.suggest(tid, w1), await c.suggest(tid, w2)
        status, _ = await c.observe(tid, s1["trial_id"], s1["config"], metrics={"epochs": 3})
        assert status == 200
    d.stop(signal.SIGKILL)
    d.start()
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        view = await c.view(tid)
        assert view["state"] == "RUNNING" and [t["state"] for t in view["trials"]] == ["COMPLETED", "RUNNING"]
        assert view["trials"][0]["metrics"] == {"epochs": 3, "margin": 0.5 - s1["config"]["x"],
                                                "loss": loss_of(s1["config"])}
        assert (await c.suggest(tid, w2))["trial_id"] == s2["trial_id"]  # still that worker's open trial
        status, answer = await c.observe(tid, s2["trial_id"], s2["config"])
        assert status == 200 and answer["state"] == "COMPLETED", answer
        done: list[dict] = []
        await asyncio.gather(work(c, tid, w1, done), work(c, tid, w2, done))
        view = await c.view(tid)
        assert (view["state"], view["reason"], len(view["trials"]), len(done)) == ("COMPLETED", "NumberOfTrials", 4, 2)
        assert view["trials"][1]["trial_id"] == s2["trial_id"] and view["trials"][1]["worker_id"] == w2


async def test_an_unobserved_trial_times_out_and_a_cancel_ends_open_trials(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        tid = await c.create(external(trial_timeout_s=0.3, number_of_trials=3))
        w = await c.worker(tid)
        s = await c.suggest(tid, w)
        assert s["deadline_at"] is not None
        view = await wait_view(c, tid, lambda v: v["trials"][0]["state"] == "TIMEOUT")
        assert view["trials"][0]["reason"] == "TimeLimit" and view["state"] == "RUNNING"
        status, body = await c.observe(tid, s["trial_id"], s["config"])
        assert status == 409 and "already finished (TIMEOUT)" in body["message"], body
        s2 = await c.suggest(tid, w)
        assert s2["trial_id"] != s["trial_id"] and s2["config"] != s["config"]
        other = await c.create(external(number_of_trials=3))
        s3 = await c.suggest(other, await c.worker(other))
        status, view = await c.call("DELETE", f"/v1/tunings/{other}")
        assert status == 202 and view["state"] == "CANCELLED" and view["trials"][0]["state"] == "CANCELLED", view
        status, body = await c.observe(other, s3["trial_id"], s3["config"])
        assert status == 409, body
        end = await c.suggest(other, view["trials"][0]["worker_id"])
        assert (end["done"], end["reason"]) == (True, "CancelledByUser")


async def test_use_history_warm_starts_from_earlier_tunings(daemon_factory):
    d = daemon_factory()
    body = external(constraints=[], number_of_trials=8, worker_num=1, seed=3)
    async with aiohttp.ClientSession() as session:
        c = Client(session, d.port)
        first = await c.create(body)
        done: list[dict] = []
        await work(c, first, await c.worker(first), done)
        assert len(done) == 8
        cold = await c.create(body)
        warm = await c.create(body | {"use_history": True,
                                      "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                                                     {"name": "k", "type": "int", "low": 0, "high": 5}]})
        unrelated = await c.create(body | {"use_history": True, "objectives": [{"metric": "latency"}]})
        s_cold = await c.suggest(cold, await c.worker(cold))
        s_warm = await c.suggest(warm, await c.worker(warm))
        assert s_cold["config"] == done[0]["config"], "same seed, no history: the same first suggestion"
        assert s_warm["config"] != s_cold["config"]
        assert loss_of(s_warm["config"]) <= 0.01 < loss_of(s_cold["config"]), (s_warm, s_cold)
        assert (await c.view(warm))["prior_observations"] == 8
        assert (await c.view(cold))["prior_observations"] == 0
        assert (await c.view(unrelated))["prior_observations"] == 0
