"""Node administration over HTTP: add, show, drain/resume/down, delete."""

from __future__ import annotations

import time
from typing import Literal

from aiohttp import web
from pydantic import Field, model_validator

from oaasd.config import NodeConfig
from oaasd.errors import ConflictError, NotFoundError
from oaasd.http.tasks import DAEMON, json_response, parse_model, read_body, running_on
from oaasd.models import Strict
from oaasd.service import auth
from oaasd.service.cluster import Intent

routes = web.RouteTableDef()


class NodePatch(Strict):
    """``PATCH /v1/nodes/{name}``: an admin's intent for the node."""

    state: Literal["DRAIN", "RESUME", "DOWN"]
    reason: str | None = Field(None, min_length=1, max_length=500)

    @model_validator(mode="after")
    def _reason(self) -> "NodePatch":
        if self.state != "RESUME" and not self.reason:
            raise ValueError(f"a reason is required to {self.state} a node")
        return self


def node_name(request: web.Request) -> str:
    """The node named in the path, 404 when unknown."""
    name = request.match_info["name"]
    if name not in request.app[DAEMON].cluster.nodes:
        raise NotFoundError(f"no node {name!r}", [{"field": "name", "problem": "unknown node"}])
    return name


def node_view(request: web.Request, name: str) -> dict:
    d = request.app[DAEMON]
    return {**d.cluster.view(name), **running_on(request, d.runner.on_node(name)),
            "probe": d.health.probes.get(name)}



@routes.post("/v1/nodes")
async def add_node(request: web.Request) -> web.Response:
    auth.require_admin(request)
    d = request.app[DAEMON]
    cfg = parse_model(NodeConfig, await read_body(request))
    if cfg.name in d.cluster.nodes:
        raise ConflictError(f"node {cfg.name!r} exists", [{"field": "name", "problem": "already exists"}])
    await d.store.save_node(cfg.name, cfg.model_dump(mode="json"), "api")
    d.cluster.add_node(cfg)
    d.node_added(cfg)
    d.wake_scheduler()
    return json_response(node_view(request, cfg.name), 201, {"Location": f"/v1/nodes/{cfg.name}"})


@routes.get("/v1/nodes/{name}")
async def get_node(request: web.Request) -> web.Response:
    return json_response(node_view(request, node_name(request)))


@routes.patch("/v1/nodes/{name}")
async def patch_node(request: web.Request) -> web.Response:
    auth.require_admin(request)
    d = request.app[DAEMON]
    name = node_name(request)
    patch = parse_model(NodePatch, await read_body(request))
    who = auth.caller(request).name
    intent = None if patch.state == "RESUME" else Intent(patch.state, patch.reason, who, time.time())
    await d.store.set_node_intent(name, intent and intent.state, intent and intent.reason,
                                  intent and intent.user, intent and intent.at)
    d.cluster.set_intent(name, intent)
    if patch.state == "DOWN":  # Slurm's DOWN: the work on it is requeued elsewhere
        for task_id in d.runner.on_node(name):
            await d.runner.cancel(task_id, f"node {name} set DOWN: {patch.reason}", requeue=True)
    d.wake_scheduler()
    return json_response(node_view(request, name))


@routes.delete("/v1/nodes/{name}")
async def delete_node(request: web.Request) -> web.Response:
    auth.require_admin(request)
    d = request.app[DAEMON]
    name = node_name(request)
    force = request.query.get("force") in ("1", "true")
    running = d.runner.on_node(name)
    if running and not force:
        raise ConflictError(f"node {name!r} has {len(running)} running attempt(s); use ?force=1 to requeue them",
                            [{"field": "name", "problem": "attempts running", "tasks": running}])
    d.cluster.set_intent(name, Intent("DOWN", "being deleted", auth.caller(request).name, time.time()))
    for task_id in running:
        await d.runner.cancel(task_id, f"node {name} deleted", requeue=True)
    for run in [d.runner.runs[t] for t in running if t in d.runner.runs]:
        await run.done.wait()
    await d.store.save_node(name, None, "deleted")
    await d.store.set_node_intent(name, None, None, None, None)
    d.cluster.remove_node(name)
    d.wake_scheduler()
    return json_response({"name": name, "deleted": True, "requeued": running})
