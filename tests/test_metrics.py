"""/metrics on the real daemon: Prometheus text that moves as tasks run."""

from __future__ import annotations

import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

PY = sys.executable
NODE = '[[nodes]]\nname = "n1"\ncpus = 4\nmemory_mb = 2048\n'


def scrape(daemon, headers: dict[str, str] | None = None) -> dict[tuple, float]:
    """GET /metrics, parsed: {(sample name, sorted label pairs): value}."""
    status, text = daemon.request("GET", "/metrics", headers=headers)
    assert status == 200, text
    assert daemon.last_headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as for a labelled counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(daemon, check, timeout: float = 30) -> dict[tuple, float]:
    """Scrape until ``check(samples)`` holds (gauges follow commits by a loop turn)."""
    deadline = time.time() + timeout
    while True:
        samples = scrape(daemon)
        if check(samples) or time.time() > deadline:
            return samples
        time.sleep(0.05)


def waiting_task(flag, cpus: float = 1, metric: str | None = None) -> dict:
    """A task that runs until ``flag`` exists, then reports ``metric`` (a JSON text) and a result."""
    code = (f"import os,time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
            + (f"print('OAAS_METRIC', {metric!r}, flush=True)\n" if metric else "")
            + "print('OAAS_RESULT {\"ok\": 1}')\n")
    return {"command": [PY, "-c", code], "resources": {"cpus": cpus}}


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory(NODE)


def test_metrics_parse_with_types_help_and_idle_cluster(daemon):
    status, text = daemon.request("GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {"oaasd_tasks": "gauge", "oaasd_queue_length": "gauge", "oaasd_oldest_pending_age_seconds": "gauge",
             "oaasd_nodes": "gauge", "oaasd_resource_capacity": "gauge", "oaasd_resource_free": "gauge",
             "oaasd_scheduling_pass_seconds": "histogram", "oaasd_submit_to_start_seconds": "histogram",
             "oaasd_sqlite_commit_seconds": "histogram", "oaasd_launches": "counter", "oaasd_failures": "counter",
             "oaasd_event_subscribers": "gauge", "oaasd_callback_posts": "counter"}
    for name, kind in kinds.items():
        assert families[name].type == kind, name
        assert families[name].documentation, name
    assert not [n for n in families if not n.startswith("oaasd_")]  # the daemon's own registry only
    samples = scrape(daemon)
    assert metric(samples, "oaasd_nodes", state="IDLE") == 1
    assert metric(samples, "oaasd_nodes", state="DOWN") == 0
    assert metric(samples, "oaasd_resource_capacity", resource="cpus") == 4
    assert metric(samples, "oaasd_resource_capacity", resource="memory_mb") == 2048
    assert metric(samples, "oaasd_resource_free", resource="cpus") == 4
    assert metric(samples, "oaasd_resource_capacity", resource="gpus") == 0
    assert all(metric(samples, "oaasd_tasks", state=s) == 0 for s in ("PENDING", "RUNNING", "COMPLETED"))
    assert metric(samples, "oaasd_launches_total") == 0
    assert metric(samples, "oaasd_sqlite_commit_seconds_count") >= 0


def test_metrics_move_when_tasks_run(daemon, tmp_path):
    before = scrape(daemon)
    flag = tmp_path / "go"
    running = daemon.submit(waiting_task(flag))
    daemon.wait(running, {"RUNNING"})
    blocked = daemon.submit(waiting_task(flag, cpus=4))  # fits the node, not while 1 cpu is taken
    samples = scrape_until(daemon, lambda s: metric(s, "oaasd_queue_length") == 1)
    assert metric(samples, "oaasd_tasks", state="RUNNING") == 1
    assert metric(samples, "oaasd_tasks", state="PENDING") == 1
    assert metric(samples, "oaasd_queue_length") == 1
    assert metric(samples, "oaasd_oldest_pending_age_seconds") > 0
    assert metric(samples, "oaasd_nodes", state="MIXED") == 1
    assert metric(samples, "oaasd_resource_free", resource="cpus") == 3
    assert metric(samples, "oaasd_launches_total") == 1
    assert metric(samples, "oaasd_submit_to_start_seconds_count") == 1

    flag.write_text("go")
    assert daemon.wait(running)["state"] == "COMPLETED"
    assert daemon.wait(blocked)["state"] == "COMPLETED"
    failed = daemon.submit({"command": [PY, "-c", "raise SystemExit(3)"]})
    assert daemon.wait(failed)["state"] == "FAILED"
    after = scrape_until(daemon, lambda s: metric(s, "oaasd_nodes", state="IDLE") == 1)
    assert metric(after, "oaasd_tasks", state="COMPLETED") == 2
    assert metric(after, "oaasd_tasks", state="FAILED") == 1
    assert metric(after, "oaasd_tasks", state="RUNNING") == 0
    assert metric(after, "oaasd_queue_length") == 0
    assert metric(after, "oaasd_oldest_pending_age_seconds") == 0
    assert metric(after, "oaasd_launches_total") == 3
    assert metric(after, "oaasd_submit_to_start_seconds_count") == 3
    assert metric(after, "oaasd_failures_total", state="FAILED", reason="NonZeroExitCode") == 1
    assert metric(after, "oaasd_resource_free", resource="cpus") == 4
    assert (metric(after, "oaasd_scheduling_pass_seconds_count")
            > metric(before, "oaasd_scheduling_pass_seconds_count"))
    assert (metric(after, "oaasd_sqlite_commit_seconds_count")
            >= metric(before, "oaasd_sqlite_commit_seconds_count") + 3)  # at least the 3 submissions, one by one
    assert metric(after, "oaasd_scheduling_pass_seconds_bucket", le="+Inf") == metric(
        after, "oaasd_scheduling_pass_seconds_count")


def test_failure_reasons_are_counted(daemon):
    no_result = daemon.submit({"command": [PY, "-c", "print('no result')"]})
    timeout = daemon.submit({"command": [PY, "-c", "import time; time.sleep(60)"], "time_limit_s": 0.5})
    assert daemon.wait(no_result)["reason"] == "NoResult"
    assert daemon.wait(timeout)["state"] == "TIMEOUT"
    samples = scrape(daemon)
    assert metric(samples, "oaasd_failures_total", state="FAILED", reason="NoResult") == 1
    assert metric(samples, "oaasd_failures_total", state="TIMEOUT", reason="TimeLimit") == 1
    assert metric(samples, "oaasd_tasks", state="TIMEOUT") == 1
