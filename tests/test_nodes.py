"""Nodes: several local nodes, labels, drain/resume/down/delete with tasks running, restart."""

from __future__ import annotations

import signal
import time

import psutil

import pytest
from conftest import wait_file

TWO = ('[[nodes]]\nname = "n1"\ncpus = 1\nmemory_mb = 1000\nlabels = { arch = "a" }\n'
       '[[nodes]]\nname = "n2"\ncpus = 1\nmemory_mb = 1000\nlabels = { arch = "b" }\n')


def report_node(extra: str = "") -> str:
    return f'{extra}echo "OAAS_RESULT {{\\"node\\": \\"$OAAS_NODE\\"}}"\n'


def gated(gate) -> str:
    return f"while [ ! -e {gate} ]; do sleep 0.05; done\n"


@pytest.fixture
def d(daemon_factory):
    return daemon_factory(TWO)


def nodes(d) -> dict:
    return {n["name"]: n for n in d.request("GET", "/v1/nodes")[1]["items"]}


def test_labels_choose_the_node(d):
    for arch, node in (("b", "n2"), ("a", "n1")):
        view = d.wait(d.submit({"script": report_node(), "labels": {"arch": arch}}))
        assert view["result"] == {"node": node}
    status, body = d.request("POST", "/v1/tasks", {"script": "true", "labels": {"arch": "z"}})
    assert status == 422 and body["detail"][0]["check"] == "LabelMismatch"


def test_drain_then_resume(d, tmp_path):
    gate = tmp_path / "gate"
    first = d.submit({"script": report_node(gated(gate)), "labels": {"arch": "a"}})
    d.wait(first, {"RUNNING"})
    status, body = d.request("PATCH", "/v1/nodes/n1", {"state": "DRAIN"})
    assert status == 422 and body["detail"][0]["field"] == "body"
    assert "reason" in body["detail"][0]["problem"]
    status, body = d.request("PATCH", "/v1/nodes/n1", {"state": "DRAIN", "reason": "disk swap"})
    assert status == 200 and body["state"] == "DRAINING" and body["reason"] == "disk swap"
    assert body["running"] == [first]
    listed = {n["name"]: n["running"] for n in d.request("GET", "/v1/nodes")[1]["items"]}
    assert listed == {"n1": [first], "n2": []}
    waiting = d.submit({"script": report_node(), "labels": {"arch": "a"}})
    other = d.wait(d.submit({"script": report_node()}))
    assert other["result"] == {"node": "n2"}
    view = d.task(waiting)
    assert view["state"] == "PENDING" and view["nodes_rejected"]["NodeNotSchedulable"] == 1
    gate.touch()
    d.wait(first)
    assert nodes(d)["n1"]["state"] == "DRAINED"
    assert d.request("PATCH", "/v1/nodes/n1", {"state": "RESUME"})[0] == 200
    assert d.wait(waiting)["result"] == {"node": "n1"}
    assert nodes(d)["n1"]["state"] == "IDLE"


def test_down_requeues_running_work_elsewhere(d, tmp_path):
    pidfile = tmp_path / "pid"
    tid = d.submit({"script": f'[ "$OAAS_NODE" = n1 ] && {{ echo $$ > {pidfile}; sleep 60; }}\n' + report_node(),
                    "placement": "pack"})
    d.wait(tid, {"RUNNING"})
    assert d.task(tid)["attempts"][0]["node"] == "n1"  # best-fit ties go to node order
    wait_file(pidfile)
    status, body = d.request("PATCH", "/v1/nodes/n1", {"state": "DOWN", "reason": "PSU failed"})
    assert status == 200 and body["state"] == "DOWN"
    view = d.wait(tid)
    assert view["state"] == "COMPLETED" and view["result"] == {"node": "n2"}
    assert [a["state"] for a in view["attempts"]] == ["NODE_FAIL", "COMPLETED"]
    assert "PSU failed" in view["attempts"][0]["message"]


def test_delete_refused_while_running_unless_forced(d, tmp_path):
    tid = d.submit({"script": '[ "$OAAS_NODE" = n1 ] && sleep 60\n' + report_node(), "labels": {}})
    d.wait(tid, {"RUNNING"})
    node = d.task(tid)["attempts"][0]["node"]
    status, body = d.request("DELETE", f"/v1/nodes/{node}")
    assert status == 409 and body["detail"][0]["tasks"] == [tid]
    status, body = d.request("DELETE", f"/v1/nodes/{node}?force=1")
    assert status == 200 and body["requeued"] == [tid]
    assert d.request("GET", f"/v1/nodes/{node}")[0] == 404
    view = d.wait(tid)
    assert view["state"] == "COMPLETED" and view["result"]["node"] != node


