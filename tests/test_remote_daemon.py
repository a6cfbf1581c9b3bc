"""The daemon with remote nodes: real sshd on 127.0.0.x, real mpirun, node failure."""

from __future__ import annotations

import json
import signal
import time

import pytest
from realnodes import node_toml, ssh_nodes, wait_node_state  # noqa: F401  (fixture)

RESULT_NODE = 'echo "OAAS_RESULT {\\"node\\": \\"$OAAS_NODE\\", \\"marker\\": \\"$OAAS_TEST_NODE\\"}"\n'


def test_task_runs_over_ssh_and_streams_its_log(daemon_factory, ssh_nodes):
    cluster = ssh_nodes(1)
    d = daemon_factory(node_toml(cluster))
    tid = d.submit({"script": "echo first\nsleep 1\necho second\n" + RESULT_NODE, "user": "ann"})
    deadline = time.time() + 20
    while "first" not in d.request("GET", f"/v1/tasks/{tid}/logs")[1]:
        assert time.time() < deadline, "stdout never streamed while the task ran"
        time.sleep(0.05)
    assert d.task(tid)["state"] == "RUNNING"
    view = d.wait(tid)
    assert view["state"] == "COMPLETED", view
    assert view["result"] == {"node": "node1", "marker": cluster.nodes[0].marker}
    assert d.request("GET", f"/v1/tasks/{tid}/logs")[1].startswith("first\nsecond\n")
    node = wait_node_state(d, "node1", "IDLE")
    assert node["probe"]["ok"] and node["probe"]["reachable"]


def test_mpi_gang_of_four_over_two_nodes(daemon_factory, ssh_nodes):
    cluster = ssh_nodes(2)
    d = daemon_factory(node_toml(cluster, launcher="mpi"))
    script = ('echo "rank $OMPI_COMM_WORLD_RANK on $OAAS_TEST_NODE task $OAAS_TASK_ID"\n'
              '[ "$OMPI_COMM_WORLD_RANK" = 0 ] && echo "OAAS_RESULT {\\"ranks\\": $OAAS_WORKERS}"\nexit 0\n')
    tid = d.submit({"command": ["/bin/sh", "-c", script], "workers": 4, "resources": {"cpus": 1}})
    view = d.wait(tid, timeout=60)
    assert view["state"] == "COMPLETED", (view, d.request("GET", f"/v1/tasks/{tid}/logs?stream=stderr")[1])
    assert view["result"] == {"ranks": 4}
    assert sorted(h[0] for h in view["attempts"][0]["hosts"]) == ["node1", "node2"]
    lines = [l for l in d.request("GET", f"/v1/tasks/{tid}/logs")[1].splitlines() if l.startswith("rank")]
    markers = sorted(l.split()[3] for l in lines)
    assert markers == sorted([cluster.nodes[0].marker] * 2 + [cluster.nodes[1].marker] * 2)
    assert all(l.endswith(f"task {tid}") for l in lines)


def test_killed_node_goes_down_and_its_task_completes_elsewhere(daemon_factory, ssh_nodes):
    cluster = ssh_nodes(2)
    d = daemon_factory(node_toml(cluster, cpus=1))
    script = '[ "$OAAS_NODE" = node1 ] && sleep 60\n' + RESULT_NODE
    tid = d.submit({"script": script, "resources": {"cpus": 1}, "max_retries": 2})
    d.wait(tid, {"RUNNING"})
    assert d.task(tid)["attempts"][0]["node"] == "node1"
    time.sleep(0.5)
    cluster.nodes[0].kill()
    node = wait_node_state(d, "node1", "DOWN")
    assert node["reason"]
    view = d.wait(tid, timeout=60)
    assert view["state"] == "COMPLETED" and view["result"]["node"] == "node2", view
    assert view["node_failures"] == 1 and view["attempts"][0]["state"] == "NODE_FAIL"
    assert cluster.nodes[0].leftovers() == []


def test_bad_nodes_are_down_with_a_reason_and_the_daemon_serves(daemon_factory, ssh_nodes, tmp_path):
    cluster = ssh_nodes(1)
    good = cluster.nodes[0]
    wrong_key = tmp_path / "wrong"
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    other_hosts = tmp_path / "known_hosts"
    other_hosts.write_text(f"[{good.host}]:{good.port} {open(str(wrong_key) + '.pub').read().split(' ', 2)[0]} "
                           f"{open(str(wrong_key) + '.pub').read().split()[1]}\n")
    extra = (f'[[nodes]]\nname = "closed"\nlauncher = "ssh"\nhost = "127.0.0.1"\nport = 1\nuser = "x"\n'
             f'key = "{good.key_path}"\nknown_hosts = "{good.known_hosts}"\n'
             f'[[nodes]]\nname = "badauth"\nlauncher = "ssh"\nhost = "{good.host}"\nport = {good.port}\n'
             f'user = "{good.user}"\nkey = "{wrong_key}"\nknown_hosts = "{good.known_hosts}"\n'
             f'[[nodes]]\nname = "changed"\nlauncher = "ssh"\nhost = "{good.host}"\nport = {good.port}\n'
             f'user = "{good.user}"\nkey = "{good.key_path}"\nknown_hosts = "{other_hosts}"\n')
    d = daemon_factory(node_toml(cluster, extra=extra))
    reasons = {name: wait_node_state(d, name, "DOWN")["reason"] for name in ("closed", "badauth", "changed")}
    assert reasons["closed"].startswith("NodeUnreachable")
    assert reasons["badauth"].startswith("AuthRefused")
    assert reasons["changed"].startswith("HostKeyChanged")
    view = d.wait(d.submit({"script": RESULT_NODE}))
    assert view["result"]["node"] == "node1"


def test_restart_readopts_a_remote_task(daemon_factory, ssh_nodes, tmp_path):
    cluster = ssh_nodes(1)
    d = daemon_factory(node_toml(cluster))
    gate = f"{cluster.nodes[0].work_root}/gate"
    tid = d.submit({"script": f"echo started\nwhile [ ! -e {gate} ]; do sleep 0.1; done\necho after\n" + RESULT_NODE})
    deadline = time.time() + 20
    while "started" not in d.request("GET", f"/v1/tasks/{tid}/logs")[1]:
        assert time.time() < deadline
        time.sleep(0.05)
    d.stop(signal.SIGKILL)
    d.start()
    assert d.task(tid)["state"] == "RUNNING"
    import subprocess
    subprocess.run(["su", cluster.nodes[0].user, "-c", f"touch {gate}"], check=True)
    view = d.wait(tid, timeout=30)
    assert view["state"] == "COMPLETED" and view["attempt_count"] == 1, view
    assert d.request("GET", f"/v1/tasks/{tid}/logs")[1].count("started") == 1
    assert "after" in d.request("GET", f"/v1/tasks/{tid}/logs")[1]
