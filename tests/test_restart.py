"""Crash and restart: nothing acknowledged is lost, running work is re-adopted."""

from __future__ import annotations

import os
import signal
import threading
import time

from conftest import pid_alive, wait_file

SMALL = '[[nodes]]\nname = "small"\ncpus = 1\nmemory_mb = 1000\n'


def gated(gate, pidfile) -> dict:
    """A task that writes its pid, waits for ``gate`` and reports a result."""
    return {"script": f"echo $$ > {pidfile}\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n"
                      f"echo 'OAAS_RESULT {{\"ok\": true}}'\n", "resources": {"cpus": 1}}


def test_kill9_with_pending_and_running_tasks(daemon_factory, tmp_path):
    d = daemon_factory(SMALL)
    gate, pidfile = tmp_path / "gate", tmp_path / "pid"
    running = d.submit(gated(gate, pidfile))
    pid = int(wait_file(pidfile))
    pending = [d.submit({"script": f"echo 'OAAS_RESULT {{\"i\": {i}}}'", "resources": {"cpus": 1}})
               for i in range(5)]
    d.stop(signal.SIGKILL)
    assert pid_alive(pid), "the task must outlive the daemon"
    d.start()
    view = d.task(running)
    assert view["state"] == "RUNNING" and view["attempt_count"] == 1
    assert [d.task(t)["state"] for t in pending] == ["PENDING"] * 5
    gate.touch()
    view = d.wait(running)
    assert view["state"] == "COMPLETED" and view["result"] == {"ok": True}
    assert view["attempt_count"] == 1
    for i, t in enumerate(pending):
        v = d.wait(t)
        assert v["state"] == "COMPLETED" and v["result"] == {"i": i}
    assert not pid_alive(pid)


def test_attempt_lost_while_down_is_retried_or_fails(daemon_factory, tmp_path):
    d = daemon_factory()
    gates = [tmp_path / "g0", tmp_path / "g1"]
    pidfiles = [tmp_path / "p0", tmp_path / "p1"]
    retried = d.submit(gated(gates[0], pidfiles[0]) | {"max_retries": 1})
    no_retry = d.submit(gated(gates[1], pidfiles[1]) | {"max_retries": 0})
    groups = [os.getpgid(int(wait_file(p))) for p in pidfiles]
    d.stop(signal.SIGKILL)
    for pgid in groups:
        os.killpg(pgid, signal.SIGKILL)
    for p in pidfiles:
        p.unlink()
    gates[0].touch()
    d.start()
    view = d.wait(retried)
    assert view["state"] == "COMPLETED" and view["attempt_count"] == 2 and view["node_failures"] == 1
    assert [a["state"] for a in view["attempts"]] == ["NODE_FAIL", "COMPLETED"]
    assert "daemon" in view["attempts"][0]["message"]
    view = d.wait(no_retry)
    assert view["state"] == "NODE_FAIL" and view["node_failures"] == 1


def test_sigterm_leaves_tasks_running_for_readoption(daemon_factory, tmp_path):
    d = daemon_factory()
    gate, pidfile = tmp_path / "gate", tmp_path / "pid"
    tid = d.submit(gated(gate, pidfile) | {"script": "echo 'OAAS_METRIC {\"step\": 1}'\n" + gated(gate, pidfile)["script"]})
    pid = int(wait_file(pidfile))
    assert d.stop(signal.SIGTERM) == 0
    assert pid_alive(pid)
    d.start()
    gate.touch()
    view = d.wait(tid)
    assert view["state"] == "COMPLETED" and view["attempt_count"] == 1
    assert [m["step"] for m in view["metrics"]] == [1], "metrics are not recorded twice"


def test_every_acknowledged_submission_survives_kill9(daemon_factory):
    d = daemon_factory(SMALL)
    blocker = d.submit({"command": ["sleep", "30"], "resources": {"cpus": 1}})
    acked: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(n):
            try:
                status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "require_result": False,
                                                               "resources": {"cpus": 1}}, timeout=5)
            except OSError:
                return
            if status == 201:
                with lock:
                    acked.append(body["id"])

    threads = [threading.Thread(target=client, args=(200,)) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    d.stop(signal.SIGKILL)
    for t in threads:
        t.join()
    assert len(acked) > 10
    d.start()
    d.request("DELETE", f"/v1/tasks/{blocker}")
    for tid in acked:
        assert d.task(tid)["state"] in {"PENDING", "RUNNING", "COMPLETED"}
    for tid in acked[-5:]:
        assert d.wait(tid, timeout=60)["state"] == "COMPLETED"


def test_task_that_finished_while_the_daemon_was_down_keeps_its_result(daemon_factory, tmp_path):
    d = daemon_factory()
    gate, pidfile = tmp_path / "gate", tmp_path / "pid"
    tid = d.submit(gated(gate, pidfile))
    pid = int(wait_file(pidfile))
    d.stop(signal.SIGKILL)
    gate.touch()
    deadline = time.time() + 10
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    d.start()
    view = d.wait(tid)
    assert view["state"] == "COMPLETED" and view["result"] == {"ok": True}
    assert view["attempt_count"] == 1 and view["node_failures"] == 0
