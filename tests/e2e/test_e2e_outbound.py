"""Requests the daemon makes for a user (pipeline http/prometheus sources, callbacks) on the real daemon.

A user once made the daemon read a loopback-only endpoint through a pipeline
source and show the value, and callbacks POSTed anywhere. A loopback HTTP
server plays that endpoint here; its hit count shows what reached it.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from oaasd.service.auth import token_hash

USERS = "".join(f'[[users]]\nname = "{n}"\nrole = "{r}"\ntoken_sha256 = "{token_hash(n + "-token")}"\n'
                for n, r in (("alice", "user"), ("root", "admin")))
CALLBACKS = "[callbacks]\nattempts = 3\nbackoff_s = 0.05\ntimeout_s = 5\n"
PIPELINE = {
    "name": "out", "slo_ms": 200,
    "stages": [{"name": "only", "max_replicas": 2, "variants": [
        {"name": "v", "accuracy": 0.9, "cores": 0.01,
         "profiles": [{"batch": 1, "latency_ms": 10, "throughput_rps": 5000}]}]}]}
REPLICAS = {"kind": "tasks", "template": {"command": ["sleep", "60"], "resources": {"cpus": 0.01},
                                          "require_result": False}}
QUICK = {"command": ["true"], "require_result": False}


class Endpoint:
    """An HTTP server on one address: ``GET /load`` answers ``{"rps": value}``, ``/redirect?to=`` a 302,
    ``POST /hook`` 200; every request is recorded in ``hits``."""

    def __init__(self, host: str, value: float):
        self.hits: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                url = urlparse(self.path)
                owner.hits.append((self.command, url.path))
                if url.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(url.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = json.dumps({"rps": value}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self.server = server_class((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str | None = None) -> str:
        host = host or self.server.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    made: list[Endpoint] = []

    def make(host: str, value: float) -> Endpoint:
        made.append(Endpoint(host, value))
        return made[-1]
    yield make
    for e in made:
        e.close()


def as_(d, name: str, method: str, path: str, body=None):
    return d.request(method, path, body, headers={"Authorization": f"Bearer {name}-token"})


def register(d, name: str, source: dict) -> tuple[int, dict]:
    body = {"pipeline": PIPELINE, "source": source, "actuator": REPLICAS, "interval_s": 0.2}
    return as_(d, name, "POST", "/v1/pipelines", body)


def adaptations(d, pipeline_id: int, count: int = 2, timeout: float = 20) -> list[dict]:
    """The newest adaptations of a pipeline once it has ``count``."""
    deadline = time.time() + timeout
    while True:
        status, view = as_(d, "root", "GET", f"/v1/pipelines/{pipeline_id}?limit=5")
        assert status == 200, view
        if view["adaptation_count"] >= count:
            return view["adaptations"]
        assert time.time() < deadline, json.dumps(view)[:2000]
        time.sleep(0.05)


def settled_callback(d, task_id: int, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while True:
        status, view = as_(d, "root", "GET", f"/v1/tasks/{task_id}")
        if view["callback"] is not None and view["callback"]["state"] != "PENDING":
            return view["callback"]
        assert time.time() < deadline, view
        time.sleep(0.05)


def stop_all(d) -> None:
    for p in as_(d, "root", "GET", "/v1/pipelines?state=RUNNING")[1]["items"]:
        assert as_(d, "root", "DELETE", f"/v1/pipelines/{p['id']}")[0] == 202


def loopback_name() -> tuple[str, str] | None:
    """A host name (not a ``localhost`` one) that resolves to a loopback address here, and that address."""
    for name in (socket.gethostname(), "ip6-localhost", "ip6-loopback"):
        try:
            addr = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)[0][4][0]
        except OSError:
            continue
        if ipaddress.ip_address(addr).is_loopback and not name.lower().endswith("localhost"):
            return name, addr
    return None


def test_allow_listed_loopback_server_is_reached_and_a_redirect_out_of_it_is_not(daemon_factory, endpoint):
    target, secret = endpoint("127.0.0.7", 12.0), endpoint("127.0.0.9", 1234.0)
    d = daemon_factory('[outbound]\nallow = ["127.0.0.7/32"]\n' + CALLBACKS + USERS)

    status, view = register(d, "alice", {"kind": "http", "url": target.url("/load")})
    assert status == 201 and view["user"] == "alice", view
    newest = adaptations(d, view["id"])[0]
    assert newest["source_error"] is None and newest["observed_rps"] == 12.0
    status, view = register(d, "alice", {"kind": "prometheus", "url": target.url("/redirect?to=" + secret.url("/load")),
                                         "query": "up"})
    assert status == 201, view
    errors = {a["source_error"] for a in adaptations(d, view["id"])}
    assert errors == {f"{secret.url('/load')}: refused by the outbound policy: 127.0.0.9 is loopback"}, errors

    status, task = as_(d, "alice", "POST", "/v1/tasks", {**QUICK, "callback_url": target.url("/hook")})
    assert status == 201, task
    callback = settled_callback(d, task["id"])
    assert callback["state"] == "DELIVERED" and callback["attempts"] == 1 and ("POST", "/hook") in target.hits
    status, task = as_(d, "alice", "POST", "/v1/tasks",
                       {**QUICK, "callback_url": target.url("/redirect?to=" + secret.url("/hook"))})
    assert status == 201, task
    callback = settled_callback(d, task["id"])  # a 302 is not followed for a POST: a failed delivery
    assert callback["state"] == "FAILED" and callback["last_status"] == 302
    assert secret.hits == []
    stop_all(d)


def test_default_policy_keeps_users_off_loopback_but_not_admins(daemon_factory, endpoint):
    named = loopback_name()
    if named is None:
        pytest.skip("no host name resolves to a loopback address on this machine")
    name, addr = named
    secret = endpoint(addr, 1234.0)  # a loopback-only endpoint of the head node
    d = daemon_factory(CALLBACKS + USERS)

    for kind, extra in (("http", {}), ("prometheus", {"query": "up"})):
        for url in (secret.url("/load"), secret.url("/load", "localhost"), f"http://127.0.0.1:{d.port}/metrics"):
            status, body = register(d, "alice", {"kind": kind, "url": url, **extra})
            assert status == 422 and body["detail"][0]["field"] == f"source.{kind}.url", body
            assert body["detail"][0]["problem"].startswith("refused by the outbound policy: "), body
    status, body = as_(d, "alice", "POST", "/v1/tasks", {**QUICK, "callback_url": secret.url("/hook")})
    assert status == 422 and body["detail"][0]["field"] == "callback_url", body

    # A name is checked where it resolves: the registration passes, every fetch is refused.
    status, view = register(d, "alice", {"kind": "http", "url": secret.url("/load", name)})
    assert status == 201, view
    errors = {a["source_error"] for a in adaptations(d, view["id"], count=3)}
    assert errors == {f"{secret.url('/load', name)}: refused by the outbound policy: "
                      f"{name} resolves only to refused addresses: {addr} is loopback"}, errors
    status, task = as_(d, "alice", "POST", "/v1/tasks", {**QUICK, "callback_url": secret.url("/hook", name)})
    assert status == 201, task
    callback = settled_callback(d, task["id"])
    assert callback["state"] == "FAILED" and callback["attempts"] == 1, callback  # not retried
    assert f"{addr} is loopback" in callback["last_error"]
    assert secret.hits == []  # nothing of alice's reached it

    status, view = register(d, "root", {"kind": "http", "url": secret.url("/load", name)})  # an admin's may
    assert status == 201, view
    assert adaptations(d, view["id"])[0]["observed_rps"] == 1234.0 and ("GET", "/load") in secret.hits
    stop_all(d)
