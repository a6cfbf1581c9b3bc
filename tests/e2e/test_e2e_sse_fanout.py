"""Event streams do not slow intake or grow the daemon: caps, batching, stalled readers cut off."""

from __future__ import annotations

import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
from test_events_sse import USERS, Stream, bearer
from test_metrics import metric, scrape

CAPS = "max_subscribers = 40\nmax_subscribers_per_user = 30\nevent_write_timeout_s = 1.0\n"
HELD = {"command": ["true"], "require_result": False}


def hold_queue(d) -> None:
    status, body = d.request("PATCH", "/v1/nodes/local", {"state": "DRAIN", "reason": "hold the queue"},
                             headers=bearer("root"))
    assert status == 200, body


def ended(d, task_id: int, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = d.request("GET", f"/v1/tasks/{task_id}", headers=bearer("alice"))[1]["state"]
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} still {state}")


def submit_all(d, n: int, who: str) -> list[int]:
    def one(_):
        return d.request("POST", "/v1/tasks", HELD, headers=bearer(who))[0]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_subscribers_beyond_the_caps_get_json_and_every_submit_is_answered(daemon_factory):
    d = daemon_factory(start=False)
    d.server_extra = CAPS
    d.config_body = USERS
    d.start()
    hold_queue(d)
    alice = [Stream(d, "/v1/events", bearer("alice")) for _ in range(30)]
    assert {s.status for s in alice} == {200}
    over = Stream(d, "/v1/events", bearer("alice"), timeout=5)
    assert over.status == 429
    body = over.resp.read()
    assert b"server.max_subscribers_per_user" in body and b"RateLimited" in body
    bob = [Stream(d, "/v1/events", bearer("bob")) for _ in range(10)]
    assert {s.status for s in bob} == {200}
    full = Stream(d, "/v1/events", bearer("bob"), timeout=5)
    assert full.status == 503
    body = full.resp.read()
    assert b"server.max_subscribers" in body and full.resp.getheader("Retry-After")
    assert metric(scrape(d, bearer("root")), "oaasd_event_subscribers") == 40
    started = time.monotonic()
    assert submit_all(d, 300, "alice") == [201] * 300
    assert time.monotonic() - started < 30
    got = alice[7].until(lambda m: m["data"].get("task_id") == 300)
    assert len([m for m in got if m["event"] == "state"]) >= 300  # every submit reached every stream
    for stream in alice + bob:
        stream.close()


CHATTY = ("import json\nfor i in range(3000):\n"
          "    print('OAAS_METRIC', json.dumps({'step': i, 'note': 'x' * 2000}), flush=True)\n"
          "print('OAAS_RESULT {\"ok\": 1}')\n")


def test_a_stalled_subscriber_is_cut_off_and_memory_stays_bounded(daemon_factory):
    d = daemon_factory(start=False)
    d.server_extra = CAPS
    d.config_body = USERS
    d.start()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", d.port))
    stalled.sendall(f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer('root')['Authorization']}"
                    "\r\n\r\n".encode())  # and never reads
    deadline = time.time() + 10
    while metric(scrape(d, bearer("root")), "oaasd_event_subscribers") != 1:
        assert time.time() < deadline
        time.sleep(0.05)
    rss = psutil.Process(d.proc.pid).memory_info().rss
    for _ in range(2):  # 2 x 3,000 events of 2 kB: far more than the socket buffers hold
        status, body = d.request("POST", "/v1/tasks", {"command": ["/usr/bin/python3", "-c", CHATTY]},
                                 headers=bearer("alice"))
        assert status == 201, body
        assert ended(d, body["id"]) == "COMPLETED"
    grown = (psutil.Process(d.proc.pid).memory_info().rss - rss) / 2**20
    deadline = time.time() + 15
    while metric(scrape(d, bearer("root")), "oaasd_event_subscribers") != 0:
        assert time.time() < deadline, "the stalled subscriber was never dropped"
        time.sleep(0.1)
    stalled.settimeout(15)
    try:
        while stalled.recv(65536):
            pass  # what was buffered, then the end: the daemon closed it
    except ConnectionResetError:
        pass
    stalled.close()
    assert grown < 40, f"daemon grew {grown:.0f} MB for 12 MB of events and one stalled stream"
    assert "Traceback" not in d.log()
