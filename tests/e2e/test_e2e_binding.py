"""The real daemon enforces memory limits with cgroups, accounts each attempt, and leaves no cgroup
behind on any end path: exit, OOM, cancel, time limit, kill -9 of the daemon and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from realnodes import node_toml, ssh_nodes  # noqa: F401  (fixture)

from oaasd.launchers.binding import instance_of
from oaasd.launchers.cgroups import detect
from tests.conftest import REPO, cgroup_v1_writable, wait_file

PY = "/usr/bin/python3"
TOUCH = ("import sys; n = int(sys.argv[1]) << 20; x = bytearray(n)\n"
         "for i in range(0, n, 4096): x[i] = 1\n"
         "print('OAAS_RESULT {\"touched_mb\": %d}' % (n >> 20))")
NODE = '[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 2000\n'

pytestmark = pytest.mark.skipif(not cgroup_v1_writable(),
                                reason="needs writable cgroup v1 controllers as root (this machine has them)")


def instance_dirs(d) -> list[Path]:
    """The daemon's own cgroup directories (what its attempt cgroups are made in)."""
    return sorted(set(detect("auto", "oaasd", instance_of(d.state_dir)).dirs.values()))


def attempt_cgroups(d) -> list[Path]:
    """Every attempt cgroup of the daemon that exists now."""
    return sorted(p for root in instance_dirs(d) if root.is_dir() for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("a"))


def wait_gone(paths: list[Path], timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.exists() for p in paths):
        time.sleep(0.05)
    assert not [p for p in paths if p.exists()], "cgroups left behind"