def test_added_nodes_intents_and_free_arrays_survive_restart(d, tmp_path):
    status, body = d.request("POST", "/v1/nodes", {"name": "n3", "cpus": 2, "memory_mb": 500, "labels": {"arch": "c"}})
    assert status == 201 and body["capacity"] == {"cpus": 2.0, "memory_mb": 500, "gpus": 0}
    assert d.request("POST", "/v1/nodes", {"name": "n3", "cpus": 1})[0] == 409
    assert d.request("POST", "/v1/nodes", {"name": "bad name", "cpus": 1})[0] == 422
    gate = tmp_path / "gate"
    tid = d.submit({"script": report_node(gated(gate)), "labels": {"arch": "c"},
                    "resources": {"cpus": 1.5, "memory_mb": 100}})
    d.wait(tid, {"RUNNING"})
    assert d.request("PATCH", "/v1/nodes/n2", {"state": "DRAIN", "reason": "later"})[0] == 200
    assert d.request("DELETE", "/v1/nodes/n1")[0] == 200
    before = nodes(d)
    assert before["n3"]["free"] == {"cpus": 0.5, "memory_mb": 400, "gpus": 0}
    d.stop(signal.SIGKILL)
    d.start()
    after = nodes(d)
    assert after == before
    assert after["n2"]["state"] == "DRAINED" and "n1" not in after
    gate.touch()
    assert d.wait(tid)["result"] == {"node": "n3"}
    assert nodes(d)["n3"]["free"] == nodes(d)["n3"]["capacity"]


def test_gang_spreads_over_nodes_and_gets_a_hostfile(d):
    script = 'cat "$OAAS_HOSTFILE"\necho "OAAS_RESULT {\\"workers\\": $OAAS_WORKERS}"\n'
    view = d.wait(d.submit({"script": script, "workers": 2, "placement": "spread"}))
    assert view["state"] == "COMPLETED" and view["result"] == {"workers": 2}
    assert sorted(h[0] for h in view["attempts"][0]["hosts"]) == ["n1", "n2"]
    log = d.request("GET", f"/v1/tasks/{view['id']}/logs")[1]
    assert log.splitlines()[:2] == ["127.0.0.1 slots=1", "127.0.0.1 slots=1"]
    status, body = d.request("POST", "/v1/tasks", {"script": "true", "workers": 3})
    assert status == 422 and body["error"] == "Unsatisfiable"


def test_a_patch_racing_a_delete_is_a_404_never_a_500_and_leaves_no_intent(d, tmp_path):
    import asyncio

    import aiohttp

    base = f"http://127.0.0.1:{d.port}/v1/nodes"

    async def race(session: aiohttp.ClientSession, i: int) -> tuple[int, int]:
        name = f"tmp{i}"
        async with session.post(base, json={"name": name, "cpus": 1, "memory_mb": 100}) as r:
            assert r.status == 201, await r.text()
        gate = tmp_path / f"gate{i}"
        async with session.post(f"http://127.0.0.1:{d.port}/v1/tasks",
                                json={"script": gated(gate), "require_result": False,
                                      "resources": {"cpus": 1, "memory_mb": 100}, "max_retries": 0}) as r:
            assert r.status == 201
        patch = session.patch(f"{base}/{name}", json={"state": "DOWN", "reason": "x" * 200})
        delete = session.delete(f"{base}/{name}?force=1")
        answers = await asyncio.gather(patch, delete)
        for r in answers:
            await r.read()
        gate.touch()
        return answers[0].status, answers[1].status

    async def main() -> list[tuple[int, int]]:
        async with aiohttp.ClientSession() as session:
            return [await race(session, i) for i in range(8)]

    for patched, deleted in asyncio.run(main()):
        assert patched in (200, 404) and deleted in (200, 404), (patched, deleted)
    assert "Traceback" not in d.log()
    assert not any(name.startswith("tmp") for name in nodes(d))
    d.stop()
    d.start()  # no intent of a deleted node comes back
    assert not any(name.startswith("tmp") for name in nodes(d))


def test_a_running_attempt_on_a_node_taken_out_of_the_config_is_stopped_and_requeued(d, tmp_path):
    """The sysadmin removes a node from oaasd.toml while a task runs on it, then restarts the
    daemon: it must start, stop that attempt and run the task elsewhere (it failed to start before)."""
    pidfile, gate = tmp_path / "pid", tmp_path / "gate"
    tid = d.submit({"script": f"echo $$ > {pidfile}\n" + report_node(gated(gate)), "labels": {"arch": "a"}})
    d.wait(tid, {"RUNNING"})
    pid = int(wait_file(pidfile).strip() or 0)
    d.stop(signal.SIGKILL)
    d.write_config('[[nodes]]\nname = "n3"\ncpus = 1\nmemory_mb = 1000\nlabels = { arch = "a" }\n')  # n1 and n2 gone
    d.start()
    gate.touch()
    view = d.wait(tid)
    assert view["state"] == "COMPLETED" and view["result"] == {"node": "n3"}, view
    first = view["attempts"][0]
    assert (first["node"], first["state"]) == ("n1", "NODE_FAIL"), first
    assert "node n1 is no longer configured" in d.log()
    deadline = time.time() + 10
    while time.time() < deadline and psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
        time.sleep(0.05)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", "the old attempt still runs"
