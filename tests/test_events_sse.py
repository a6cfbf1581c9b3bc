"""Server-Sent Events on the real daemon: one task's stream, the global stream, filters, owners."""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import time

import pytest
from test_metrics import metric, scrape, waiting_task

from oaasd.service.events import EventHub

PY = sys.executable
REPORTING = ("import json\n"
             "print('OAAS_METRIC', json.dumps({'step': 1, 'loss': 0.5}), flush=True)\n"
             "print('OAAS_RESULT', json.dumps({'loss': 0.25}))\n")
# The same in sh: with [[users]] tasks run as unprivileged accounts, which may not reach this interpreter.
SH_REPORTING = ["/bin/sh", "-c", 'echo \'OAAS_METRIC {"step": 1, "loss": 0.5}\'; echo \'OAAS_RESULT {"loss": 0.25}\'']


class Stream:
    """An SSE client over http.client: reads ``id``/``event``/``data`` messages and comments."""

    def __init__(self, daemon, path: str, headers: dict[str, str] | None = None, timeout: float = 60):
        self.conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type", "")

    def next(self) -> dict | None:
        """The next message as {"id", "event", "data"}; None when the server ended the stream."""
        msg: dict = {}
        while True:
            line = self.resp.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if not line:
                if msg:
                    return msg
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            msg[field] = json.loads(value) if field == "data" else value

    def until(self, done) -> list[dict]:
        """Messages up to and including the first for which ``done(message)`` holds."""
        out = []
        while (msg := self.next()) is not None:
            out.append(msg)
            if done(msg):
                return out
        raise AssertionError(f"stream ended before the awaited event: {out}")

    def rest(self) -> list[dict]:
        """Every message until the server ends the stream."""
        out = []
        while (msg := self.next()) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.conn.close()


