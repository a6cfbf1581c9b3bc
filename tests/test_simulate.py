"""``oaasd simulate``: traces checked row by row, figures computed by hand, the CLI's output."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from oaasd.config import SchedulerConfig
from oaasd.core.policies import POLICIES, policy_named
from oaasd.sim.command import POLICY_NAMES
from oaasd.sim.engine import simulate
from oaasd.sim.report import jain, metrics
from oaasd.sim.synth import generate
from oaasd.sim.trace import TraceError, TraceRow, read_nodes, read_trace, write_trace

REPO = Path(__file__).resolve().parent.parent
HEADER = "submit_s,duration_s,workers,cpus,memory_mb,gpus,user,time_limit_s,estimated_runtime_s,preemptible\n"


@pytest.fixture
def nodes(tmp_path) -> Path:
    path = tmp_path / "nodes.toml"
    path.write_text('[[nodes]]\nname = "n"\ncount = 2\ncpus = 2\nmemory_mb = 1000\n')
    return path


def test_policy_names_agree_everywhere():
    literal = typing.get_args(SchedulerConfig.model_fields["policy"].annotation)
    assert set(POLICIES) == set(literal) == set(POLICY_NAMES)


@pytest.mark.parametrize("body, row, words", [
    (HEADER + "0,10,1,1,0,0,a,,,\n1,-5,1,1,0,0,a,,,\n", 3, "negative duration_s"),
    ("submit_s,duration_s,colour\n0,1,red\n", 2, "unknown column(s) colour"),
    ("submit_s,duration_s,workers,cpus\n0,1,5,2\n", 2, "can never hold it (5 worker(s)"),
    ("submit_s,duration_s\n0,soon\n", 2, "could not convert"),
    ('{"submit_s": 0, "duration_s": 1}\n{"submit_s": 1, "duration_s": 2, "gpus": 1}\n', 2, "can never hold"),
    ('{"submit_s": 0, "duration_s": 1}\nnot json\n', 2, "not JSON"),
    ("submit_s,duration_s,time_limit_s\n0,1,0\n", 2, "time_limit_s must be > 0"),
])
def test_a_bad_row_is_an_error_naming_its_row(tmp_path, nodes, body, row, words):
    trace = tmp_path / ("t.jsonl" if body.startswith("{") else "t.csv")
    trace.write_text(body)
    with pytest.raises(TraceError) as err:
        read_trace(trace, read_nodes(nodes))
    assert f"row {row}:" in err.value.message and words in err.value.message, err.value.message
    rows, skipped = read_trace(trace, read_nodes(nodes), skip_bad=True)
    assert skipped == 1 and len(rows) == body.count("\n") - 1 - (not body.startswith("{"))


def test_missing_columns_get_defaults(tmp_path, nodes):
    trace = tmp_path / "t.csv"
    trace.write_text("duration_s\n3\n")
    (row,), _ = read_trace(trace, read_nodes(nodes))
    assert row == TraceRow(duration_s=3.0)


def test_figures_of_a_trace_worked_by_hand(nodes):
    # Two nodes of 2 cpus. t=0: a 2x2-cpu gang for 10 s takes both; t=1: a 1-cpu task of user b
    # waits until 10 and runs 4 s; t=2: a 1-cpu task of a with limit 3 runs 3 of its 8 s (TIMEOUT).
    rows = [TraceRow(0, 10, workers=2, cpus=2, user="a"), TraceRow(1, 4, user="b"),
            TraceRow(2, 8, user="a", time_limit_s=3)]
    run = simulate(rows, read_nodes(nodes), policy_named("fifo"))
    assert [(o.start_s, o.end_s, o.timed_out) for o in run.outcomes] == [(0, 10, False), (10, 14, False),
                                                                         (10, 13, True)]
    m = metrics(run)
    assert m["jct_s"]["avg"] == pytest.approx((10 + 13 + 11) / 3)
    assert m["wait_s"]["avg"] == pytest.approx((0 + 9 + 8) / 3)
    assert m["makespan_s"] == 14 and m["timed_out"] == 1 and m["never_started"] == 0
    assert m["utilization"]["cpu"] == pytest.approx((40 + 4 + 3) / (4 * 14))
    assert m["utilization"]["gpus"] is None
    # slowdown: a = mean(10/10, 11/3), b = 13/4; Jain over 1/slowdown
    xa, xb = 1 / ((1 + 11 / 3) / 2), 1 / (13 / 4)
    assert m["fairness_jain"] == pytest.approx((xa + xb) ** 2 / (2 * (xa * xa + xb * xb)))


def test_jain_is_one_when_equal_and_one_over_n_when_one_gets_all():
    import numpy as np
    assert jain(np.array([2.0, 2.0, 2.0])) == pytest.approx(1.0)
    assert jain(np.array([5.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)


def test_the_generator_is_seeded_heavy_tailed_and_mixed(tmp_path, nodes):
    rows = generate(2000, seed=3, users=4)
    assert rows == generate(2000, seed=3, users=4) and rows != generate(2000, seed=4, users=4)
    durations = sorted(r.duration_s for r in rows)
    assert durations[-1] > 20 * durations[len(durations) // 2]  # a heavy tail
    assert {r.user for r in rows} == {f"user{k}" for k in range(4)}
    assert any(r.gpus for r in rows) and any(r.workers > 1 for r in rows) and any(r.time_limit_s is None for r in rows)
    assert [r.submit_s for r in rows] == sorted(r.submit_s for r in rows)
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"g{suffix}"
        write_trace(path, rows[:50])
        big = tmp_path / "big.toml"
        big.write_text('[[nodes]]\nname = "n"\ncount = 4\ncpus = 16\nmemory_mb = 65536\ngpus = 4\n')
        assert read_trace(path, read_nodes(big)) == (rows[:50], 0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oaasd", "simulate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_compares_policies_on_the_sample_trace():
    proc = run_cli("--trace", "examples/sim/sample.csv", "--nodes", "examples/sim/nodes.toml",
                   "--policy", "fifo,backfill", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["policy"] for r in results] == ["fifo", "backfill"]
    assert all(r["tasks"] == r["started"] == 500 for r in results)
    table = run_cli("--trace", "examples/sim/sample.csv", "--nodes", "examples/sim/nodes.toml", "--policy",
                    "fifo,backfill")
    assert table.returncode == 0 and "jct p99" in table.stdout and "backfill" in table.stdout


def test_cli_errors_are_one_line_and_exit_2(tmp_path, nodes):
    trace = tmp_path / "t.csv"
    trace.write_text("submit_s,duration_s\n0,1\n0,-1\n")
    proc = run_cli("--trace", str(trace), "--nodes", str(nodes))
    assert proc.returncode == 2 and "row 3: negative duration_s" in proc.stderr
    skipped = run_cli("--trace", str(trace), "--nodes", str(nodes), "--skip-bad", "--json")
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["skipped_rows"] == 1
    bad_policy = run_cli("--trace", str(trace), "--nodes", str(nodes), "--policy", "lottery")
    assert bad_policy.returncode == 2 and "choose one of fifo, backfill, sjf, fair, priority" in bad_policy.stderr
