"""Attempts started by the code before the redesign are re-adopted by the code after it.

The tree of the commit before the one-step redesign is unpacked from git; its
daemon starts a task on a local node and one on an ssh node and queues a
third, and is killed with -9 while they run. The daemon of this checkout
then starts on the same state dir and config: the running attempts are
adopted (one attempt each, their metric kept once), the queued task starts,
and nothing of them is left running.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import psutil
from conftest import kill_tasks_of
from realnodes import node_toml, ssh_nodes  # noqa: F401  (fixture)

BEFORE_REDESIGN = "8d6eb39"  # the last commit with the Daemon hub and the flat module layout
REPO = Path(__file__).resolve().parents[2]
LOCAL = '[[nodes]]\nname = "local"\ncpus = 1\nmemory_mb = 2000\nlabels = { where = "local" }\n'


def old_tree(dest: Path) -> Path:
    """The old code's checkout, from git (CI runs on a full clone: its absence is a failure, not a skip)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_REDESIGN, "oaasd"], capture_output=True)
    assert archive.returncode == 0, f"commit {BEFORE_REDESIGN} is not in this clone: {archive.stderr.decode()}"
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(dest, filter="data")
    assert (dest / "oaasd" / "daemon.py").exists()  # the old layout indeed
    return dest


def reporting(seconds: int) -> dict:
    """Reports one metric at once, then its result after ``seconds``."""
    return {"script": f"echo 'OAAS_METRIC {{\"step\": 1}}'\nsleep {seconds}\necho 'OAAS_RESULT {{\"slept\": {seconds}}}'\n",
            "resources": {"cpus": 1}}


def running_with_metric(d, task_id: int, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = d.task(task_id)
        if view["state"] == "RUNNING" and view["metrics"]:
            return view
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not running with its metric: {d.task(task_id)}")


def test_the_new_code_adopts_what_the_old_code_started(daemon_factory, ssh_nodes, tmp_path):
    old = old_tree(tmp_path / "old")
    cluster = ssh_nodes(1)
    d = daemon_factory(node_toml(cluster, launcher="ssh", cpus=1) + LOCAL, start=False)
    d.start(env={"PYTHONPATH": str(old)})
    local = d.submit(reporting(8) | {"labels": {"where": "local"}})
    running_with_metric(d, local)
    remote = d.submit(reporting(8))  # the local node is full: it goes to the ssh node
    assert running_with_metric(d, remote)["attempts"][0]["node"] == cluster.nodes[0].name
    queued = d.submit(reporting(0) | {"labels": {"where": "local"}})
    assert d.task(queued)["state"] == "PENDING"

    d.stop(signal.SIGKILL)
    d.start(env={"PYTHONPATH": str(REPO)})
    status, health = d.request("GET", "/healthz")
    assert status == 200 and health.get("schema_version", 8) >= 8, health

    for task_id, seconds in ((local, 8), (remote, 8), (queued, 0)):
        view = d.wait(task_id, timeout=60)
        assert view["state"] == "COMPLETED" and view["result"] == {"slept": seconds}, view
        assert view["attempt_count"] == 1, f"task {task_id} was relaunched, not adopted: {view['attempts']}"
        assert [m["step"] for m in view["metrics"]] == [1], view["metrics"]
    # What the killed daemon had open on the node (its remote watchers) ends once sshd sees the dead
    # connection; on a loaded machine that took over 10 s once, so the bound is 30 s: a leak is forever.
    deadline = time.time() + 30
    while (local_leftovers(d.state_dir) or any(n.leftovers() for n in cluster.nodes)) and time.time() < deadline:
        time.sleep(0.2)
    remote = [p for n in cluster.nodes for p in n.leftovers()]
    assert local_leftovers(d.state_dir) == [] and remote == [], remote
    kill_tasks_of(d.state_dir)


def local_leftovers(state_dir: Path) -> list[int]:
    """Pids on this host of attempts under ``state_dir`` (their wrapper's environment names its exit file)."""
    mark, found = str(state_dir), []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("OAAS_EXIT_FILE", "").startswith(mark) and proc.pid != os.getpid():
                found.append(proc.pid)
        except (psutil.Error, PermissionError):
            pass
    return found