def final_of(task_id: int):
    return lambda m: (m["event"] == "state" and m["data"]["task_id"] == task_id
                      and m["data"]["new"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"))


def all_final(*task_ids: int):
    """A ``done`` predicate that holds once every one of ``task_ids`` has ended."""
    ended: set[int] = set()

    def done(m: dict) -> bool:
        ended.update(t for t in task_ids if final_of(t)(m))
        return ended == set(task_ids)
    return done


def transitions(messages: list[dict], task_id: int) -> list[tuple]:
    return [(m["data"]["old"], m["data"]["new"]) for m in messages
            if m["event"] == "state" and m["data"]["task_id"] == task_id]


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def test_task_stream_replays_history_then_follows_to_the_end(daemon, tmp_path):
    flag = tmp_path / "go"
    task_id = daemon.submit(waiting_task(flag, metric='{"step": 1}'))
    daemon.wait(task_id, {"RUNNING"})
    stream = Stream(daemon, f"/v1/tasks/{task_id}/events")
    assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
    replayed = [stream.next(), stream.next()]
    assert [(m["data"]["old"], m["data"]["new"]) for m in replayed] == [(None, "PENDING"), ("PENDING", "RUNNING")]
    assert all(m["data"]["replay"] is True and "id" not in m for m in replayed)
    flag.write_text("go")
    live = stream.rest()  # the server ends the stream after the final state
    stream.close()
    assert transitions(live, task_id) == [("RUNNING", "COMPLETED")]
    assert [m["data"]["data"] for m in live if m["event"] == "metric"] == [{"step": 1}]
    assert live[-1]["event"] == "state" and live[-1]["data"]["result"] == {"ok": 1}
    ids = [int(m["id"]) for m in live]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_task_stream_of_an_ended_task_is_its_history(daemon):
    task_id = daemon.submit({"command": [PY, "-c", REPORTING]})
    daemon.wait(task_id)
    stream = Stream(daemon, f"/v1/tasks/{task_id}/events")
    messages = stream.rest()
    stream.close()
    assert transitions(messages, task_id) == [(None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
    assert messages[-1]["data"]["result"] == {"loss": 0.25}


def test_global_stream_shows_two_tasks_metrics_and_filters(daemon):
    everything = Stream(daemon, "/v1/events")
    first = daemon.submit({"command": [PY, "-c", REPORTING]})
    states_of_first = Stream(daemon, f"/v1/events?task={first}&types=state")
    second = daemon.submit({"command": [PY, "-c", REPORTING]})
    messages = everything.until(all_final(first, second))
    everything.close()
    for task_id in (first, second):
        assert transitions(messages, task_id) == [(None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
        assert [m["data"]["data"] for m in messages
                if m["event"] == "metric" and m["data"]["task_id"] == task_id] == [{"step": 1, "loss": 0.5}]
    filtered = states_of_first.until(final_of(first))
    states_of_first.close()
    assert {m["event"] for m in filtered} == {"state"}
    assert {m["data"]["task_id"] for m in filtered} == {first}
    assert transitions(filtered, first)[-1] == ("RUNNING", "COMPLETED")


def test_bad_stream_requests_are_json_errors(daemon):
    for path, status, field in (("/v1/events?types=state,bogus", 400, "types"), ("/v1/events?types=", 400, "types"),
                                ("/v1/events?task=abc", 400, "task"), ("/v1/events?task=99", 404, "id"),
                                ("/v1/tasks/99/events", 404, "id"), ("/v1/tasks/0/events", 400, "id")):
        got, body = daemon.request("GET", path)
        assert got == status, (path, body)
        assert body["detail"][0]["field"] == field, (path, body)


def test_a_subscriber_that_leaves_is_dropped(daemon):
    stream = Stream(daemon, "/v1/events")
    assert metric(scrape(daemon), "oaasd_event_subscribers") == 1
    stream.close()
    deadline = time.time() + 30
    while metric(scrape(daemon), "oaasd_event_subscribers") != 0:  # seen at the next write: make events
        assert time.time() < deadline, "the closed stream was never dropped"
        daemon.wait(daemon.submit({"command": [PY, "-c", REPORTING]}))


TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "root": "root-token-0123456789"}
USERS = "".join(f'[[users]]\nname = "{name}"\nrole = "{"admin" if name == "root" else "user"}"\n'
                f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n\n'
                for name, token in TOKENS.items())


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def test_a_user_sees_only_events_of_their_own_tasks(daemon_factory):
    daemon = daemon_factory(USERS)
    alice, admin = Stream(daemon, "/v1/events", bearer("alice")), Stream(daemon, "/v1/events", bearer("root"))
    bobs = daemon.request("POST", "/v1/tasks", {"command": SH_REPORTING}, headers=bearer("bob"))[1]["id"]
    alices = daemon.request("POST", "/v1/tasks", {"command": SH_REPORTING}, headers=bearer("alice"))[1]["id"]
    mine = alice.until(final_of(alices))
    assert {m["data"]["task_id"] for m in mine} == {alices}
    assert {m["event"] for m in mine} == {"state", "metric"}
    assert {m["data"]["task_id"] for m in admin.until(all_final(alices, bobs))} == {alices, bobs}
    alice.close()
    admin.close()
    assert Stream(daemon, f"/v1/tasks/{bobs}/events", bearer("alice")).status == 404
    assert daemon.request("GET", f"/v1/events?task={bobs}", headers=bearer("alice"))[0] == 404
    assert daemon.request("GET", "/v1/events")[0] == 401


async def test_hub_closes_a_subscriber_that_falls_behind_with_overflow():
    hub = EventHub(queue_size=3)
    slow = hub.subscribe()
    only_two = hub.subscribe(lambda e: e["task_id"] == 2)
    for task_id in (1, 2, 1):
        hub.publish({"type": "state", "task_id": task_id})
    assert [(await slow.get())["seq"] for _ in range(3)] == [1, 2, 3]
    assert [(await only_two.get())["seq"]] == [2]
    for task_id in (2, 1, 2, 1):  # slow reads none of these: 4 behind a log of 3
        hub.publish({"type": "state", "task_id": task_id})
        if task_id == 2:
            assert (await only_two.get())["seq"] in (4, 6)
    got = await slow.get()
    assert got["type"] == "overflow"
    assert slow.closed and hub.subscribers == 1 and await slow.batch() == []
    only_two.close()
    assert hub.subscribers == 0 and len(hub.log) == 3  # memory: the shared log, whatever the subscribers
