"""Quotas hold on every path that creates tasks: the tasks API, tuning trials and pipeline replicas.

The real daemon with ``[[users]]`` tokens and ``[limits]``, one local node
that runs one task at a time (so the rest stay PENDING), and the user's
paths: a tuning with far more workers than the user may have pending, a
pipeline wanting more replicas than that, and a replica template that
crashes at once. Held back, a tuning or pipeline waits and goes on; it never
overshoots and never fails for it.
"""

from __future__ import annotations

import re
import time

from oaasd.service.auth import token_hash

# With [[users]] tasks run as an unprivileged account (launch.default_user), which cannot
# reach the test's interpreter under /root: the programs here are plain /bin/sh.

ALICE = {"Authorization": "Bearer alice-token"}
ROOT = {"Authorization": "Bearer root-token"}
NODE = '[[nodes]]\nname = "n1"\ncpus = 2\nmemory_mb = 2000\n'
PIPELINE = {
    "name": "caption", "slo_ms": 200, "alpha": 1.0, "beta": 0.01,
    "stages": [
        {"name": "detect", "max_replicas": 4, "variants": [
            {"name": "heavy", "accuracy": 0.9, "cores": 1, "profiles": [
                {"batch": 1, "latency_ms": 50, "throughput_rps": 20}]},
            {"name": "light", "accuracy": 0.6, "cores": 1, "profiles": [
                {"batch": 1, "latency_ms": 10, "throughput_rps": 100}]}]},
        {"name": "classify", "max_replicas": 8, "variants": [
            {"name": "small", "accuracy": 0.9, "cores": 0.5, "profiles": [
                {"batch": 1, "latency_ms": 10, "throughput_rps": 50}]}]}]}


def config(limits: str) -> str:
    return (f'[limits]\n{limits}\n[[users]]\nname = "alice"\nrole = "user"\n'
            f'token_sha256 = "{token_hash("alice-token")}"\n'
            f'[[users]]\nname = "root"\nrole = "admin"\ntoken_sha256 = "{token_hash("root-token")}"\n' + NODE)


def alice_tasks(d) -> list[dict]:
    status, body = d.request("GET", "/v1/tasks?limit=1000", headers=ALICE)
    assert status == 200, body
    return body["items"]


def pending(d) -> int:
    return sum(t["state"] == "PENDING" for t in alice_tasks(d))


def watch(d, seconds: float, until=lambda: False) -> int:
    """The most PENDING tasks alice held at once while polling for ``seconds`` (or until ``until()``)."""
    most, deadline = 0, time.time() + seconds
    while time.time() < deadline and not until():
        most = max(most, pending(d))
        time.sleep(0.05)
    return most


def test_a_tuning_waits_for_its_owners_max_pending_and_finishes(daemon_factory):
    d = daemon_factory(config("max_pending = 3"))
    trial = ["/bin/sh", "-c", "sleep 0.3; echo 'OAAS_RESULT {\"loss\": 1.0}'"]
    body = {"name": "wide", "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
            "objectives": [{"metric": "loss", "sense": "minimize"}], "number_of_trials": 8, "worker_num": 50,
            "sampler": "random", "seed": 1, "trial": {"command": trial, "cpus": 2, "memory_mb": 50}}
    assert d.request("PATCH", "/v1/nodes/n1", {"state": "DRAIN", "reason": "hold"}, headers=ROOT)[0] == 200
    status, view = d.request("POST", "/v1/tunings", body, headers=ALICE)
    assert status == 201, view
    tid = view["id"]
    time.sleep(1.5)  # a retry or two while nothing can start
    held = d.request("GET", f"/v1/tunings/{tid}", headers=ALICE)[1]
    assert len(held["trials"]) == 3 and pending(d) == 3, held["trials"]  # base: 8 under max_pending = 3
    assert held["quota_wait"]["field"] == "max_pending" and held["state"] == "RUNNING", held
    computed = [int(k) for k in re.findall(rf"tuning {tid}: computed (\d+) configuration", d.log())]
    assert computed == [3], computed  # only the admitted trials were computed
    status, refused = d.request("POST", "/v1/tasks", {"command": ["true"]}, headers=ALICE)
    assert status == 429 and refused["detail"][0]["field"] == "max_pending", refused  # the trials count too
    assert d.request("PATCH", "/v1/nodes/n1", {"state": "RESUME"}, headers=ROOT)[0] == 200

    def ended():
        return d.request("GET", f"/v1/tunings/{tid}", headers=ALICE)[1]["state"] != "RUNNING"
    assert watch(d, 40, ended) <= 3
    view = d.request("GET", f"/v1/tunings/{tid}", headers=ALICE)[1]
    assert (view["state"], view["reason"], view["trial_counts"]) == \
        ("COMPLETED", "NumberOfTrials", {"COMPLETED": 8}), view
    assert view["quota_wait"] is None


