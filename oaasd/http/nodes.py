"""Nodes over HTTP: list, add, show, drain/resume/down, delete (the verbs are ``NodeAdmin``'s)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import Field, model_validator

from oaasd.config import NodeConfig
from oaasd.http import auth
from oaasd.http.common import SERVICES, json_response, parse_model, read_body
from oaasd.models import Strict

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


def running_on(request: web.Request, task_ids: list[int]) -> dict[str, Any]:
    """A node's running tasks as its caller may see them: every id for admins,
    only their own for users (with the count of all, which tells load, not whose)."""
    who = auth.caller(request)
    nodes = request.app[SERVICES].nodes
    mine = [t for t in task_ids if who.admin or nodes.owner_of_run(t) == who.name]
    return {"running": sorted(mine), "running_count": len(task_ids)}


def node_view(request: web.Request, name: str) -> dict[str, Any]:
    """One node as its caller may see it: state, resources, its running tasks, the last probe."""
    nodes = request.app[SERVICES].nodes
    return {**nodes.view(name), **running_on(request, nodes.running_on(name))}


def node_name(request: web.Request) -> str:
    """The node named in the path, 404 when unknown."""
    return request.app[SERVICES].nodes.check(request.match_info["name"])


@routes.get("/v1/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    nodes = request.app[SERVICES].nodes
    running = nodes.running_by_node()
    return json_response({"items": [{**v, **running_on(request, running.get(v["name"], []))}
                                    for v in nodes.views()]})


@routes.post("/v1/nodes")
async def add_node(request: web.Request) -> web.Response:
    auth.require_admin(request)
    cfg = parse_model(NodeConfig, await read_body(request))
    await request.app[SERVICES].nodes.add(cfg)
    return json_response(node_view(request, cfg.name), 201, {"Location": f"/v1/nodes/{cfg.name}"})


@routes.get("/v1/nodes/{name}")
async def get_node(request: web.Request) -> web.Response:
    return json_response(node_view(request, node_name(request)))


@routes.patch("/v1/nodes/{name}")
async def patch_node(request: web.Request) -> web.Response:
    auth.require_admin(request)
    name = node_name(request)
    patch = parse_model(NodePatch, await read_body(request))
    await request.app[SERVICES].nodes.set_intent(name, patch.state, patch.reason, auth.caller(request).name)
    return json_response(node_view(request, name))


@routes.delete("/v1/nodes/{name}")
async def delete_node(request: web.Request) -> web.Response:
    auth.require_admin(request)
    name = node_name(request)
    force = request.query.get("force") in ("1", "true")
    requeued = await request.app[SERVICES].nodes.delete(name, force, auth.caller(request).name)
    return json_response({"name": name, "deleted": True, "requeued": requeued})
