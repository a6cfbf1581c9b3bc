"""The pipeline adaptation loop on the real daemon: real load sources, real actuator processes.

A local HTTP server plays the load source (its value changed by the test);
a recording script plays the command actuator; the ``tasks`` actuator runs
real tasks. Every wait polls ``GET /v1/pipelines/{id}`` with a deadline.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from conftest import free_port

from oaasd.service.auth import token_hash

INTERVAL = 0.2
# At 10 requests/s: detect heavy b1 x1, classify x1; at 100: heavy b4 x3, classify x2;
# at 250: light b1 x3, classify x5 (the exact solver on this pipeline).
PIPELINE = {
    "name": "caption", "slo_ms": 200, "alpha": 1.0, "beta": 0.01,
    "stages": [
        {"name": "detect", "max_replicas": 4, "variants": [
            {"name": "heavy", "accuracy": 0.9, "cores": 1, "profiles": [
                {"batch": 1, "latency_ms": 50, "throughput_rps": 20},
                {"batch": 4, "latency_ms": 100, "throughput_rps": 40}]},
            {"name": "light", "accuracy": 0.6, "cores": 1, "profiles": [
                {"batch": 1, "latency_ms": 10, "throughput_rps": 100}]}]},
        {"name": "classify", "max_replicas": 8, "variants": [
            {"name": "small", "accuracy": 0.9, "cores": 0.5, "profiles": [
                {"batch": 1, "latency_ms": 10, "throughput_rps": 50}]}]}]}
RECORDER = """import json, os, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "stage": os.environ["OAAS_PIPELINE_STAGE"]}) + "\\n")
print("applied", *sys.argv[2:])
"""
REPLICA = """import os, time
with open(os.environ["OUT"], "a") as f:
    f.write(" ".join(os.environ["OAAS_PIPELINE_" + k] for k in ("STAGE", "VARIANT", "BATCH")) + "\\n")
time.sleep(600)
"""


class LoadServer:
    """A JSON load source on loopback: ``/load`` answers ``{"rps": value}``, ``/api/v1/query`` as Prometheus."""

    def __init__(self, value: float):
        self.value = value
        self.broken = False
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                if owner.broken:
                    return self._send(500, {"error": "down"})
                if url.path == "/api/v1/query":
                    owner.queries.extend(parse_qs(url.query).get("query", []))
                    return self._send(200, {"status": "success", "data": {"resultType": "vector", "result": [
                        {"metric": {}, "value": [time.time(), str(owner.value)]}]}})
                return self._send(200, {"rps": owner.value, "other": "x"})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def load():
    server = LoadServer(10.0)
    yield server
    server.close()


def registration(source: dict, actuator: dict, **extra) -> dict:
    return {"pipeline": PIPELINE, "source": source, "actuator": actuator, "interval_s": INTERVAL, **extra}


def recorder(tmp: Path) -> tuple[dict, Path]:
    """A command actuator appending each run's argv and stage to a file."""
    tmp.mkdir(parents=True, exist_ok=True)
    script, out = tmp / "record.py", tmp / "applied.jsonl"
    script.write_text(RECORDER)
    argv = [sys.executable, str(script), str(out), "{stage}", "{variant}", "--batch={batch}",
            "--replicas={replicas}", "--cores={cores}"]
    return {"kind": "command", "argv": argv, "timeout_s": 10}, out


def register(d, body: dict) -> int:
    status, view = d.request("POST", "/v1/pipelines", body)
    assert status == 201, view
    assert view["state"] == "RUNNING" and d.last_headers["Location"] == f"/v1/pipelines/{view['id']}"
    return view["id"]


def as_headers(name: str) -> dict[str, str]:
    """The Authorization header of a test user (token ``<name>-token``)."""
    return {"Authorization": f"Bearer {name}-token"}


