"""POST /v1/pipelines/solve on the real daemon: the exact answer, and bad input."""

from __future__ import annotations

import json

from conftest import REPO


def profile() -> dict:
    return json.loads((REPO / "examples" / "pipeline" / "profile.json").read_text())


def test_solve_matches_the_library_and_grows_with_load(daemon_factory):
    from oaasd.pipeline import Pipeline
    from oaasd.pipeline.solver import solve
    d = daemon_factory()
    pipe = profile()
    replicas = []
    for load in (5.0, 60.0):
        status, body = d.request("POST", "/v1/pipelines/solve", {"pipeline": pipe, "load_rps": load})
        assert status == 200, body
        expected = solve(Pipeline.model_validate(pipe), load)
        assert body["objective"] == expected.objective
        assert [s["variant"] for s in body["stages"]] == [s.variant for s in expected.stages]
        replicas.append(sum(s["replicas"] for s in body["stages"]))
    assert replicas[1] > replicas[0]


def test_solve_bad_input_names_the_field(daemon_factory):
    d = daemon_factory()
    pipe = profile()
    status, body = d.request("POST", "/v1/pipelines/solve", {"pipeline": pipe, "load_rps": -1})
    assert status == 422 and body["detail"][0]["field"] == "load_rps"
    bad = {**pipe, "slo_ms": "fast"}
    status, body = d.request("POST", "/v1/pipelines/solve", {"pipeline": bad, "load_rps": 1})
    assert status == 422 and body["detail"][0]["field"] == "pipeline.slo_ms"
