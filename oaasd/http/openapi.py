"""The API contract: one table of operations and the OpenAPI 3.1 document built from it.

Request bodies are the pydantic models the handlers validate with (in
validation mode); answers are the models of ``oaasd/http/views.py`` and the
pipeline solver's ``Decision`` (in serialization mode); every error is the
one ``Error`` body. ``tests/test_openapi.py`` fails when the table and the
app's router disagree; ``tests/test_schemathesis.py`` checks the live daemon
against the document.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from oaasd.config import NodeConfig
from oaasd.http import views
from oaasd.http.auth import OPEN_PATHS
from oaasd.http.nodes import NodePatch
from oaasd.http.tunings import (
    TUNING_STATES,
    ObservationBody,
    ShouldStopBody,
    SuggestBody,
    WorkerBody,
)
from oaasd.models import TaskSpec
from oaasd.pipeline.loop import STATES as PIPELINE_STATES
from oaasd.pipeline.loop import Registration
from oaasd.pipeline.model import Decision, SolveRequest
from oaasd.states import State
from oaasd.tuning.description import TuningDescription

REF = "#/components/schemas/{model}"
JSON = "application/json"


@dataclass(frozen=True)
class Stream:
    """A body that is not JSON: its content type and what it carries."""

    content_type: str
    description: str


@dataclass(frozen=True)
class Param:
    """A path or query parameter."""

    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """One route: what it takes, what it answers on success, which errors it may give."""

    name: str
    method: str
    path: str
    summary: str
    ok: dict[int, type[BaseModel] | Stream]
    request: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    admin: bool = False
    body_required: bool = True


ERRORS = {
    400: "malformed request: bad JSON, or a bad path or query parameter",
    401: "no valid bearer token (when auth is on)",
    403: "the caller's role does not allow this",
    404: "no such object, or not the caller's",
    409: "conflicts with the object's current state",
    413: "request body larger than server.max_body_bytes",
    422: "fields invalid, or no node could ever hold the request (Unsatisfiable)",
    429: "over a per-user limit; Retry-After says when to come back",
    507: "the state disk is full: nothing was stored, try again once space is freed",
}

ID = Param("id", "path", {"type": "integer", "minimum": 1, "maximum": 1 << 62})
NODE = Param("name", "path", {"type": "string"}, "node name")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size")
CURSOR = Param("cursor", "query", {"type": "integer", "minimum": 1, "maximum": 1 << 62},
               "the previous page's next: ids below it")
TEXT = Stream("text/plain; charset=utf-8", "the attempt's log, bytes as written")
EVENTS = Stream("text/event-stream", "id:, event: (state, metric, tuning, overflow) and one data: line of JSON each")

OPERATIONS: tuple[Operation, ...] = (
    # ---- tasks
    Operation("submit_task", "POST", "/v1/tasks", "Submit a task", {201: views.TaskSummary, 200: views.TaskSummary},
              request=TaskSpec, errors=(403, 429)),
    Operation("list_tasks", "GET", "/v1/tasks", "List tasks, newest first", {200: views.TaskPage},
              params=(LIMIT, CURSOR, Param("state", "query", {"enum": [s.value for s in State]}),
                      Param("user", "query", {"type": "string"}, "only this user's (admins)"),
                      Param("name", "query", {"type": "string"}, "only tasks of this name"))),
    Operation("get_task", "GET", "/v1/tasks/{id}", "Show a task", {200: views.TaskView}, params=(ID,), errors=(404,)),
    Operation("cancel_task", "DELETE", "/v1/tasks/{id}", "Cancel a task", {202: views.TaskSummary},
              params=(ID,), errors=(404, 409)),
    Operation("task_logs", "GET", "/v1/tasks/{id}/logs", "Read or follow a task's log", {200: TEXT},
              params=(ID, Param("stream", "query", {"enum": ["stdout", "stderr"], "default": "stdout"}),
                      Param("follow", "query", {"enum": ["0", "1", "true", "false"], "default": "0"},
                            "keep the answer open until the attempt ends"),
                      Param("attempt", "query", {"type": "integer", "minimum": 0}, "default: the last")),
              errors=(404,)),
    # ---- nodes
    Operation("list_nodes", "GET", "/v1/nodes", "List nodes with capacity and free resources", {200: views.NodeList}),
    Operation("add_node", "POST", "/v1/nodes", "Add a node at run time", {201: views.NodeView},
              request=NodeConfig, errors=(409,), admin=True),
    Operation("get_node", "GET", "/v1/nodes/{name}", "Show a node", {200: views.NodeView},
              params=(NODE,), errors=(404,)),
    Operation("patch_node", "PATCH", "/v1/nodes/{name}", "Drain, resume or down a node", {200: views.NodeView},
              request=NodePatch, params=(NODE,), errors=(404,), admin=True),
    Operation("delete_node", "DELETE", "/v1/nodes/{name}", "Remove a node", {200: views.NodeDeleted},
              params=(NODE, Param("force", "query", {"type": "string"}, "1 or true: requeue its running tasks")),
              errors=(404, 409), admin=True),
    # ---- tunings
    Operation("create_tuning", "POST", "/v1/tunings", "Start a tuning", {201: views.TuningView},
              request=TuningDescription, errors=(403,)),
    Operation("list_tunings", "GET", "/v1/tunings", "List tunings, newest first", {200: views.TuningPage},
              params=(LIMIT, CURSOR, Param("state", "query", {"enum": list(TUNING_STATES)}))),
    Operation("get_tuning", "GET", "/v1/tunings/{id}", "Show a tuning: best, Pareto front, trials",
              {200: views.TuningView}, params=(ID,), errors=(404,)),
    Operation("cancel_tuning", "DELETE", "/v1/tunings/{id}", "Cancel a tuning and its trials",
              {202: views.TuningView}, params=(ID,), errors=(404, 409)),
    Operation("register_worker", "POST", "/v1/tunings/{id}/workers", "Register an external worker",
              {201: views.WorkerRegistered}, request=WorkerBody, body_required=False, params=(ID,),
              errors=(404, 409)),
    Operation("suggest", "POST", "/v1/tunings/{id}/suggest", "The next configuration for a worker",
              {200: views.WorkerSuggestion}, request=SuggestBody, params=(ID,), errors=(404, 409)),
    Operation("observe", "POST", "/v1/tunings/{id}/observations", "Report a worker's trial result",
              {200: views.TrialView}, request=ObservationBody, params=(ID,), errors=(404, 409)),
    Operation("should_stop", "POST", "/v1/tunings/{id}/trials/{tid}/should-stop",
              "Report an intermediate value; ask whether to stop the trial", {200: views.StopDecision},
              request=ShouldStopBody, params=(ID, Param("tid", "path", ID.schema, "trial id")), errors=(404, 409)),
    # ---- pipelines
    Operation("solve_pipeline", "POST", "/v1/pipelines/solve", "Variant, batch and replicas per stage for a load",
              {200: Decision}, request=SolveRequest),
    Operation("register_pipeline", "POST", "/v1/pipelines", "Register a pipeline and start its adaptation loop",
              {201: views.PipelineView}, request=Registration),
    Operation("list_pipelines", "GET", "/v1/pipelines", "List pipelines, newest first", {200: views.PipelinePage},
              params=(LIMIT, CURSOR, Param("state", "query", {"enum": list(PIPELINE_STATES)}))),
    Operation("get_pipeline", "GET", "/v1/pipelines/{id}", "Show a pipeline and its last adaptations",
              {200: views.PipelineView},
              params=(ID, Param("limit", "query", {"type": "integer", "minimum": 0, "maximum": 10_000, "default": 20},
                                "adaptations shown")), errors=(404,)),
    Operation("stop_pipeline", "DELETE", "/v1/pipelines/{id}", "Stop a pipeline's loop",
              {202: views.PipelineView}, params=(ID,), errors=(404, 409)),
    # ---- events (Server-Sent Events)
    Operation("all_events", "GET", "/v1/events", "Follow every event the caller may see", {200: EVENTS},
              params=(Param("task", "query", {"type": "integer", "minimum": 1, "maximum": 1 << 62},
                            "only this task's events"),
                      Param("types", "query", {"type": "string"}, "comma list of state, metric, tuning")),
              errors=(404,)),
    Operation("task_events", "GET", "/v1/tasks/{id}/events", "A task's history, then its live events",
              {200: EVENTS}, params=(ID,), errors=(404,)),
    # ---- the daemon
    Operation("metrics", "GET", "/metrics", "Prometheus metrics", {200: Stream(CONTENT_TYPE_LATEST, "text format")}),
    Operation("healthz", "GET", "/healthz", "The daemon is up", {200: views.Health}),
    Operation("openapi", "GET", "/v1/openapi.json", "This document",
              {200: Stream(JSON, "the OpenAPI 3.1 document of this API")}),
)


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, plus the strings a model serializes infinities and NaN as."""

    def float_schema(self, schema) -> dict[str, Any]:
        out = super().float_schema(schema)
        if self.mode == "serialization" and self._config.ser_json_inf_nan == "strings":
            return {"anyOf": [out, {"enum": ["Infinity", "-Infinity", "NaN"]}]}
        return out


