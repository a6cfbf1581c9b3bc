"""Time limits as users set them: on local, ssh and mpi nodes, and across a daemon crash.

A limit counts from the attempt's stored wall-clock start: a task inside its
limit completes, one past it ends TIMEOUT about ``time_limit_s`` after it
started (never at once, never later by a restart), and nothing of it is left.
"""

from __future__ import annotations

import signal
import time

import pytest
from realnodes import node_toml, ssh_nodes  # noqa: F401  (fixture)

LOCAL = '[[nodes]]\nname = "local"\ncpus = 4\nmemory_mb = 2000\n'
GRACE_S = 1.0  # kill_grace_s of the test daemons
SLACK_S = 2.5  # a kill over ssh and a loaded machine


def in_limit(limit: int | None) -> dict:
    """A task that reports after 2 s; ``limit`` None means no time_limit_s at all."""
    spec = {"script": "sleep 2\necho 'OAAS_RESULT {\"ok\": true}'\n", "resources": {"cpus": 1}}
    return spec if limit is None else spec | {"time_limit_s": limit}


def endless(limit: int) -> dict:
    return {"script": "echo started\nsleep 120\n", "resources": {"cpus": 1}, "time_limit_s": limit}


def setup(kind: str, daemon_factory, ssh_nodes):
    """(daemon, extra spec fields, cluster or None) for one kind of node."""
    if kind == "local":
        return daemon_factory(LOCAL), {}, None
    cluster = ssh_nodes(2 if kind == "mpi" else 1)
    d = daemon_factory(node_toml(cluster, launcher=kind, cpus=4))
    return d, ({"workers": 2} if kind == "mpi" else {}), cluster


def assert_timed_out_at(view: dict, limit: float) -> None:
    attempt = view["attempts"][0]
    ran = attempt["ended_at"] - attempt["started_at"]
    assert view["state"] == "TIMEOUT" and view["reason"] == "TimeLimit", view
    assert attempt["state"] == "TIMEOUT"
    assert limit - 0.2 <= ran <= limit + GRACE_S + SLACK_S, f"killed after {ran:.2f} s, limit {limit} s"


@pytest.mark.parametrize("kind", ["local", "ssh", "mpi"])
def test_limits_end_only_the_task_past_its_limit(kind, daemon_factory, ssh_nodes):
    d, extra, cluster = setup(kind, daemon_factory, ssh_nodes)
    inside = d.submit(in_limit(60) | extra)
    unlimited = d.submit(in_limit(None) | extra)
    past = d.submit(endless(4) | extra)
    for tid in (inside, unlimited):
        view = d.wait(tid, timeout=60)
        assert view["state"] == "COMPLETED" and view["result"] == {"ok": True}, view
    assert_timed_out_at(d.wait(past, timeout=60), 4)
    if cluster is not None:
        deadline = time.time() + 10
        while any(n.leftovers() for n in cluster.nodes) and time.time() < deadline:
            time.sleep(0.1)
        assert [n.leftovers() for n in cluster.nodes] == [[] for _ in cluster.nodes]


def test_deadline_survives_a_kill9_and_readoption_on_ssh(daemon_factory, ssh_nodes):
    """kill -9 while a limited task runs on an ssh node: after the restart it still ends at
    started_at + limit, not at restart + limit."""
    cluster = ssh_nodes(1)
    d = daemon_factory(node_toml(cluster, cpus=2))
    limit = 10
    tid = d.submit(endless(limit))
    view = d.wait(tid, {"RUNNING"})
    started = None
    while started is None or "started" not in d.request("GET", f"/v1/tasks/{tid}/logs")[1]:
        view = d.task(tid)
        assert view["state"] == "RUNNING", view
        started = view["attempts"][0]["started_at"]
        time.sleep(0.1)
    time.sleep(max(0.0, started + 4 - time.time()))
    d.stop(signal.SIGKILL)
    restarted_at = time.time()
    d.start()
    view = d.task(tid)
    assert view["state"] == "RUNNING" and view["attempts"][0]["started_at"] == started
    view = d.wait(tid, timeout=60)
    assert_timed_out_at(view, limit)
    assert view["ended_at"] < restarted_at + limit - GRACE_S, "the deadline restarted with the daemon"
    assert len(view["attempts"]) == 1
