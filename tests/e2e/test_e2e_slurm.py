"""The slurm launcher against a real one-node Slurm (slurmctld + slurmd + munged on loopback).

Each test runs a real daemon whose node ``cluster-a`` stands for the Slurm
partition ``debug``; every attempt is a real Slurm job, checked on Slurm's
side too (``scontrol show job``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from realslurm import REAL_MEMORY_MB, real_slurm, slurm_toml, start_slurm, stop_slurm  # noqa: F401  (fixture)

from tests.conftest import REPO, free_port


@pytest.fixture(autouse=True)
def _free_slurm(real_slurm):  # noqa: F811
    """Every test starts and ends with no job of its own left in Slurm (the CPUs are free)."""
    real_slurm.clear()
    yield
    real_slurm.clear()


def attempts_of(d, tid: int) -> list[dict]:
    return d.task(tid)["attempts"]


def wait_view(d, tid: int, check, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    view = {}
    while time.time() < deadline:
        view = d.task(tid)
        if check(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"task {tid} never matched: {view}")


def test_a_task_runs_as_a_slurm_job_and_completes_with_its_result(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    status, node = d.request("GET", "/v1/nodes/cluster-a")
    assert node["launcher"] == "slurm" and node["state"] == "IDLE", node
    assert node["capacity"]["memory_mb"] == REAL_MEMORY_MB, "sized from sinfo, not the 1024 MB default"
    assert node["probe"]["ok"] and node["probe"]["partition"] == "debug", node["probe"]
    tid = d.submit({"script": 'echo "job=$SLURM_JOB_ID cluster=$SLURM_CLUSTER_NAME"\n'
                              'echo "OAAS_RESULT {\\"job\\": \\"$SLURM_JOB_ID\\"}"', "resources": {"memory_mb": 100}})
    view = d.wait(tid, timeout=60)
    assert view["state"] == "COMPLETED", view
    (attempt,) = view["attempts"]
    job_id = attempt["slurm_job_id"]
    assert view["result"] == {"job": job_id}, "the task saw its own SLURM_JOB_ID"
    job = real_slurm.wait_job(job_id, {"COMPLETED"})
    assert job["JobName"] == f"oaasd-{tid}-1" and job["Partition"] == "debug", job
    assert job["MinMemoryNode"] == "100M" and job["NumTasks"] == "1", job
    status, out = d.request("GET", f"/v1/tasks/{tid}/logs?stream=stdout")
    assert f"job={job_id} cluster={real_slurm.cluster}" in out, out


def test_a_two_worker_gang_runs_its_ranks_with_srun_and_gets_the_allocation_hostfile(daemon_factory,
                                                                                       real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    script = ('echo "rank=$SLURM_PROCID of $SLURM_NTASKS"\n'
              'if [ "$SLURM_PROCID" = 0 ]; then echo "OAAS_RESULT {\\"hosts\\": \\"$(cat $OAAS_HOSTFILE)\\"}"; fi')
    tid = d.submit({"script": script, "workers": 2})
    view = d.wait(tid, timeout=60)
    assert view["state"] == "COMPLETED", view
    status, out = d.request("GET", f"/v1/tasks/{tid}/logs?stream=stdout")
    assert sorted(line for line in out.splitlines() if line.startswith("rank=")) == ["rank=0 of 2", "rank=1 of 2"]
    assert view["result"] == {"hosts": f"{real_slurm.nodename} slots=2"}, "the allocation's node list"
    job = real_slurm.job(view["attempts"][0]["slurm_job_id"])
    assert job["NumTasks"] == "2", job


def test_cancel_reaches_scancel_and_slurm_shows_the_job_cancelled(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    started = d.dir / "started"
    tid = d.submit({"script": f"touch {started}\nsleep 60"})
    wait_file_exists(started)
    job_id = attempts_of(d, tid)[0]["slurm_job_id"]
    assert real_slurm.job(job_id)["JobState"] == "RUNNING"
    status, body = d.request("DELETE", f"/v1/tasks/{tid}")
    assert status in (200, 202), body
    view = d.wait(tid, timeout=30)
    assert (view["state"], view["reason"]) == ("CANCELLED", "CancelledByUser"), view
    assert real_slurm.wait_job(job_id, {"CANCELLED"})["JobState"] == "CANCELLED"


def test_time_limit_ends_the_job_timeout(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    tid = d.submit({"command": ["sleep", "60"], "time_limit_s": 2})
    t0 = time.time()
    view = d.wait(tid, timeout=40)
    assert (view["state"], view["reason"]) == ("TIMEOUT", "TimeLimit"), view
    assert time.time() - t0 < 30
    job = real_slurm.job(view["attempts"][0]["slurm_job_id"])
    assert job["TimeLimit"] == "00:01:00", "Slurm's own limit backs oaasd's up, rounded up to its minutes"
    assert job["JobState"] not in ("RUNNING", "PENDING"), job


def test_a_failing_job_fails_with_its_exit_code(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    tid = d.submit({"script": "echo oops >&2; exit 3"})
    view = d.wait(tid, timeout=60)
    assert (view["state"], view["reason"], view["attempts"][0]["exit_code"]) == ("FAILED", "NonZeroExitCode", 3)
    assert real_slurm.wait_job(view["attempts"][0]["slurm_job_id"], {"FAILED"})["ExitCode"] == "3:0"
    status, err = d.request("GET", f"/v1/tasks/{tid}/logs?stream=stderr")
    assert "oops" in err


def test_sbatch_refusing_the_job_fails_the_attempt_with_slurms_message(daemon_factory, real_slurm):  # noqa: F811
    # oaasd's node is given more memory than Slurm's node has: oaasd places, sbatch refuses.
    d = daemon_factory(slurm_toml(real_slurm, extra_node="memory_mb = 100000\n"))
    tid = d.submit({"command": ["true"], "resources": {"memory_mb": 50000}})
    view = d.wait(tid, timeout=30)
    assert (view["state"], view["reason"]) == ("FAILED", "SlurmRefused"), view
    assert "node configuration is not available" in view["message"], view["message"]
    assert len(view["attempts"]) == 1 and "slurm_job_id" not in view["attempts"][0]
    assert real_slurm.active_jobs() == []


def test_a_job_slurm_still_queues_shows_slurms_pending_reason(daemon_factory, real_slurm):  # noqa: F811
    blocker = real_slurm.run("sbatch", "--parsable", "-p", "debug", f"--cpus-per-task={os_cpus()}",
                             "-o", "/dev/null", "--wrap", "sleep 120", check=True).stdout.strip()
    real_slurm.wait_job(blocker, {"RUNNING"})
    d = daemon_factory(slurm_toml(real_slurm, extra_node="cpus = 64\n"))
    tid = d.submit({"script": "echo 'OAAS_RESULT {\"ok\": 1}'"})
    view = wait_view(d, tid, lambda v: v["message"] == "SlurmPending: Resources")  # "None" until Slurm looked
    assert (view["state"], view["reason"]) == ("RUNNING", "SlurmPending"), view
    status, listed = d.request("GET", "/v1/tasks")
    assert [t for t in listed["items"] if t["id"] == tid][0]["message"] == "SlurmPending: Resources"
    real_slurm.run("scancel", blocker, check=True)
    assert d.wait(tid, timeout=60)["state"] == "COMPLETED"


def test_kill_9_of_the_daemon_and_restart_readopts_the_job_one_attempt(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    started, go = d.dir / "started", d.dir / "go"
    tid = d.submit({"script": f"touch {started}\nwhile [ ! -e {go} ]; do sleep 0.1; done\n"
                              "echo 'OAAS_RESULT {\"survived\": true}'"})
    wait_file_exists(started)
    job_id = attempts_of(d, tid)[0]["slurm_job_id"]
    d.stop(signal.SIGKILL)
    restart(d)
    assert d.task(tid)["state"] == "RUNNING"
    go.touch()
    view = d.wait(tid, timeout=60)
    assert (view["state"], view["result"]) == ("COMPLETED", {"survived": True}), view
    assert [a["slurm_job_id"] for a in view["attempts"]] == [job_id], "one attempt, no second sbatch"
    jobs = [line.split() for line in real_slurm.run("squeue", "-h", "--states=all", "-o", "%i %j").stdout.splitlines()]
    assert [j for j, name in jobs if int(j) >= int(job_id) and name.startswith(f"oaasd-{tid}-")] == [job_id]


def test_a_job_that_ended_while_the_daemon_was_down_keeps_its_exit_and_result(daemon_factory,
                                                                               real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    started, go = d.dir / "started", d.dir / "go"
    tid = d.submit({"script": f"touch {started}\nwhile [ ! -e {go} ]; do sleep 0.1; done\n"
                              "echo 'OAAS_RESULT {\"while\": \"down\"}'"})
    wait_file_exists(started)
    job_id = attempts_of(d, tid)[0]["slurm_job_id"]
    d.stop(signal.SIGKILL)
    go.touch()
    real_slurm.wait_job(job_id, {"COMPLETED"})
    restart(d)
    view = d.wait(tid, timeout=30)
    assert (view["state"], view["result"], len(view["attempts"])) == ("COMPLETED", {"while": "down"}, 1), view


def test_slurmctld_stopped_and_started_while_a_task_runs(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    started, go = d.dir / "started", d.dir / "go"
    tid = d.submit({"script": f"touch {started}\nwhile [ ! -e {go} ]; do sleep 0.1; done\n"
                              "echo 'OAAS_RESULT {\"ok\": 1}'"})
    wait_file_exists(started)
    real_slurm.stop_ctld()
    try:
        node = wait_node(d, "DOWN")
        assert "Unable to contact slurm controller" in node["reason"], node
        assert d.task(tid)["state"] == "RUNNING", "a Slurm job is not lost with its controller"
        go.touch()  # the job ends while slurmctld is away: oaasd learns it once slurmctld answers
    finally:
        real_slurm.start_ctld()
    wait_node(d, "IDLE", timeout=40)
    view = d.wait(tid, timeout=60)
    assert (view["state"], view["result"], len(view["attempts"])) == ("COMPLETED", {"ok": 1}, 1), view


def test_a_partition_set_down_in_slurm_makes_the_node_down_with_slurms_word(daemon_factory,
                                                                           real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    wait_node(d, "IDLE")
    real_slurm.run("scontrol", "update", "PartitionName=debug", "State=DOWN", check=True)
    try:
        node = wait_node(d, "DOWN")
        assert node["reason"] == "Slurm: partition debug is down in Slurm", node
        tid = d.submit({"script": "echo 'OAAS_RESULT {\"ok\": 1}'"})
        view = wait_view(d, tid, lambda v: v.get("nodes_rejected") == {"NodeNotSchedulable": 1})
        assert view["state"] == "PENDING" and view["attempt_count"] == 0, view
    finally:
        real_slurm.run("scontrol", "update", "PartitionName=debug", "State=UP", check=True)
    wait_node(d, "IDLE")
    assert d.wait(tid, timeout=60)["state"] == "COMPLETED"


def test_an_unknown_partition_stops_the_daemon_at_start_naming_it(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm).replace('partition = "debug"', 'partition = "nope"'), start=False)
    d.write_config()
    run = subprocess.run([sys.executable, "-m", "oaasd", "serve", "--config", str(d.config_path)],
                         capture_output=True, text=True, timeout=60, cwd=d.dir, env={"PYTHONPATH": str(REPO),
                                                                                    "PATH": "/usr/bin:/bin"})
    assert run.returncode == 3, (run.returncode, run.stderr)
    assert "nodes[cluster-a].partition" in run.stderr and "'nope'" in run.stderr, run.stderr


TRIAL = """import json, os
c = json.loads(os.environ["OAAS_TRIAL_CONFIG"])
print("OAAS_METRIC " + json.dumps({"step": 1, "loss": (c["x"] - 0.3) ** 2}))
print("OAAS_RESULT " + json.dumps({"loss": (c["x"] - 0.3) ** 2, "job": os.environ["SLURM_JOB_ID"]}))
"""


def test_a_tunings_trials_run_as_slurm_jobs(daemon_factory, real_slurm):  # noqa: F811
    d = daemon_factory(slurm_toml(real_slurm))
    body = {"name": "on-slurm", "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
            "objectives": [{"metric": "loss", "sense": "minimize"}], "number_of_trials": 4, "worker_num": 2,
            "parallel_strategy": "async", "sampler": "random", "seed": 3,
            "trial": {"command": ["/usr/bin/python3", "-c", TRIAL], "cpu_milli": 1000, "memory_mb": 100,
                      "time_limit_s": 60}}
    status, view = d.request("POST", "/v1/tunings", body)
    assert status == 201, view
    deadline = time.time() + 120
    while view["state"] not in ("COMPLETED", "FAILED", "CANCELLED") and time.time() < deadline:
        time.sleep(0.3)
        view = d.request("GET", f"/v1/tunings/{view['id']}")[1]
    assert (view["state"], view["reason"]) == ("COMPLETED", "NumberOfTrials"), view
    trials = view["trials"]
    assert len(trials) == 4 and all(t["state"] == "COMPLETED" for t in trials), trials
    jobs = [d.task(t["task_id"])["attempts"][0]["slurm_job_id"] for t in trials]
    assert [d.task(t["task_id"])["result"]["job"] for t in trials] == jobs, "each trial ran in its own Slurm job"
    assert all(real_slurm.job(j)["JobState"] == "COMPLETED" for j in jobs)
    assert view["best"] is not None and view["best"]["task_id"] in {t["task_id"] for t in trials}


def test_the_fixture_leaves_no_slurm_process_behind():
    s = start_slurm()
    job = s.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 300", check=True).stdout.strip()
    s.wait_job(job, {"RUNNING"})
    assert {"slurmctld", "slurmd", "munged"} <= {p.name() for p in s.leftovers()}
    stop_slurm(s)
    assert s.leftovers() == [], "no daemon, step or job of that Slurm is left"
    assert not s.root.exists()


# ---- helpers ------------------------------------------------------------
def restart(d) -> None:
    """Start a killed daemon again; a new port when its old one was taken meanwhile (Slurm's commands
    open connections from ephemeral ports all the time, and the test port is one of those)."""
    for attempt in range(3):
        try:
            d.start()
            return
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            d.port = free_port()


def os_cpus() -> int:
    return os.cpu_count() or 1


def wait_file_exists(path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared (the job did not start)")


def wait_node(d, state: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    view = {}
    while time.time() < deadline:
        status, view = d.request("GET", "/v1/nodes/cluster-a")
        if view["state"] == state:
            return view
        time.sleep(0.1)
    raise AssertionError(f"node stayed {view.get('state')}: {view}")

