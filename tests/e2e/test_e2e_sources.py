"""File load sources that are not plain files: FIFOs and symlinks in ``<state>/loads`` on the real daemon.

A FIFO there once blocked the worker threads the solver and the tuners
shared: other users' solves and suggestions hung, and SIGTERM no longer
stopped the daemon. Now a file source is opened non-blocking, read only when
a regular file, never through a symlink, on a pool of its own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

INTERVAL = 0.2
FIFOS = 10  # more than the default executor's threads on this machine (min(32, cores + 4))
PIPELINE = {
    "name": "fifo", "slo_ms": 200,
    "stages": [{"name": "only", "max_replicas": 4, "variants": [
        {"name": "v", "accuracy": 0.9, "cores": 1,
         "profiles": [{"batch": 1, "latency_ms": 10, "throughput_rps": 50}]}]}]}
COMMAND = {"kind": "command", "argv": ["true"]}
EXTERNAL = {"name": "ext", "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
            "objectives": [{"metric": "loss", "sense": "minimize"}], "number_of_trials": 5, "sampler": "random"}


def register(d, path: str) -> int:
    body = {"pipeline": PIPELINE, "source": {"kind": "file", "path": path}, "actuator": COMMAND,
            "interval_s": INTERVAL}
    status, view = d.request("POST", "/v1/pipelines", body, timeout=10)
    assert status == 201, view
    return view["id"]


def errors_of(d, pipeline_id: int, timeout: float = 20) -> list[str]:
    """The source errors of a pipeline's adaptations, once it has recorded two."""
    deadline = time.time() + timeout
    while True:
        status, view = d.request("GET", f"/v1/pipelines/{pipeline_id}?limit=5", timeout=10)
        assert status == 200, view
        if view["adaptation_count"] >= 2:
            return [a["source_error"] for a in view["adaptations"]]
        assert time.time() < deadline, f"pipeline {pipeline_id} recorded nothing: {json.dumps(view)[:2000]}"
        time.sleep(0.05)


def test_fifo_sources_block_nobody_and_sigterm_still_stops(daemon_factory):
    d = daemon_factory()
    loads = d.state_dir / "loads"
    for i in range(FIFOS):
        os.mkfifo(loads / f"fifo{i}")
    ids = [register(d, f"fifo{i}") for i in range(FIFOS)]
    time.sleep(10 * INTERVAL)  # every loop has tried its FIFO several times

    profile = json.loads((REPO / "examples" / "pipeline" / "profile.json").read_text())
    started = time.monotonic()
    status, decision = d.request("POST", "/v1/pipelines/solve", {"pipeline": profile, "load_rps": 20}, timeout=10)
    assert status == 200 and decision["feasible"], decision
    status, tuning = d.request("POST", "/v1/tunings", EXTERNAL, timeout=10)
    assert status == 201, tuning
    status, worker = d.request("POST", f"/v1/tunings/{tuning['id']}/workers", timeout=10)
    assert status == 201, worker
    status, suggestion = d.request("POST", f"/v1/tunings/{tuning['id']}/suggest", {"worker_id": worker["worker_id"]},
                                   timeout=10)
    assert status == 200 and 0 <= suggestion["config"]["x"] <= 1, suggestion
    assert time.monotonic() - started < 5

    for pipeline_id in ids:  # recorded as the source's error, every interval
        assert set(errors_of(d, pipeline_id)) == {f"fifo{ids.index(pipeline_id)} is not a regular file"}

    started = time.monotonic()
    assert d.stop(timeout=20) == 0
    assert time.monotonic() - started < 5, d.log()[-2000:]


def test_symlinks_in_the_load_dir_are_never_followed(daemon_factory, tmp_path):
    d = daemon_factory()
    loads = d.state_dir / "loads"
    (loads / "real.txt").write_text("7\n")
    (loads / "sub").mkdir()
    (loads / "sub" / "rps").write_text("5\n")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "rps").write_text("42\n")
    (loads / "out").symlink_to(outside)
    status, body = d.request("POST", "/v1/pipelines", {"pipeline": PIPELINE, "actuator": COMMAND,
                                                       "source": {"kind": "file", "path": "out/rps"}})
    assert status == 422 and body["detail"][0]["field"] == "source.path", body  # pointing out now: refused at once

    (loads / "link.txt").symlink_to(loads / "real.txt")  # even one that stays inside is not followed
    plain, linked, swapped = register(d, "real.txt"), register(d, "link.txt"), register(d, "sub/rps")
    assert errors_of(d, plain)[0] is None and observed(d, plain) == 7.0
    assert set(errors_of(d, linked)) == {"link.txt: a symlink, never followed"}
    assert errors_of(d, swapped)[0] is None and observed(d, swapped) == 5.0
    (loads / "sub" / "rps").unlink()
    (loads / "sub").rmdir()
    (loads / "sub").symlink_to(outside)  # swapped for a symlink out after registration
    deadline = time.time() + 20
    while errors_of(d, swapped)[0] is None:
        assert time.time() < deadline
        time.sleep(0.05)
    assert errors_of(d, swapped)[0] == "sub/rps: a symlink (never followed) or a file where a directory should be"
    for pipeline_id in (linked, swapped):
        status, view = d.request("GET", f"/v1/pipelines/{pipeline_id}?limit=1000")
        assert 42.0 not in [a["observed_rps"] for a in view["adaptations"]]
    assert observed(d, linked) is None


def observed(d, pipeline_id: int) -> float | None:
    """The load the newest adaptation read."""
    return d.request("GET", f"/v1/pipelines/{pipeline_id}?limit=1")[1]["adaptations"][0]["observed_rps"]
