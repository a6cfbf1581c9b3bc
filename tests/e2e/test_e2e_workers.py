"""External workers under ``sync`` and ``async``: three workers, real HTTP, the real daemon.

A sync round is one batch of ``worker_num`` distinct configurations,
computed once and handed out as workers ask; the next round starts when
every trial of the round has been observed or has timed out. Async computes
one configuration per suggest. The daemon logs each computation with its
count ("tuning N: computed K configuration(s)"), which is how these tests
count what the sampler was asked for.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time

import aiohttp

WORKERS = 3


def description(strategy: str, **over) -> dict:
    """A tuning without a trial template, for three workers."""
    body = {"name": f"ext-{strategy}",
            "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0},
                           {"name": "k", "type": "int", "low": 0, "high": 3}],
            "objectives": [{"metric": "loss", "sense": "minimize"}],
            "number_of_trials": 9, "worker_num": WORKERS, "parallel_strategy": strategy,
            "sampler": "random", "seed": 5}
    return body | over


class Api:
    """Just enough of the tuning API for a worker."""

    def __init__(self, session: aiohttp.ClientSession, port: int):
        self.session, self.base = session, f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        async with self.session.request(method, self.base + path, json=body) as resp:
            return resp.status, await resp.json()

    async def tuning(self, body: dict) -> tuple[int, list[int]]:
        status, view = await self.call("POST", "/v1/tunings", body)
        assert status == 201, view
        workers = []
        for i in range(WORKERS):
            status, w = await self.call("POST", f"/v1/tunings/{view['id']}/workers", {"name": f"w{i}"})
            assert status == 201, w
            workers.append(w["worker_id"])
        return view["id"], workers

    async def suggest(self, tid: int, worker: int) -> dict:
        status, body = await self.call("POST", f"/v1/tunings/{tid}/suggest", {"worker_id": worker})
        assert status == 200, body
        return body

    async def observe(self, tid: int, s: dict) -> None:
        loss = (s["config"]["x"] - 0.3) ** 2 + s["config"]["k"]
        status, view = await self.call("POST", f"/v1/tunings/{tid}/observations",
                                       {"trial_id": s["trial_id"], "objectives": {"loss": loss}})
        assert status == 200 and view["state"] == "COMPLETED", view

    async def view(self, tid: int) -> dict:
        status, view = await self.call("GET", f"/v1/tunings/{tid}")
        assert status == 200, view
        return view


def computed(daemon, tid: int) -> list[int]:
    """How many configurations each suggestion computation of tuning ``tid`` produced, in order."""
    return [int(k) for k in re.findall(rf"tuning {tid}: computed (\d+) configuration", daemon.log())]


def key(s: dict) -> tuple:
    return tuple(sorted(s["config"].items()))


async def test_sync_rounds_hand_out_worker_num_distinct_trials(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        api = Api(session, d.port)
        tid, workers = await api.tuning(description("sync"))
        seen: set[tuple] = set()
        for round_no in range(3):
            got = await asyncio.gather(*(api.suggest(tid, w) for w in workers))
            assert all(s["trial_id"] is not None for s in got), got  # base: 2 of 3 got TrialsRunning
            assert len({s["trial_id"] for s in got}) == WORKERS and len({key(s) for s in got}) == WORKERS, got
            assert not seen & {key(s) for s in got}
            seen |= {key(s) for s in got}
            await api.observe(tid, got[0])
            early = await api.suggest(tid, workers[0])  # the round is not over: no new trial yet
            wanted = "TrialsRunning" if round_no < 2 else "NumberOfTrials"  # the last round spends the budget
            assert (early["trial_id"], early["reason"]) == (None, wanted), early
            for s in got[1:]:
                await api.observe(tid, s)
            assert computed(d, tid) == [WORKERS] * (round_no + 1)  # one batch per round, computed once
        end = await api.suggest(tid, workers[1])
        assert (end["done"], end["reason"]) == (True, "NumberOfTrials"), end
        view = await api.view(tid)
        assert (view["state"], view["trial_counts"]) == ("COMPLETED", {"COMPLETED": 9}), view


async def test_a_sync_round_is_filled_by_whoever_asks_and_restarts_keep_it(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        api = Api(session, d.port)
        tid, workers = await api.tuning(description("sync", number_of_trials=6))
        first = await api.suggest(tid, workers[0])
        await api.observe(tid, first)
        second = await api.suggest(tid, workers[0])  # the same worker takes the round's next trial
        assert second["trial_id"] is not None and key(second) != key(first), second
        assert computed(d, tid) == [WORKERS]
    d.stop()
    d.start()
    async with aiohttp.ClientSession() as session:
        api = Api(session, d.port)
        again = await api.suggest(tid, workers[0])
        assert again["trial_id"] == second["trial_id"]
        third = await api.suggest(tid, workers[1])  # the round's last slot: computed anew after the restart
        assert third["trial_id"] is not None and key(third) not in {key(first), key(second)}, third
        assert computed(d, tid) == [WORKERS, 1]
        wait = await api.suggest(tid, workers[2])
        assert wait["reason"] == "TrialsRunning", wait


async def test_a_sync_round_ends_when_its_unobserved_trial_times_out(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        api = Api(session, d.port)
        tid, workers = await api.tuning(description("sync", trial_timeout_s=3.0))
        got = await asyncio.gather(*(api.suggest(tid, w) for w in workers))
        assert len({s["trial_id"] for s in got}) == WORKERS, got
        for s in got[:2]:
            await api.observe(tid, s)
        assert (await api.suggest(tid, workers[0]))["reason"] == "TrialsRunning"
        deadline = time.time() + 10
        while (s := await api.suggest(tid, workers[0]))["trial_id"] is None:  # the third worker went silent
            assert time.time() < deadline, s
            await asyncio.sleep(0.2)
        view = await api.view(tid)
        states = [t["state"] for t in view["trials"]]
        assert states == ["COMPLETED", "COMPLETED", "TIMEOUT", "RUNNING"], view["trials"]
        assert time.time() >= got[2]["deadline_at"]
        assert computed(d, tid) == [WORKERS, WORKERS]


async def test_async_keeps_worker_num_open_and_computes_one_per_suggest(daemon_factory):
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        api = Api(session, d.port)
        tid, workers = await api.tuning(description("async", sampler="gp", seed=3))
        got = await asyncio.gather(*(api.suggest(tid, w) for w in workers))
        assert len({s["trial_id"] for s in got}) == WORKERS and len({key(s) for s in got}) == WORKERS, got
        handed = WORKERS
        open_ = {s["worker_id"]: s for s in got}
        while True:
            w = min(open_)  # observe the oldest worker's trial, then it asks again at once
            await api.observe(tid, open_.pop(w))
            s = await api.suggest(tid, w)
            if s["done"]:  # the budget is handed out: the others finish theirs
                assert (s["reason"], handed) == ("NumberOfTrials", 9), s
                for other in list(open_):
                    await api.observe(tid, open_.pop(other))
                break
            assert s["trial_id"] is not None, s  # a slot was freed: never TrialsRunning in async
            assert key(s) not in {key(o) for o in open_.values()}
            open_[w] = s
            handed += 1
        assert handed == 9 and computed(d, tid) == [1] * 9  # base: 3+2+2+... computed, one kept each time
        view = await api.view(tid)
        assert (view["state"], view["reason"], view["trial_counts"]) == \
            ("COMPLETED", "NumberOfTrials", {"COMPLETED": 9}), view


def test_daemon_run_tunings_compute_exactly_the_trials_they_launch(daemon_factory):
    d = daemon_factory('[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 2000\n')
    trial = [sys.executable, "-c", "import json, os; c = json.loads(os.environ['OAAS_TRIAL_CONFIG']); "
             "print('OAAS_RESULT ' + json.dumps({'loss': c['x'] + c['k']}))"]
    ids = {}
    for strategy in ("sync", "async"):
        body = description(strategy, number_of_trials=7,
                           trial={"command": trial, "cpus": 0.5, "memory_mb": 50})
        status, view = d.request("POST", "/v1/tunings", body)
        assert status == 201, view
        ids[strategy] = view["id"]
    for strategy, tid in ids.items():
        deadline = time.time() + 40
        while (view := d.request("GET", f"/v1/tunings/{tid}")[1])["state"] == "RUNNING":
            assert time.time() < deadline, view
            time.sleep(0.1)
        assert (view["state"], view["trial_counts"]) == ("COMPLETED", {"COMPLETED": 7}), view
        assert sum(computed(d, tid)) == 7, (strategy, computed(d, tid))  # nothing computed and dropped
    assert computed(d, ids["sync"]) == [3, 3, 1]  # rounds of worker_num, the last one the budget's rest
