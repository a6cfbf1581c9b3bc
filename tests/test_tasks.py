"""Tasks end to end on the real daemon: results, failures, limits, cancel, queueing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import pid_alive, wait_file

PY = sys.executable


def result_script(body: str) -> dict:
    return {"name": "t", "command": [PY, "-c", body]}


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def test_task_completes_with_result_metrics_and_history(daemon):
    code = ("import json,os\n"
            "print('hello')\n"
            "print('OAAS_METRIC', json.dumps({'step': 1, 'accuracy': 0.5}))\n"
            "print('OAAS_METRIC', json.dumps({'step': 2, 'accuracy': 0.8}))\n"
            "print('OAAS_RESULT', json.dumps({'accuracy': 0.97, 'node': os.environ['OAAS_NODE'],"
            " 'task': os.environ['OAAS_TASK_ID'], 'attempt': os.environ['OAAS_ATTEMPT'],"
            " 'workers': os.environ['OAAS_WORKERS'], 'mine': os.environ['MINE']}))\n")
    spec = result_script(code) | {"env": {"MINE": "x y"}}
    status, body = daemon.request("POST", "/v1/tasks", spec)
    assert status == 201
    assert daemon.last_headers["Location"] == f"/v1/tasks/{body['id']}"
    view = daemon.wait(body["id"])
    assert view["state"] == "COMPLETED", view
    assert view["result"] == {"accuracy": 0.97, "node": "local", "task": str(body["id"]),
                              "attempt": "1", "workers": "1", "mine": "x y"}
    assert [m["accuracy"] for m in view["metrics"]] == [0.5, 0.8]
    assert [(h["old"], h["new"]) for h in view["history"]] == [
        (None, "PENDING"), ("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
    (attempt,) = view["attempts"]
    assert attempt["node"] == "local" and attempt["exit_code"] == 0 and attempt["signal"] is None
    assert attempt["state"] == "COMPLETED" and attempt["ended_at"] >= attempt["started_at"]
    status, text = daemon.request("GET", f"/v1/tasks/{body['id']}/logs")
    assert status == 200 and text.startswith("hello\n")


def test_result_file_and_script(daemon):
    tid = daemon.submit({"script": 'echo \'{"loss": 0.25}\' > "$OAAS_RESULT_FILE"\necho done >&2\n'})
    view = daemon.wait(tid)
    assert view["state"] == "COMPLETED" and view["result"] == {"loss": 0.25}
    status, text = daemon.request("GET", f"/v1/tasks/{tid}/logs?stream=stderr")
    assert text == "done\n"


@pytest.mark.parametrize("script, reason, exit_code, sig", [
    ("exit 3", "NonZeroExitCode", 3, None),
    ("kill -SEGV $$", "NonZeroExitCode", None, "SIGSEGV"),
    ("echo nothing", "NoResult", 0, None),
    ("echo 'OAAS_RESULT {not json'", "NoResult", 0, None),
    ("echo 'OAAS_RESULT [1, 2]'", "NoResult", 0, None),
])
def test_failures_say_why(daemon, script, reason, exit_code, sig):
    view = daemon.wait(daemon.submit({"script": script}))
    assert view["state"] == "FAILED" and view["reason"] == reason, view
    attempt = view["attempts"][0]
    if exit_code is not None:
        assert attempt["exit_code"] == exit_code
    assert attempt["signal"] == sig
    assert daemon.request("GET", "/healthz")[0] == 200


def test_malformed_result_line_is_recorded(daemon):
    view = daemon.wait(daemon.submit({"script": "echo 'OAAS_RESULT {bad'"}))
    assert "OAAS_RESULT: not valid JSON" in view["message"]


def test_require_result_false_completes_without_result(daemon):
    view = daemon.wait(daemon.submit({"command": ["true"], "require_result": False}))
    assert view["state"] == "COMPLETED" and view["result"] is None


def test_time_limit_kills_the_whole_group(daemon, tmp_path):
    pidfile = tmp_path / "child.pid"
    tid = daemon.submit({"script": f"sleep 60 & echo $! > {pidfile}\nwait\n", "time_limit_s": 2})
    child = int(wait_file(pidfile))
    view = daemon.wait(tid, timeout=20)
    assert view["state"] == "TIMEOUT" and view["reason"] == "TimeLimit"
    assert view["attempts"][0]["signal"] == "SIGTERM"
    deadline = time.time() + 5
    while pid_alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)


def test_cancel_running_leaves_no_process(daemon, tmp_path):
    pidfile = tmp_path / "child.pid"
    # The child ignores SIGTERM: only the SIGKILL after the grace period ends it.
    tid = daemon.submit({"script": f"sh -c 'trap \"\" TERM; sleep 60' & echo $! > {pidfile}\nwait\n"})
    child = int(wait_file(pidfile))
    status, body = daemon.request("DELETE", f"/v1/tasks/{tid}")
    assert status == 202
    view = daemon.wait(tid, timeout=20)
    assert view["state"] == "CANCELLED" and view["reason"] == "CancelledByUser"
    deadline = time.time() + 5
    while pid_alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)


def test_queue_waits_for_resources_then_starts(daemon_factory, tmp_path):
    d = daemon_factory('[[nodes]]\nname = "small"\ncpus = 1\nmemory_mb = 1000\n')
    gate = tmp_path / "gate"
    first = d.submit({"script": f"while [ ! -e {gate} ]; do sleep 0.05; done\necho 'OAAS_RESULT {{}}'",
                      "resources": {"cpus": 1}})
    d.wait(first, {"RUNNING"})
    second = d.submit({"script": "echo 'OAAS_RESULT {\"n\": 2}'", "resources": {"cpus": 0.5}})
    time.sleep(0.3)
    view = d.task(second)
    assert view["state"] == "PENDING" and view["reason"] == "Resources"
    assert view["nodes_rejected"] == {"InsufficientCpu": 1}
    status, nodes = d.request("GET", "/v1/nodes")
    (node,) = nodes["items"]
    assert node["state"] == "ALLOCATED" and node["free"]["cpus"] == 0
    gate.touch()
    assert d.wait(first)["state"] == "COMPLETED"
    assert d.wait(second)["state"] == "COMPLETED"
    node = d.request("GET", "/v1/nodes")[1]["items"][0]
    assert node["state"] == "IDLE" and node["free"] == node["capacity"]


def test_cancel_pending_is_immediate(daemon_factory, tmp_path):
    d = daemon_factory('[[nodes]]\nname = "small"\ncpus = 1\nmemory_mb = 1000\n')
    blocker = d.submit({"command": ["sleep", "30"], "resources": {"cpus": 1}})
    d.wait(blocker, {"RUNNING"})
    waiting = d.submit({"command": ["true"], "resources": {"cpus": 1}})
    status, body = d.request("DELETE", f"/v1/tasks/{waiting}")
    assert status == 202 and body["state"] == "CANCELLED"
    assert d.request("DELETE", f"/v1/tasks/{blocker}")[0] == 202
    assert d.wait(blocker)["state"] == "CANCELLED"
    assert d.task(waiting)["attempt_count"] == 0


def test_idempotency_key_returns_the_first_task(daemon):
    spec = {"command": ["true"], "require_result": False, "idempotency_key": "run-42"}
    status1, first = daemon.request("POST", "/v1/tasks", spec)
    status2, second = daemon.request("POST", "/v1/tasks", spec)
    assert (status1, status2) == (201, 200)
    assert first["id"] == second["id"]
    status, listing = daemon.request("GET", "/v1/tasks")
    assert [t["id"] for t in listing["items"]] == [first["id"]]


def test_list_filters_and_cursor(daemon):
    ids = [daemon.submit({"name": f"n{i % 2}", "command": ["true"], "require_result": False,
                          "user": "ann" if i < 3 else "bob"}) for i in range(5)]
    for tid in ids:
        daemon.wait(tid)
    status, page1 = daemon.request("GET", "/v1/tasks?limit=2")
    assert [t["id"] for t in page1["items"]] == ids[:-3:-1] and page1["next"] == str(ids[3])
    status, page2 = daemon.request("GET", f"/v1/tasks?limit=2&cursor={page1['next']}")
    assert [t["id"] for t in page2["items"]] == [ids[2], ids[1]]
    status, anns = daemon.request("GET", "/v1/tasks?user=ann&name=n0")
    assert [t["id"] for t in anns["items"]] == [ids[2], ids[0]]
    status, done = daemon.request("GET", "/v1/tasks?state=COMPLETED")
    assert len(done["items"]) == 5 and done["next"] is None


def test_log_follow_streams_until_the_end(daemon):
    tid = daemon.submit({"script": "for i in 1 2 3; do echo line$i; sleep 0.2; done\necho 'OAAS_RESULT {}'"})
    status, text = daemon.request("GET", f"/v1/tasks/{tid}/logs?follow=1")
    assert status == 200
    assert text.splitlines() == ["line1", "line2", "line3", "OAAS_RESULT {}"]
    assert daemon.task(tid)["state"] == "COMPLETED"


def test_never_fitting_task_is_refused(daemon):
    status, body = daemon.request("POST", "/v1/tasks", {"command": ["true"], "resources": {"memory_mb": 1 << 30}})
    assert status == 422 and body["error"] == "Unsatisfiable"
    assert {"check": "InsufficientMemory", "nodes": 1}.items() <= body["detail"][0].items()
    status, listing = daemon.request("GET", "/v1/tasks")
    assert listing["items"] == []


def test_refusal_speaks_the_units_the_user_wrote(daemon_factory):
    d = daemon_factory('[[nodes]]\nname = "n"\ncpus = 2\nmemory_mb = 1000\n')
    cases = [({"cpus": 999}, "resources.cpus", "requested 999, largest node has 2", 999, 2),
             ({"cpus": 2.5}, "resources.cpus", "requested 2.5, largest node has 2", 2.5, 2),
             ({"memory_mb": 4000}, "resources.memory_mb", "requested 4000, largest node has 1000", 4000, 1000),
             ({"cores": [1500]}, "resources.cores", "requested 1500 millicores on one core, largest core has 1000",
              1500, 1000)]
    for resources, field, problem, requested, capacity in cases:
        status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "resources": resources})
        assert status == 422 and body["error"] == "Unsatisfiable", body
        shortfall = [x for x in body["detail"] if x["field"] != "resources"]
        assert shortfall == [{"field": field, "problem": problem, "requested": requested, "capacity": capacity}]
    status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "workers": 3, "resources": {"cpus": 1}})
    assert status == 422
    assert {"field": "workers", "problem": "requested 3 workers, the nodes that fit one hold 2"} in [
        {k: x[k] for k in ("field", "problem")} for x in body["detail"]], body
    cli = subprocess.run([sys.executable, "-m", "oaasd", "submit", "--url", f"http://127.0.0.1:{d.port}", "--cpus", "999", "--", "true"],
                         capture_output=True, text=True)
    assert cli.returncode == 4
    assert "resources.cpus: requested 999, largest node has 2" in cli.stderr, cli.stderr


def test_cancel_gives_the_program_its_grace_period(daemon, tmp_path):
    marker = tmp_path / "cleaned"
    code = ("import signal, sys, time\n"
            f"def bye(*_):\n    open({str(marker)!r}, 'w').write('yes')\n    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    tid = daemon.submit({"command": [sys.executable, "-c", code]})
    deadline = time.time() + 15
    while "ready" not in daemon.request("GET", f"/v1/tasks/{tid}/logs")[1]:
        assert time.time() < deadline
        time.sleep(0.05)
    assert daemon.request("DELETE", f"/v1/tasks/{tid}")[0] == 202
    view = daemon.wait(tid)
    assert view["state"] == "CANCELLED"
    assert marker.read_text() == "yes", "the SIGTERM handler must run before any SIGKILL"
