"""Cancel as users run it: of a task that already ended (409, CLI exit 4), and an accepted
cancel that a daemon crash in the grace period must not lose (local and ssh nodes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from realnodes import node_toml, ssh_nodes  # noqa: F401  (fixture)

from tests.conftest import REPO, pid_alive, wait_file

GRACE_S = 3.0  # long enough to kill -9 the daemon inside it, short beside the task's run


def long_grace(d, seconds: float = GRACE_S):
    """Give the daemon's kills ``seconds`` of grace (the test daemon's default is 1 s)."""
    write = d.write_config

    def patched(body=None):
        write(body)
        text = d.config_path.read_text().replace("kill_grace_s = 1.0", f"kill_grace_s = {seconds}")
        d.config_path.write_text(text)
    d.write_config = patched
    return d


def deaf_task(pidfile: str, ranout: str, seconds: int = 20) -> dict:
    """A task that ignores SIGTERM, runs ``seconds``, then leaves ``ranout`` and a result."""
    return {"script": f"trap '' TERM\necho $$ > {pidfile}\ni=0\n"
                      f"while [ $i -lt {seconds * 10} ]; do sleep 0.1; i=$((i+1)); done\n"
                      f"touch {ranout}\necho 'OAAS_RESULT {{\"ran\": \"out\"}}'\n"}


def cli(d, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    return subprocess.run([sys.executable, "-m", "oaasd", *args, "--url", f"http://127.0.0.1:{d.port}"],
                          capture_output=True, text=True, timeout=30, env=env)


def test_cancel_of_a_finished_task_is_409_naming_its_state_and_the_cli_exits_4(daemon_factory):
    d = daemon_factory()
    tid = d.submit({"script": "echo 'OAAS_RESULT {\"ok\": 1}'"})
    assert d.wait(tid)["state"] == "COMPLETED"
    status, body = d.request("DELETE", f"/v1/tasks/{tid}")
    assert status == 409, body
    assert body["error"] == "Conflict" and "COMPLETED" in body["message"]
    assert body["detail"][0]["field"] == "state" and "COMPLETED" in body["detail"][0]["problem"]
    view = d.task(tid)
    assert (view["state"], view["result"]) == ("COMPLETED", {"ok": 1}), "nothing changed"
    run = cli(d, "cancel", str(tid))
    assert run.returncode == 4, (run.returncode, run.stdout, run.stderr)
    assert "COMPLETED" in run.stderr and run.stdout == ""
    # A cancelled task cancelled again: 409 too, and the first reason stays.
    slow = d.submit({"command": ["sleep", "30"]})
    d.wait(slow, {"RUNNING"})
    assert d.request("DELETE", f"/v1/tasks/{slow}")[0] == 202
    assert d.wait(slow)["state"] == "CANCELLED"
    status, body = d.request("DELETE", f"/v1/tasks/{slow}")
    assert status == 409 and "CANCELLED" in body["detail"][0]["problem"], body


def test_cancel_of_an_ended_tuning_or_stopped_pipeline_is_409(daemon_factory, tmp_path):
    d = daemon_factory()
    tuning = {"name": "t", "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
              "objectives": [{"metric": "y", "sense": "minimize"}], "number_of_trials": 1, "worker_num": 1,
              "sampler": "random", "trial": {"script": "echo 'OAAS_RESULT {\"y\": 1}'"}}
    status, view = d.request("POST", "/v1/tunings", tuning)
    assert status == 201, view
    deadline = time.time() + 30
    while d.request("GET", f"/v1/tunings/{view['id']}")[1]["state"] == "RUNNING":
        assert time.time() < deadline
        time.sleep(0.1)
    ended = d.request("GET", f"/v1/tunings/{view['id']}")[1]["state"]
    status, body = d.request("DELETE", f"/v1/tunings/{view['id']}")
    assert status == 409 and body["detail"][0]["field"] == "state" and ended in body["message"], body
    assert d.request("GET", f"/v1/tunings/{view['id']}")[1]["state"] == ended
    stage = {"name": "s", "variants": [{"name": "v", "accuracy": 0.9, "cores": 1,
                                         "profiles": [{"batch": 1, "latency_ms": 5, "throughput_rps": 50}]}]}
    pipeline = {"pipeline": {"name": "p", "slo_ms": 100, "stages": [stage]},
                "source": {"kind": "file", "path": "load.txt"},
                "actuator": {"kind": "command", "argv": ["true"]}, "interval_s": 1}
    status, p = d.request("POST", "/v1/pipelines", pipeline)
    assert status == 201, p
    assert d.request("DELETE", f"/v1/pipelines/{p['id']}")[0] == 202
    status, body = d.request("DELETE", f"/v1/pipelines/{p['id']}")
    assert status == 409 and "STOPPED" in body["detail"][0]["problem"], body


def _cancel_then_crash(d, tid: int) -> None:
    """DELETE (202), then kill -9 the daemon inside the grace period, then start it again."""
    status, body = d.request("DELETE", f"/v1/tasks/{tid}")
    assert status == 202 and body["state"] == "RUNNING", body
    d.stop(signal.SIGKILL)  # the grace (3 s) has not run out: the SIGKILL of the task never came
    d.start()


def test_an_accepted_cancel_survives_kill9_in_the_grace_period_local(daemon_factory, tmp_path):
    d = long_grace(daemon_factory(start=False)).start()
    pidfile, ranout = tmp_path / "pid", tmp_path / "ranout"
    tid = d.submit(deaf_task(str(pidfile), str(ranout)))
    pid = int(wait_file(pidfile))
    _cancel_then_crash(d, tid)
    view = d.wait(tid, timeout=20)
    assert (view["state"], view["reason"]) == ("CANCELLED", "CancelledByUser"), view
    assert view["attempt_count"] == 1 and view["attempts"][0]["state"] == "CANCELLED", view["attempts"]
    assert view["result"] is None and not ranout.exists(), "the task ran to its end"
    assert not pid_alive(pid)
    assert "finishing the cancel requested before the restart" in d.log()


def test_an_accepted_cancel_survives_kill9_in_the_grace_period_ssh(daemon_factory, ssh_nodes):
    cluster = ssh_nodes(1)
    node = cluster.nodes[0]
    d = long_grace(daemon_factory(node_toml(cluster), start=False)).start()
    pidfile, ranout = f"{node.work_root}/deaf.pid", Path(node.work_root) / "ranout"
    tid = d.submit(deaf_task(pidfile, str(ranout)))
    wait_file(Path(pidfile))
    _cancel_then_crash(d, tid)
    view = d.wait(tid, timeout=30)
    assert (view["state"], view["reason"]) == ("CANCELLED", "CancelledByUser"), view
    assert view["attempt_count"] == 1, view["attempts"]
    assert view["result"] is None and not ranout.exists(), "the task ran to its end"
    deadline = time.time() + 10
    while node.leftovers() and time.time() < deadline:
        time.sleep(0.1)
    assert node.leftovers() == []


def test_a_cancelled_task_whose_process_died_while_the_daemon_was_down_is_not_run_again(daemon_factory, tmp_path):
    d = long_grace(daemon_factory(start=False)).start()
    pidfile, ranout = tmp_path / "pid", tmp_path / "ranout"
    tid = d.submit(deaf_task(str(pidfile), str(ranout)) | {"max_retries": 3})
    pid = int(wait_file(pidfile))
    status, body = d.request("DELETE", f"/v1/tasks/{tid}")
    assert status == 202, body
    d.stop(signal.SIGKILL)
    os.killpg(os.getpgid(pid), signal.SIGKILL)  # it dies with no exit record: a lost attempt
    pidfile.unlink()
    d.start()
    view = d.wait(tid, timeout=20)
    assert (view["state"], view["reason"], view["attempt_count"]) == ("CANCELLED", "CancelledByUser", 1), view
    time.sleep(1.0)
    assert not pidfile.exists(), "the cancelled task was launched again"
