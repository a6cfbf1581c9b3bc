"""The OpenAPI document covers exactly the routes the app serves, and the daemon serves it."""

from __future__ import annotations

import pytest

from oaasd.config import Settings
from oaasd.http.app import create_app
from oaasd.http.openapi import OPERATIONS, document, error_statuses


@pytest.fixture
def routes(tmp_path) -> set[tuple[str, str]]:
    """(method, path) of every route of an app built, not started, by ``create_app``."""
    app = create_app(Settings.model_validate({"server": {"state_dir": str(tmp_path)}}))
    # aiohttp adds a HEAD beside every GET; it answers as the GET does, without a body.
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in document()["paths"].items() for method in ops}


def test_every_route_is_documented(routes):
    assert routes - documented() == set()


def test_every_documented_operation_exists(routes):
    assert documented() - routes == set()


def test_table_has_no_duplicates():
    keys = [(op.method, op.path) for op in OPERATIONS]
    names = [op.name for op in OPERATIONS]
    assert len(set(keys)) == len(keys)
    assert len(set(names)) == len(names)


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves():
    doc = document()
    names = set(doc["components"]["schemas"])
    refs = _refs(doc)
    assert refs
    assert {r.removeprefix("#/components/schemas/") for r in refs} <= names


def test_every_error_answer_is_the_error_body():
    doc = document()
    for op in OPERATIONS:
        responses = doc["paths"][op.path][op.method.lower()]["responses"]
        assert any(s.startswith("2") for s in responses), op.name
        for status in error_statuses(op):
            body = responses[str(status)]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/Error"}, (op.name, status)
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "message", "detail"]


def test_request_bodies_are_the_handlers_models():
    doc = document()
    bodies = {op.name: doc["paths"][op.path][op.method.lower()].get("requestBody") for op in OPERATIONS}
    assert bodies["submit_task"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskSpec"}
    spec = doc["components"]["schemas"]["TaskSpec"]
    assert spec["additionalProperties"] is False
    assert {"command", "script", "resources", "time_limit_s"} <= set(spec["properties"])
    assert bodies["list_tasks"] is None


def test_daemon_serves_the_document(daemon_factory):
    d = daemon_factory()
    status, body = d.request("GET", "/v1/openapi.json")
    assert status == 200
    assert d.last_headers["Content-Type"].startswith("application/json")
    assert body["openapi"] == "3.1.0"
    assert body == document()
    status, task = d.request("POST", "/v1/tasks", {"command": ["true"], "require_result": False})
    assert status == 201
    summary = set(body["components"]["schemas"]["TaskSummary"]["required"])
    assert summary <= set(task) <= summary | {"nodes_rejected"}


def test_fuzzing_finds_stay_fixed(daemon_factory):
    """Answers schemathesis once found to be 500s."""
    d = daemon_factory()
    status, error = d.request("GET", "/v1/tasks/%C2%B2")  # "²".isdigit() is true, int("²") raises
    assert status == 400
    assert set(error) == {"error", "message", "detail"} and error["detail"][0]["field"] == "id"
    for bad, field in (({"core_capacity": [2000, -1000]}, "core_capacity.1"),
                       ({"cpus": 3, "core_capacity": [1000, 1000]}, "body"),
                       ({"memory_mb": 1 << 62}, "memory_mb")):
        status, error = d.request("POST", "/v1/nodes", {"name": "odd", **bad})
        assert status == 422 and error["detail"][0]["field"] == field, error
    profile = {"batch": 1, "latency_ms": 1.0, "throughput_rps": 5e-324}  # load / throughput overflows
    pipeline = {"name": "p", "slo_ms": 10.0, "stages": [
        {"name": "s", "variants": [{"name": "v", "accuracy": 0.9, "cores": 1.0, "profiles": [profile]}]}]}
    status, decision = d.request("POST", "/v1/pipelines/solve", {"pipeline": pipeline, "load_rps": 1.0})
    assert status == 200 and decision["feasible"] is False
    d.stop()
    d.start()  # the refused node was not stored: the daemon still starts
    status, nodes = d.request("GET", "/v1/nodes")
    assert [n["name"] for n in nodes["items"]] == ["local"]