def test_a_tuning_is_held_to_its_owners_submit_rate(daemon_factory):
    d = daemon_factory(config("submit_rate = 2.0\nsubmit_burst = 2"))
    trial = ["/bin/sh", "-c", "echo 'OAAS_RESULT {\"loss\": 1.0}'"]
    body = {"name": "fast", "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
            "objectives": [{"metric": "loss", "sense": "minimize"}], "number_of_trials": 6, "worker_num": 6,
            "sampler": "random", "seed": 1, "trial": {"command": trial, "cpus": 0.1, "memory_mb": 50}}
    status, view = d.request("POST", "/v1/tunings", body, headers=ALICE)
    assert status == 201, view
    deadline = time.time() + 30
    while d.request("GET", f"/v1/tunings/{view['id']}", headers=ALICE)[1]["state"] == "RUNNING":
        assert time.time() < deadline
        time.sleep(0.1)
    submitted = sorted(t["submitted_at"] for t in alice_tasks(d))
    assert len(submitted) == 6
    # a burst of 2, then one per 0.5 s: the 6th trial comes >= 1.5 s after the first (base: all at once)
    assert submitted[-1] - submitted[0] >= 1.5, submitted


def register(d, actuator: dict, tmp, rps: float) -> int:
    loads = d.state_dir / "loads"
    loads.mkdir(exist_ok=True)
    (loads / "caption.txt").write_text(f"{rps}\n")
    body = {"pipeline": PIPELINE, "source": {"kind": "file", "path": str(loads / "caption.txt")},
            "actuator": actuator, "interval_s": 0.2}
    status, view = d.request("POST", "/v1/pipelines", body, headers=ALICE)
    assert status == 201, view
    return view["id"]


def pipeline(d, pid: int) -> dict:
    status, view = d.request("GET", f"/v1/pipelines/{pid}?limit=50", headers=ALICE)
    assert status == 200, view
    return view


def test_pipeline_replicas_count_against_max_pending(daemon_factory, tmp_path):
    d = daemon_factory(config("max_pending = 3"))
    sleeper = ["sleep", "600"]
    template = {"command": sleeper, "resources": {"cpus": 2}, "require_result": False}
    pid = register(d, {"kind": "tasks", "template": template}, tmp_path, 250.0)  # wants 3 + 5 replicas
    most = watch(d, 3.0)
    assert most <= 3, most  # base: 7 PENDING (8 replicas, one RUNNING)
    view = pipeline(d, pid)
    assert len(view["tasks"]) == 4 and sum(t["state"] == "RUNNING" for t in view["tasks"]) == 1, view["tasks"]
    waits = [a["actuator"]["quota_wait"] for a in view["adaptations"] if (a["actuator"] or {}).get("quota_wait")]
    assert waits and waits[0]["field"] == "max_pending" and waits[0]["held_back"] >= 1, view["adaptations"][:3]
    assert d.request("DELETE", f"/v1/pipelines/{pid}", headers=ALICE)[0] in (200, 202)


def test_a_crash_looping_replica_backs_off_exponentially(daemon_factory, tmp_path):
    d = daemon_factory(config("max_pending = 100"))
    template = {"command": ["/bin/sh", "-c", "exit 1"], "resources": {"cpus": 0.1},
                "require_result": False}
    pid = register(d, {"kind": "tasks", "template": template}, tmp_path, 10.0)  # one replica per stage
    time.sleep(5.0)
    made = len(alice_tasks(d))
    # waits of 1, 2, 4 s after each failure: at most 3 per stage in 5 s (base: ~2 every interval, dozens)
    assert 2 <= made <= 8, made
    view = pipeline(d, pid)
    backoffs = [a["actuator"]["backoff"] for a in view["adaptations"] if (a["actuator"] or {}).get("backoff")]
    assert backoffs, view["adaptations"][:3]
    detect = [b["detect"] for b in backoffs if "detect" in b]
    assert max(b["failures"] for b in detect) >= 2
    assert {(b["failures"], b["backoff_s"]) for b in detect} <= {(1, 1.0), (2, 2.0), (3, 4.0)}, detect
    assert all(t["state"] == "FAILED" for t in alice_tasks(d) if t["state"] not in ("PENDING", "RUNNING"))
    assert d.request("DELETE", f"/v1/pipelines/{pid}", headers=ALICE)[0] in (200, 202)
