"""callback_url on the real daemon: POSTed to a real aiohttp server, retried, recorded, resumed."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time

import pytest
from aiohttp import web
from conftest import free_port
from test_metrics import metric, scrape, waiting_task

PY = sys.executable
FAST = "[callbacks]\nattempts = 3\nbackoff_s = 0.05\ntimeout_s = 5\n"
RESULT = "import json; print('OAAS_RESULT', json.dumps({'accuracy': 0.9}))"


class Receiver:
    """An aiohttp server in its own thread and loop that records POSTs.

    It answers each POST with the next status of ``statuses`` (200 once they
    run out).
    """

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.received: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append({"body": await request.json(), "content_type": request.content_type})
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"status": status}, status=status)

    def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]
    yield make
    for r in made:
        r.stop()


def callback_settled(daemon, task_id: int, timeout: float = 30) -> dict:
    """Poll the task until its callback is no longer PENDING; return the task view."""
    deadline = time.time() + timeout
    while True:
        view = daemon.task(task_id)
        if view["callback"] is not None and view["callback"]["state"] != "PENDING":
            return view
        assert time.time() < deadline, view["callback"]
        time.sleep(0.05)


def test_callback_posts_final_state_and_result(daemon_factory, receiver):
    daemon, hook = daemon_factory(FAST), receiver()
    task_id = daemon.submit({"name": "quant", "command": [PY, "-c", RESULT], "callback_url": hook.url})
    view = callback_settled(daemon, task_id)
    (got,) = hook.received
    assert got["content_type"] == "application/json"
    assert got["body"] == {"task_id": task_id, "name": "quant", "state": "COMPLETED", "reason": "Exited",
                           "message": None, "result": {"accuracy": 0.9}, "ended_at": view["ended_at"]}
    cb = view["callback"]
    assert cb["state"] == "DELIVERED" and cb["attempts"] == 1 and cb["last_status"] == 200
    assert cb["last_error"] is None and cb["delivered_at"] >= view["ended_at"] and cb["url"] == hook.url
    assert metric(scrape(daemon), "oaasd_callback_posts_total", outcome="delivered") == 1


def test_callback_is_retried_until_the_server_accepts(daemon_factory, receiver):
    daemon, hook = daemon_factory(FAST), receiver([500, 503])
    task_id = daemon.submit({"command": [PY, "-c", "raise SystemExit(2)"], "callback_url": hook.url})
    cb = callback_settled(daemon, task_id)["callback"]
    assert cb["state"] == "DELIVERED" and cb["attempts"] == 3 and cb["last_status"] == 200
    assert [r["body"]["state"] for r in hook.received] == ["FAILED"] * 3
    assert hook.received[0]["body"] == hook.received[2]["body"]
    assert hook.received[0]["body"]["reason"] == "NonZeroExitCode"
    samples = scrape(daemon)
    assert metric(samples, "oaasd_callback_posts_total", outcome="error") == 2
    assert metric(samples, "oaasd_callback_posts_total", outcome="delivered") == 1


def test_callback_that_never_succeeds_is_recorded_failed(daemon_factory, receiver):
    daemon, hook = daemon_factory(FAST), receiver([500] * 10)
    refused = daemon.submit({"command": [PY, "-c", RESULT], "callback_url": hook.url})
    nobody = daemon.submit({"command": [PY, "-c", RESULT], "callback_url": f"http://127.0.0.1:{free_port()}/x"})
    cb = callback_settled(daemon, refused)["callback"]
    assert cb["state"] == "FAILED" and cb["attempts"] == 3 and len(hook.received) == 3
    assert cb["last_status"] == 500 and cb["last_error"].startswith("HTTP 500") and cb["delivered_at"] is None
    cb = callback_settled(daemon, nobody)["callback"]
    assert cb["state"] == "FAILED" and cb["attempts"] == 3
    assert cb["last_status"] is None and "connect" in cb["last_error"].lower()


def test_cancelled_task_gets_its_callback_and_tasks_without_one_have_none(daemon_factory, receiver, tmp_path):
    daemon, hook = daemon_factory(FAST), receiver()
    task_id = daemon.submit(waiting_task(tmp_path / "never") | {"callback_url": hook.url})
    plain = daemon.submit({"command": [PY, "-c", RESULT]})
    daemon.wait(task_id, {"RUNNING"})
    assert daemon.request("DELETE", f"/v1/tasks/{task_id}")[0] == 202
    assert callback_settled(daemon, task_id)["callback"]["state"] == "DELIVERED"
    assert hook.received[0]["body"]["state"] == "CANCELLED"
    assert hook.received[0]["body"]["reason"] == "CancelledByUser"
    assert daemon.wait(plain)["callback"] is None


def test_undelivered_callback_is_resumed_after_a_restart(daemon_factory, receiver):
    hook = receiver([500])
    daemon = daemon_factory("[callbacks]\nattempts = 5\nbackoff_s = 3600\n")  # the retry waits an hour
    task_id = daemon.submit({"command": [PY, "-c", RESULT], "callback_url": hook.url})
    deadline = time.time() + 30
    while (daemon.task(task_id)["callback"] or {}).get("attempts") != 1:
        assert time.time() < deadline
        time.sleep(0.05)
    assert daemon.task(task_id)["callback"]["state"] == "PENDING"
    assert daemon.stop() == 0
    daemon.config_body = FAST
    daemon.start()
    cb = callback_settled(daemon, task_id)["callback"]
    assert cb["state"] == "DELIVERED" and cb["attempts"] == 2
    assert [r["body"]["task_id"] for r in hook.received] == [task_id, task_id]


def test_callback_never_recorded_before_a_crash_is_sent_at_start(daemon_factory, receiver):
    hook = receiver()
    daemon = daemon_factory(FAST)
    task_id = daemon.submit({"command": [PY, "-c", RESULT], "callback_url": hook.url})
    callback_settled(daemon, task_id)
    assert daemon.stop() == 0
    with sqlite3.connect(daemon.state_dir / "oaasd.sqlite3") as db:  # as if it crashed before the row's commit
        db.execute("DELETE FROM callbacks WHERE task_id=?", (task_id,))
    daemon.start()
    cb = callback_settled(daemon, task_id)["callback"]
    assert cb["state"] == "DELIVERED" and cb["attempts"] == 1
    assert [r["body"] for r in hook.received] == [hook.received[0]["body"]] * 2
    assert hook.received[0]["body"]["state"] == "COMPLETED"


def test_bad_callback_url_is_refused(daemon_factory):
    daemon = daemon_factory()
    for url in ("ftp://example.org/x", "http://", "file:///etc/passwd", "http://h:99999/", "http://a b/",
                "javascript:alert(1)", "http://h/\x00", "http://" + "x" * 3000):
        status, body = daemon.request("POST", "/v1/tasks", {"command": ["true"], "callback_url": url})
        assert status == 422, (url, body)
        assert [d["field"] for d in body["detail"]] == ["callback_url"], (url, body)