def poll(d, pipeline_id: int, pred, timeout: float = 20, limit: int = 20, headers=None) -> dict:
    """GET the pipeline until ``pred(view)`` holds; return that view."""
    deadline = time.time() + timeout
    while True:
        status, view = d.request("GET", f"/v1/pipelines/{pipeline_id}?limit={limit}", headers=headers)
        assert status == 200, view
        if pred(view):
            return view
        assert time.time() < deadline, f"pipeline {pipeline_id} never got there: {json.dumps(view)[:3000]}"
        time.sleep(0.05)


def until(pred, timeout: float = 20) -> None:
    """Wait until ``pred()`` holds, failing after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "condition never held"
        time.sleep(0.05)


def config(view: dict) -> list[tuple]:
    return [(c["stage"], c["variant"], c["batch"], c["replicas"]) for c in view["configuration"] or []]


def shape(*stages) -> callable:
    return lambda view: config(view) == list(stages)


LOW = (("detect", "heavy", 1, 1), ("classify", "small", 1, 1))
MID = (("detect", "heavy", 4, 3), ("classify", "small", 1, 2))
SURGE = (("detect", "light", 1, 3), ("classify", "small", 1, 5))


def test_loop_follows_a_surge_and_back_and_stops(daemon_factory, load, tmp_path):
    d = daemon_factory()
    actuator, applied = recorder(tmp_path)
    pid = register(d, registration({"kind": "http", "url": f"{load.url}/load", "field": "rps"}, actuator))
    poll(d, pid, shape(*LOW))
    load.value = 250.0
    view = poll(d, pid, shape(*SURGE))
    changed = [a for a in view["adaptations"] if a["changed"]][0]
    assert changed["observed_rps"] == 250.0 and changed["predicted_rps"] == 250.0 and changed["feasible"]
    assert changed["actuator"]["status"] == "ok"
    assert [s["exit_code"] for s in changed["actuator"]["stages"]] == [0, 0]
    assert "applied detect light --batch=1 --replicas=3 --cores=1" in changed["actuator"]["stages"][0]["output"]
    load.value = 10.0
    view = poll(d, pid, lambda v: shape(*LOW)(v) and v["adaptations"][0]["actuator"] is None, limit=3)
    assert len(view["adaptations"]) == 3 and view["adaptation_count"] >= 4
    newest = view["adaptations"][0]
    assert newest["at"] >= view["adaptations"][1]["at"] and not newest["changed"]
    assert newest["latency_ms"] > 0 and 0 < newest["accuracy"] <= 1 and newest["cost_cores"] == 1.5
    # Commands ran only for changes: every stage at start, both on the surge, both back.
    runs = [json.loads(line) for line in applied.read_text().splitlines()]
    assert [(r["stage"], r["argv"][1], r["argv"][3]) for r in runs] == [
        ("detect", "heavy", "--replicas=1"), ("classify", "small", "--replicas=1"),
        ("detect", "light", "--replicas=3"), ("classify", "small", "--replicas=5"),
        ("detect", "heavy", "--replicas=1"), ("classify", "small", "--replicas=1")]
    assert view["applied"] == view["configuration"]
    status, listing = d.request("GET", "/v1/pipelines")
    assert status == 200 and [(p["id"], p["state"], p["source"], p["actuator"]) for p in listing["items"]] == [
        (pid, "RUNNING", "http", "command")]

    status, stopped = d.request("DELETE", f"/v1/pipelines/{pid}")
    assert status == 202 and stopped["state"] == "STOPPED" and stopped["stopped_at"] is not None
    load.value = 250.0  # a loop still running would apply this
    clock = register(d, registration({"kind": "http", "url": f"{load.url}/load"}, recorder(tmp_path / "c")[0]))
    poll(d, clock, lambda v: v["adaptation_count"] >= 5)  # five intervals of another loop have passed
    status, after = d.request("GET", f"/v1/pipelines/{pid}")
    assert after["state"] == "STOPPED" and after["adaptation_count"] == stopped["adaptation_count"]
    assert len(applied.read_text().splitlines()) == 6
    status, running = d.request("GET", "/v1/pipelines?state=RUNNING")
    assert [p["id"] for p in running["items"]] == [clock]


def test_failing_actuator_and_sources_are_recorded_and_retried(daemon_factory, load, tmp_path):
    d = daemon_factory()
    fail = {"kind": "command", "argv": [sys.executable, "-c", "import sys; print('boom'); sys.exit(1)"]}
    failing = register(d, registration({"kind": "http", "url": f"{load.url}/load"}, fail))
    view = poll(d, failing, lambda v: v["adaptation_count"] >= 3)
    for a in view["adaptations"]:  # not applied, so tried again every interval
        assert a["actuator"]["status"] == "failed" and a["observed_rps"] == 10.0
        assert a["actuator"]["message"] == "detect: exit code 1; classify: exit code 1"
        assert a["actuator"]["stages"][0]["output"].strip() == "boom"
    assert view["applied"] == []

    huge = {"kind": "tasks", "template": {"command": ["true"], "resources": {"cpus": 5000}}}
    unplaceable = register(d, registration({"kind": "http", "url": f"{load.url}/load"}, huge))
    view = poll(d, unplaceable, lambda v: v["adaptation_count"] >= 2)
    for a in view["adaptations"]:  # refused at submission, every interval, and the loop goes on
        assert a["actuator"]["status"] == "failed" and a["actuator"]["started"] == []
        assert a["actuator"]["message"].startswith("detect: no node could ever hold this task")
    assert view["tasks"] == []

    missing = {"kind": "command", "argv": [str(tmp_path / "no-such-program")]}
    nowhere = register(d, registration({"kind": "http", "url": f"http://127.0.0.1:{free_port()}/load"}, missing))
    view = poll(d, nowhere, lambda v: v["adaptation_count"] >= 3)
    assert all(a["observed_rps"] is None and a["configuration"] is None and a["actuator"] is None
               and "127.0.0.1" in a["source_error"] for a in view["adaptations"])

    actuator, _ = recorder(tmp_path)
    load.broken = True
    flaky = register(d, registration({"kind": "http", "url": f"{load.url}/load"}, actuator))
    view = poll(d, flaky, lambda v: v["adaptation_count"] >= 2)
    assert "HTTP 500" in view["adaptations"][0]["source_error"] and view["configuration"] is None
    load.broken = False  # the source comes back: the loop picks it up at the next interval
    view = poll(d, flaky, shape(*LOW))
    assert view["adaptations"][0]["source_error"] is None and view["adaptations"][0]["observed_rps"] == 10.0

    wrong_field = register(d, registration({"kind": "http", "url": f"{load.url}/load", "field": "other"}, actuator))
    view = poll(d, wrong_field, lambda v: v["adaptation_count"] >= 1)
    assert view["adaptations"][0]["source_error"] == "other is not a number: 'x'"
    status, health = d.request("GET", "/healthz")
    assert status == 200 and d.proc.poll() is None
    status, view = d.request("GET", f"/v1/pipelines/{failing}")
    assert view["state"] == "RUNNING"

    load.value = 250.0  # and a Prometheus instant query as the source
    source = {"kind": "prometheus", "url": f"{load.url}/api/v1/query", "query": "sum(rate(requests_total[1m]))"}
    prom = register(d, registration(source, actuator))
    view = poll(d, prom, shape(*SURGE))
    assert view["adaptations"][0]["observed_rps"] == 250.0
    assert load.queries[0] == "sum(rate(requests_total[1m]))"


def test_file_source_and_restart_resume_with_history(daemon_factory, tmp_path):
    d = daemon_factory()
    loads = d.state_dir / "loads"
    (loads / "caption.txt").write_text("3\n250\n")
    actuator, applied = recorder(tmp_path)
    body = registration({"kind": "file", "path": str(loads / "caption.txt")}, actuator,
                        predictor={"kind": "window_max", "window": 1000}, headroom=0.0)
    pid = register(d, body)
    poll(d, pid, shape(*SURGE))
    with open(loads / "caption.txt", "a") as f:
        f.write("10\n")
    before = poll(d, pid, lambda v: v["adaptations"][0]["observed_rps"] == 10.0)
    assert before["adaptations"][0]["predicted_rps"] == 250.0  # the window still holds the surge
    d.stop()
    count = before["adaptation_count"]
    d.start()
    after = poll(d, pid, lambda v: v["adaptation_count"] >= count + 3, limit=1000)
    assert after["state"] == "RUNNING"
    resumed = [a for a in after["adaptations"] if a["id"] > before["adaptations"][0]["id"]]
    assert resumed and all(a["predicted_rps"] == 250.0 and a["observed_rps"] == 10.0 for a in resumed)
    assert not any(a["changed"] for a in resumed)  # the last configuration came back from the store too
    runs = [json.loads(line)["stage"] for line in applied.read_text().splitlines()]
    assert runs == ["detect", "classify"]  # applied once, not again after the restart


def test_tasks_actuator_keeps_replicas_and_relearns_them_after_restart(daemon_factory, load, tmp_path):
    d = daemon_factory()
    envs = tmp_path / "replicas.txt"
    template = {"command": [sys.executable, "-c", REPLICA], "env": {"OUT": str(envs)},
                "resources": {"cpus": 0.05}, "require_result": False}

    def tasks(*stages):
        want = sorted((s, v, b) for s, v, b, n in stages for _ in range(n))
        return lambda v: shape(*stages)(v) and sorted(
            (t["stage"], t["variant"], t["batch"]) for t in v["tasks"] if t["state"] == "RUNNING") == want \
            and len(v["tasks"]) == len(want)

    pid = register(d, registration({"kind": "http", "url": f"{load.url}/load"}, {"kind": "tasks", "template": template}))
    low = poll(d, pid, tasks(*LOW))
    first = {t["task_id"] for t in low["tasks"]}
    task = d.task(min(first))
    assert task["name"] == "caption-detect" and task["user"] == "anonymous" and task["state"] == "RUNNING"
    # each replica holds a 0.05-core CPU quota (cgroups): its interpreter takes a while to start writing
    until(lambda: envs.exists() and {"detect heavy 1", "classify small 1"} <= set(envs.read_text().splitlines()))
    load.value = 100.0
    mid = poll(d, pid, tasks(*MID))
    kept = {t["task_id"] for t in mid["tasks"]} & first
    assert [t["stage"] for t in mid["tasks"] if t["task_id"] in kept] == ["classify"]  # same variant and batch: kept
    replaced = (first - kept).pop()
    ended = d.wait(replaced)
    assert ended["state"] == "CANCELLED" and ended["reason"] == "PipelineAdapted"
    until(lambda: "detect heavy 4" in envs.read_text().splitlines())

    d.stop()  # the replicas outlive the daemon and are re-adopted
    d.start()
    load.value = 10.0
    back = poll(d, pid, tasks(*LOW))
    # It knew its tasks from the store: it kept one classify replica and cancelled every other one.
    old, now = {t["task_id"] for t in mid["tasks"]}, {t["task_id"]: t["stage"] for t in back["tasks"]}
    assert [stage for task_id, stage in now.items() if task_id in old] == ["classify"]
    for task_id in old - set(now):
        ended = d.wait(task_id)
        assert ended["state"] == "CANCELLED" and ended["reason"] == "PipelineAdapted"

    status, stopped = d.request("DELETE", f"/v1/pipelines/{pid}")
    assert status == 202 and stopped["state"] == "STOPPED"
    for task_id in {t["task_id"] for t in back["tasks"]}:
        ended = d.wait(task_id)
        assert ended["state"] == "CANCELLED" and ended["reason"] == "PipelineStopped"
    status, view = d.request("GET", f"/v1/pipelines/{pid}")
    assert view["tasks"] == []


BAD = [
    ({"interval_s": 0.01}, "interval_s"),
    ({"source": {"kind": "ftp", "url": "ftp://x"}}, "source"),
    ({"source": {"kind": "http", "url": "file:///etc/passwd"}}, "source.http.url"),
    ({"source": {"kind": "file", "path": "../oaasd.sqlite3"}}, "source.path"),
    ({"source": {"kind": "file", "path": "/etc/hostname"}}, "source.path"),
    ({"source": {"kind": "prometheus", "url": "http://p:9090/api/v1/query"}}, "source.prometheus.query"),
    ({"predictor": {"kind": "oracle"}}, "predictor"),
    ({"predictor": {"kind": "window_max", "window": 0}}, "predictor.window_max.window"),
    ({"actuator": {"kind": "command", "argv": []}}, "actuator.command.argv"),
    ({"actuator": {"kind": "command", "argv": ["kubectl", "scale", "--replicas={replica}"]}}, "actuator.command.argv"),
    ({"actuator": {"kind": "command", "argv": ["echo", "{stage.__class__}"]}}, "actuator.command.argv"),
    ({"actuator": {"kind": "tasks", "template": {"name": "x"}}}, "actuator.tasks.template"),
    ({"actuator": {"kind": "tasks", "template": {"command": ["x"], "idempotency_key": "k"}}}, "actuator.tasks"),
    ({"pipeline": {**PIPELINE, "slo_ms": -1}}, "pipeline.slo_ms"),
    ({"headroom": -0.5}, "headroom"),
]


def test_bad_registrations_are_422_and_pipelines_belong_to_their_owner(daemon_factory, load):
    tokens = {"alice": "user", "bob": "user", "root": "admin"}
    users = "".join(f'[[users]]\nname = "{n}"\nrole = "{r}"\ntoken_sha256 = "{token_hash(n + "-token")}"\n'
                    for n, r in tokens.items())
    d = daemon_factory('[outbound]\nallow = ["127.0.0.1/32"]\n' + users)  # the load server, for alice too

    def as_(name, method, path, body=None, raw=None):
        return d.request(method, path, body, raw=raw, headers=as_headers(name))

    good = registration({"kind": "http", "url": f"{load.url}/load"}, {"kind": "command", "argv": ["true"]})
    for change, field in BAD:
        status, body = as_("alice", "POST", "/v1/pipelines", {**good, **change})
        assert status == 422, (change, body)
        assert body["error"] == "ValidationFailed" and body["detail"][0]["field"] == field, (change, body)
    status, body = as_("alice", "POST", "/v1/pipelines", {k: v for k, v in good.items() if k != "source"})
    assert status == 422 and body["detail"][0]["field"] == "source"
    status, body = as_("alice", "POST", "/v1/pipelines", raw=b"{not json")
    assert status == 400 and body["error"] == "InvalidRequest"
    status, body = as_("alice", "GET", "/v1/pipelines?state=DONE")
    assert status == 400 and body["detail"][0]["field"] == "state"
    assert d.request("GET", "/v1/pipelines")[0] == 401

    status, body = as_("alice", "POST", "/v1/pipelines", good)  # a command runs on the head node: admins only
    assert status == 403 and body["detail"][0]["field"] == "Authorization"
    template = {"command": ["sleep", "60"], "resources": {"cpus": 0.01}, "require_result": False}
    status, view = as_("alice", "POST", "/v1/pipelines", {**good, "actuator": {"kind": "tasks", "template": template}})
    assert status == 201 and view["user"] == "alice"
    replicas = poll(d, view["id"], lambda v: len(v["tasks"]) == 2, headers=as_headers("root"))["tasks"]
    assert {as_("alice", "GET", f"/v1/tasks/{t['task_id']}")[1]["user"] for t in replicas} == {"alice"}
    for method in ("GET", "DELETE"):
        for who, path in (("bob", f"/v1/pipelines/{view['id']}"), ("alice", "/v1/pipelines/999")):
            status, body = as_(who, method, path)
            assert status == 404 and body["detail"][0]["field"] == "id", (who, method, body)
    assert as_("bob", "GET", "/v1/pipelines")[1]["items"] == []
    assert [p["id"] for p in as_("alice", "GET", "/v1/pipelines")[1]["items"]] == [view["id"]]
    assert [p["user"] for p in as_("root", "GET", "/v1/pipelines")[1]["items"]] == ["alice"]
    status, stopped = as_("root", "DELETE", f"/v1/pipelines/{view['id']}")
    assert status == 202 and stopped["state"] == "STOPPED"
    for t in replicas:
        until(lambda: as_("alice", "GET", f"/v1/tasks/{t['task_id']}")[1]["state"] == "CANCELLED")


def test_a_stored_registration_that_no_longer_validates_is_stopped_not_fatal(daemon_factory, load, tmp_path):
    d = daemon_factory()
    actuator, _ = recorder(tmp_path)
    broken = register(d, registration({"kind": "http", "url": f"{load.url}/load", "field": "rps"}, actuator))
    kept = register(d, registration({"kind": "http", "url": f"{load.url}/load", "field": "rps"}, actuator))
    d.stop()
    with sqlite3.connect(d.state_dir / "oaasd.sqlite3") as db:  # as if written by an older version
        db.execute("UPDATE pipelines SET spec=? WHERE id=?", (json.dumps({"retired_field": 1}), broken))
    d.start()
    assert poll(d, broken, lambda v: v["state"] == "STOPPED")["state"] == "STOPPED"
    count = d.request("GET", f"/v1/pipelines/{kept}")[1]["adaptation_count"]
    poll(d, kept, lambda v: v["state"] == "RUNNING" and v["adaptation_count"] > count)
    assert "stored registration no longer valid" in d.log()


def test_a_replica_template_naming_another_user_is_403_unless_admin(daemon_factory, load):
    tokens = {"alice": "user", "bob": "user", "root": "admin"}
    users = "".join(f'[[users]]\nname = "{n}"\nrole = "{r}"\ntoken_sha256 = "{token_hash(n + "-token")}"\n'
                    for n, r in tokens.items())
    d = daemon_factory('[outbound]\nallow = ["127.0.0.1/32"]\n' + users)
    template = {"command": ["sleep", "60"], "resources": {"cpus": 0.01}, "require_result": False}

    def register_as(name: str, template_user: str):
        body = registration({"kind": "http", "url": f"{load.url}/load"},
                            {"kind": "tasks", "template": {**template, "user": template_user}})
        return d.request("POST", "/v1/pipelines", body, headers=as_headers(name))

    status, body = register_as("bob", "alice")
    assert status == 403 and body["error"] == "Forbidden", body
    assert body["detail"] == [{"field": "actuator.tasks.template.user", "problem": "only admins act for other users"}]
    assert d.request("GET", "/v1/pipelines", headers=as_headers("root"))[1]["items"] == []
    assert d.request("GET", "/v1/tasks", headers=as_headers("root"))[1]["items"] == []
    status, own = register_as("bob", "bob")
    assert status == 201 and own["user"] == "bob", own
    status, for_alice = register_as("root", "alice")  # as a tuning's template: an admin may act for a user
    assert status == 201 and for_alice["user"] == "alice", for_alice
    replicas = poll(d, for_alice["id"], lambda v: len(v["tasks"]) == 2, headers=as_headers("root"))["tasks"]
    assert {d.request("GET", f"/v1/tasks/{t['task_id']}", headers=as_headers("alice"))[1]["user"]
            for t in replicas} == {"alice"}
    for pipeline in (own, for_alice):
        assert d.request("DELETE", f"/v1/pipelines/{pipeline['id']}", headers=as_headers("root"))[0] == 202