def error_statuses(op: Operation) -> list[int]:
    """Every error status an operation may answer, sorted."""
    out = set(op.errors)
    if op.request is not None:
        out |= {400, 413, 422}
    if op.params:
        out.add(400)
    if op.path not in OPEN_PATHS:
        out.add(401)
    if op.admin:
        out.add(403)
    if op.method != "GET":  # every change is written first; a full state disk refuses it
        out.add(507)
    return sorted(out)


def _schemas() -> tuple[dict[tuple[type, str], dict[str, Any]], dict[str, Any]]:
    """JSON Schemas of every model in the table; shared definitions become components."""
    pairs = {(views.Error, "serialization")}
    for op in OPERATIONS:
        if op.request is not None:
            pairs.add((op.request, "validation"))
        pairs |= {(body, "serialization") for body in op.ok.values() if not isinstance(body, Stream)}
    refs, defs = models_json_schema(sorted(pairs, key=lambda p: (p[0].__name__, p[1])),
                                    ref_template=REF, schema_generator=_Generator)
    return refs, defs.get("$defs", {})


def _content(body: type[BaseModel] | Stream, refs: dict) -> dict[str, Any]:
    if isinstance(body, Stream):
        return {body.content_type: {"schema": {"type": "object" if body.content_type == JSON else "string"}}}
    return {JSON: {"schema": refs[(body, "serialization")]}}