def wait_running_cgroups(d, task_id: int, timeout: float = 15) -> list[Path]:
    """The cgroup paths of a task's running attempt, from its view."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = d.task(task_id)
        attempts = view.get("attempts") or []
        if attempts and attempts[-1]["enforced"]:
            paths = [Path(p) for p in attempts[-1]["enforced"]["cgroups"]]
            assert all(p.is_dir() for p in paths)
            return paths
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never showed its cgroups: {d.task(task_id)}")


def test_over_its_memory_ends_out_of_memory_never_retried(daemon_factory):
    d = daemon_factory(NODE)
    tid = d.submit({"command": [PY, "-c", TOUCH, "400"], "resources": {"cpus": 1, "memory_mb": 100},
                    "max_retries": 3})
    view = d.wait(tid)
    assert view["state"] == "OUT_OF_MEMORY" and view["reason"] == "OutOfMemory", view
    assert view["attempt_count"] == 1
    (attempt,) = view["attempts"]
    assert attempt["state"] == "OUT_OF_MEMORY" and "100 MB" in attempt["message"]
    assert 90 <= attempt["max_rss_mb"] <= 101
    assert attempt_cgroups(d) == []
    metrics = d.request("GET", "/metrics")[1]
    text = metrics if isinstance(metrics, str) else metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert 'oaasd_failures_total{reason="OutOfMemory",state="OUT_OF_MEMORY"} 1.0' in text


def test_accounting_is_on_the_attempt_and_in_status(daemon_factory):
    d = daemon_factory(NODE)
    tid = d.submit({"command": [PY, "-c", TOUCH, "200"], "resources": {"cpus": 1, "memory_mb": 1000}})
    view = d.wait(tid)
    assert view["state"] == "COMPLETED", view
    (attempt,) = view["attempts"]
    assert attempt["max_rss_mb"] >= 150 and attempt["cpu_s"] > 0 and attempt["elapsed_s"] > 0
    assert attempt["enforced"]["enforcement"] == "cgroup1"
    assert attempt_cgroups(d) == []
    out = subprocess.run([sys.executable, "-m", "oaasd.cli", "status", str(tid), "--url",
                          f"http://127.0.0.1:{d.port}"], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("attempt"))
    assert "max_rss" in line and "cpu" in line and "elapsed" in line
    metrics = d.request("GET", "/metrics")[1]
    text = metrics if isinstance(metrics, str) else str(metrics)
    assert "oaasd_attempt_cpu_seconds_total{user=" in text and "oaasd_attempt_max_rss_mb_count 1.0" in text


def test_no_cgroup_left_after_cancel_and_time_limit(daemon_factory):
    d = daemon_factory(NODE)
    cancelled = d.submit({"command": ["/bin/sleep", "300"], "resources": {"cpus": 1, "memory_mb": 50}})
    timed = d.submit({"command": ["/bin/sleep", "300"], "resources": {"cpus": 1, "memory_mb": 50},
                      "time_limit_s": 1})
    paths = wait_running_cgroups(d, cancelled) + wait_running_cgroups(d, timed)
    status, _ = d.request("DELETE", f"/v1/tasks/{cancelled}")
    assert status in (200, 202)
    assert d.wait(cancelled)["state"] == "CANCELLED"
    assert d.wait(timed)["state"] == "TIMEOUT"
    wait_gone(paths)
    assert attempt_cgroups(d) == []


def test_no_cgroup_left_after_kill9_and_restart(daemon_factory, tmp_path):
    d = daemon_factory(NODE)
    gate = tmp_path / "gate"
    pids = [tmp_path / f"pid{i}" for i in range(3)]
    script = "echo $$ > {pid}; while [ ! -e {gate} ]; do sleep 0.05; done; echo 'OAAS_RESULT {{\"ok\": 1}}'"
    adopted = d.submit({"script": script.format(pid=pids[0], gate=gate), "resources": {"cpus": 0.5, "memory_mb": 50}})
    lost = d.submit({"script": script.format(pid=pids[1], gate=tmp_path / "never"), "resources": {"cpus": 0.5, "memory_mb": 50},
                     "max_retries": 0})
    ended = d.submit({"script": script.format(pid=pids[2], gate=tmp_path / "end"),
                      "resources": {"cpus": 0.5, "memory_mb": 50}})
    paths = {t: wait_running_cgroups(d, t) for t in (adopted, lost, ended)}
    pid_of = {t: int(wait_file(p)) for t, p in zip((adopted, lost, ended), pids)}
    d.stop(signal.SIGKILL)
    os.killpg(os.getpgid(pid_of[lost]), signal.SIGKILL)  # gone while the daemon is down, no exit record
    (tmp_path / "end").touch()  # ends while the daemon is down: its exit record waits
    stale = instance_dirs(d)[0] / "a9999"  # a cgroup whose attempt the crash never recorded
    stale.mkdir()
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{pid_of[ended]}/status") and \
            "zombie" not in open(f"/proc/{pid_of[ended]}/status").read():
        time.sleep(0.05)
    d.start()
    assert d.wait(lost)["state"] == "NODE_FAIL"
    assert d.wait(ended)["state"] == "COMPLETED"
    wait_gone(paths[lost] + paths[ended] + [stale])
    assert all(p.is_dir() for p in paths[adopted]), "a re-adopted attempt keeps its cgroup"
    gate.touch()
    view = d.wait(adopted)
    assert view["state"] == "COMPLETED" and view["attempt_count"] == 1
    assert view["attempts"][0]["max_rss_mb"] is not None
    wait_gone(paths[adopted])
    assert attempt_cgroups(d) == []


def test_nodes_report_their_enforcement_and_the_ssh_node_enforces_it(daemon_factory, ssh_nodes):
    cluster = ssh_nodes(1)
    d = daemon_factory(NODE + node_toml(cluster) + 'labels = { kind = "remote" }\n')  # on the ssh node
    status, local = d.request("GET", "/v1/nodes/n1")
    assert status == 200 and local["enforcement"] == "cgroup1" and "cgroup v1 at" in local["enforcement_reason"]
    name = cluster.nodes[0].name
    deadline = time.time() + 20
    while time.time() < deadline:
        remote = d.request("GET", f"/v1/nodes/{name}")[1]
        if remote["enforcement"] is not None:
            break
        time.sleep(0.1)
    assert remote["enforcement"] == "rlimit", remote  # the login user oaastest may not make cgroups
    assert "oaastest" in remote["enforcement_reason"]
    listed = {n["name"]: n for n in d.request("GET", "/v1/nodes")[1]["items"]}
    assert listed["n1"]["enforcement"] == "cgroup1" and listed[name]["enforcement"] == "rlimit"
    tid = d.submit({"command": [PY, "-c", TOUCH, "400"], "resources": {"cpus": 1, "memory_mb": 100},
                    "labels": {"kind": "remote"}, "max_retries": 0})
    view = d.wait(tid)
    assert view["attempts"][0]["node"] == name
    assert view["state"] == "FAILED" and view["reason"] == "NonZeroExitCode", view  # RLIMIT_AS: no OOM kill
    assert "MemoryError" in d.request("GET", f"/v1/tasks/{tid}/logs?stream=stderr")[1]
    assert view["attempts"][0]["cpu_s"] is not None and view["attempts"][0]["enforced"] is None


def gated(gate: Path, report: str) -> str:
    """Python code that waits for ``gate`` to exist, then prints ``OAAS_RESULT`` of the expression ``report``."""
    return (f"import json, os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            f"print('OAAS_RESULT ' + json.dumps({report}))")


def test_two_one_cpu_tasks_run_on_distinct_cores(daemon_factory, tmp_path):
    """Placement picks the cores, the node binds them: each task sees exactly its own one."""
    d = daemon_factory(NODE)
    gate = tmp_path / "gate"
    code = (f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            "print('OAAS_RESULT {\"cores\": %s}' % sorted(os.sched_getaffinity(0)))")
    tids = [d.submit({"command": [PY, "-c", code], "resources": {"cpus": 1}}) for _ in range(2)]
    for tid in tids:
        d.wait(tid, {"RUNNING"})
    gate.touch()
    views = [d.wait(t) for t in tids]
    cores = [v["result"]["cores"] for v in views]
    assert all(len(c) == 1 for c in cores) and cores[0] != cores[1], cores
    # the attempt view says what was bound, and it is what the task saw
    assert [v["attempts"][0]["binding"]["n1"]["cores"] for v in views] == cores, views[0]["attempts"]


def test_per_core_shares_of_one_task_land_on_distinct_cores(daemon_factory, tmp_path):
    d = daemon_factory(NODE)
    gate = tmp_path / "gate"
    gate.touch()
    code = gated(gate, '{"cores": sorted(os.sched_getaffinity(0))}')
    view = d.wait(d.submit({"command": [PY, "-c", code], "resources": {"cores": [300, 300]}}))
    assert view["state"] == "COMPLETED" and view["result"]["cores"] == [0, 1], view
    status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "resources": {"cores": [100, 100, 100]}})
    assert status == 422 and any(x.get("check") == "cores_distinct" for x in body["detail"]), body


def test_gpu_tasks_see_their_own_devices(daemon_factory, tmp_path):
    """No GPU here: a node declares two devices and the tasks read what they were given (the
    devices themselves are the one fake of this test: CUDA only reads the variable)."""
    d = daemon_factory('[[nodes]]\nname = "g"\ncpus = 2\nmemory_mb = 2000\n'
                       'gpus = [{index = 0, type = "a100", memory_mb = 40960}, {index = 1, type = "a100", memory_mb = 40960}]\n')
    gate = tmp_path / "gate"
    code = gated(gate, '{"v": os.environ.get("CUDA_VISIBLE_DEVICES")}')
    spec = {"command": [PY, "-c", code], "resources": {"cpus": 0.5}}
    whole = [d.submit(spec | {"resources": {"cpus": 0.5, "gpus": 1, "gpu_type": "a100"}}) for _ in range(2)]
    for tid in whole:
        d.wait(tid, {"RUNNING"})
    third = d.submit(spec | {"resources": {"cpus": 0.5, "gpus": 1}})  # both devices taken: it waits
    none = d.submit(spec)  # no GPU asked: sees none (an empty list, not every device)
    d.wait(none, {"RUNNING"})
    assert d.task(third)["state"] == "PENDING"
    gate.touch()
    seen = sorted(d.wait(t)["result"]["v"] for t in whole)
    assert seen == ["0", "1"], seen
    assert d.wait(none)["result"]["v"] == ""
    assert d.wait(third)["result"]["v"] in ("0", "1")
    # halves share one device and never span two: four of them take both devices, two each
    gate2 = tmp_path / "gate2"
    halves = {"command": [PY, "-c", gated(gate2, '{"v": os.environ.get("CUDA_VISIBLE_DEVICES")}')],
              "resources": {"cpus": 0.1, "gpus": 0.5}}
    shared = [d.submit(halves) for _ in range(4)]
    for tid in shared:  # all four at once, so each device holds two
        d.wait(tid, {"RUNNING"})
    gate2.touch()
    assert sorted(d.wait(t)["result"]["v"] for t in shared) == ["0", "0", "1", "1"]
    for bad, field in (({"gpus": 1.5}, "resources.gpus"), ({"gpus": 3}, "resources"),
                       ({"gpus": 1, "gpu_type": "h100"}, "resources.gpu_type")):
        status, body = d.request("POST", "/v1/tasks", {"command": ["true"], "resources": bad})
        assert status == 422 and any(x["field"].startswith(field) for x in body["detail"]), (bad, body)
