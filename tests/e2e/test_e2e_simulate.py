"""The simulator and the daemon start a small trace in the same order (both run, under fifo and backfill).

The trace: on a 2-core node, two 1-cpu tasks (2 s and 6 s), then a 2-cpu
task and two 1.5 s ones. Under fifo the small ones take the first freed
core before the wide one; under backfill the wide one goes first. Events are
at least 0.5 s apart, so the daemon's launch latency cannot reorder them.
"""

from __future__ import annotations

import time

import pytest

from oaasd.core.policies import policy_named
from oaasd.sim.engine import simulate
from oaasd.sim.trace import TraceRow, read_nodes

NODE = '[[nodes]]\nname = "local"\ncpus = 2\nmemory_mb = 2000\n'
TRACE = [
    TraceRow(submit_s=0.0, duration_s=2.0, cpus=1, time_limit_s=30),
    TraceRow(submit_s=0.0, duration_s=6.0, cpus=1, time_limit_s=30),
    TraceRow(submit_s=0.5, duration_s=1.0, cpus=2, time_limit_s=30),
    TraceRow(submit_s=0.6, duration_s=1.5, cpus=1, time_limit_s=60),
    TraceRow(submit_s=0.7, duration_s=1.5, cpus=1, time_limit_s=60),
]
EXPECTED = {"fifo": [1, 2, 4, 5, 3], "backfill": [1, 2, 3, 4, 5]}


def batches(starts: dict[int, float], within: float) -> list[int]:
    """Task ids by start time; starts within ``within`` of the batch's first are one batch, by id."""
    out, batch, first = [], [], None
    for tid, at in sorted(starts.items(), key=lambda kv: (kv[1], kv[0])):
        if first is not None and at - first > within:
            out += sorted(batch)
            batch, first = [], None
        batch.append(tid)
        first = at if first is None else first
    return out + sorted(batch)


@pytest.mark.parametrize("policy", ["fifo", "backfill"])
def test_simulator_and_daemon_start_the_trace_in_the_same_order(policy, daemon_factory, tmp_path):
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(NODE)
    run = simulate(TRACE, read_nodes(nodes), policy_named(policy))
    simulated = batches({o.task_id: o.start_s for o in run.outcomes}, within=0.0)

    d = daemon_factory(f'[scheduler]\npolicy = "{policy}"\n' + NODE)
    t0, ids = time.time(), {}
    for k, row in enumerate(TRACE, 1):
        time.sleep(max(0.0, t0 + row.submit_s - time.time()))
        ids[d.submit({"script": f"sleep {row.duration_s}\necho 'OAAS_RESULT {{\"ok\": 1}}'\n",
                      "resources": {"cpus": row.cpus}, "time_limit_s": row.time_limit_s})] = k
    starts = {}
    for tid, k in ids.items():
        view = d.wait(tid, timeout=60)
        assert view["state"] == "COMPLETED", view
        starts[k] = view["attempts"][0]["started_at"]
    assert simulated == EXPECTED[policy]
    assert batches(starts, within=0.3) == simulated, starts