def links(op: Operation) -> dict[str, Any]:
    """OpenAPI links from a creating POST to the routes under what it created (``/v1/tasks/{id}``...)."""
    if op.method != "POST" or 201 not in op.ok:
        return {}
    out = {}
    for other in OPERATIONS:
        if other.path.startswith(op.path + "/{"):
            param = other.path[len(op.path) + 2:].split("}")[0]  # the answer names it alike: id, name
            out[other.name] = {"operationId": other.name, "parameters": {param: f"$response.body#/{param}"}}
    return out


def _operation(op: Operation, refs: dict) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, body in sorted(op.ok.items()):
        text = body.description if isinstance(body, Stream) else (body.__doc__ or body.__name__).split("\n")[0]
        responses[str(status)] = {"description": text, "content": _content(body, refs)}
    if links(op):
        responses["201"]["links"] = links(op)
    for status in error_statuses(op):
        responses[str(status)] = {"description": ERRORS[status], "content": _content(views.Error, refs)}
    out: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "responses": responses}
    if op.params:
        out["parameters"] = [{"name": p.name, "in": p.where, "required": p.where == "path",
                              "schema": p.schema, **({"description": p.description} if p.description else {})}
                             for p in op.params]
    if op.request is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {JSON: {"schema": refs[(op.request, "validation")]}}}
    if op.path in OPEN_PATHS:
        out["security"] = []  # answered without a token even when auth is on
    return out


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation in the table."""
    refs, defs = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "oaasd", "version": version("oaasd"),
                 "description": "Optimization as a Service for a cluster. Errors are always "
                                "{error, message, detail: [{field, problem}]}."},
        "components": {"schemas": defs,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


@functools.cache
def document_text() -> str:
    """The document as JSON text, built once per process."""
    return json.dumps(document())


routes = web.RouteTableDef()


@routes.get("/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """Serve the OpenAPI document."""
    return web.Response(text=document_text(), content_type=JSON)
