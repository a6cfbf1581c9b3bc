"""Pipelines over HTTP: a one-shot solve, and the adaptation loops (register, list, show, stop)."""

from __future__ import annotations

from aiohttp import web

from oaasd.errors import ConflictError, ForbiddenError
from oaasd.http import auth
from oaasd.http.common import (
    SERVICES,
    choice_param,
    int_param,
    json_response,
    page,
    parse_model,
    read_body,
)
from oaasd.pipeline import SolveRequest
from oaasd.pipeline.actuators import CommandActuator, TasksActuator
from oaasd.pipeline.loop import STATES, Registration, parse_registration
from oaasd.pipeline.solver import solve_request
from oaasd.service.pools import SOLVE

routes = web.RouteTableDef()


@routes.post("/v1/pipelines/solve")
async def solve(request: web.Request) -> web.Response:
    """Variant, batch and replicas per stage for ``load_rps`` under the SLO."""
    body = parse_model(SolveRequest, await read_body(request))
    # The exact solver takes tens of ms on 8 stages (bench/RESULTS-pipeline.md): keep it off the loop,
    # on a pool no load source or tuning shares.
    decision = await SOLVE.run(solve_request, body)
    return web.Response(text=decision.model_dump_json(), content_type="application/json")


@routes.post("/v1/pipelines")
async def register_pipeline(request: web.Request) -> web.Response:
    """Register a pipeline and start its adaptation loop.

    A ``command`` actuator runs on the head node as the daemon's user, outside
    any placement: only admins may register one (403 otherwise). Source and
    callback URLs the owner's outbound policy forbids as written are 422.
    """
    pipelines = request.app[SERVICES].pipelines
    reg = parse_registration(await read_body(request), pipelines.load_dir)
    if isinstance(reg.actuator, CommandActuator):
        auth.require_admin(request)
    owner = _owner(request, reg)
    pipelines.check_destinations(reg, owner)
    pipeline_id = await pipelines.create(reg, owner)
    view = await pipelines.view(await pipelines.row(pipeline_id), 0)
    return json_response(view, 201, {"Location": f"/v1/pipelines/{pipeline_id}"})


@routes.get("/v1/pipelines")
async def list_pipelines(request: web.Request) -> web.Response:
    """The caller's pipelines (every one for an admin), newest first."""
    pipelines = request.app[SERVICES].pipelines
    limit = int_param(request, "limit", 100, 1, 1000)
    items = await pipelines.summaries(user=auth.owner_filter(request), state=choice_param(request, "state", STATES),
                                      before=int_param(request, "cursor", None, 1), limit=limit)
    return json_response(page(items, limit))


@routes.get("/v1/pipelines/{id}")
async def get_pipeline(request: web.Request) -> web.Response:
    """Current configuration and the last ``limit`` adaptations, newest first."""
    pipelines = request.app[SERVICES].pipelines
    row = await _owned(request)
    return json_response(await pipelines.view(row, int_param(request, "limit", 20, 0, 10_000)))


@routes.delete("/v1/pipelines/{id}")
async def stop_pipeline(request: web.Request) -> web.Response:
    """Stop the loop (and the ``tasks`` actuator's tasks); the pipeline ends STOPPED."""
    pipelines = request.app[SERVICES].pipelines
    row = await _owned(request)
    if row["state"] != "RUNNING":
        raise ConflictError(f"pipeline {row['id']} already {row['state']}",
                            [{"field": "state",
                              "problem": f"pipeline is {row['state']}; only RUNNING pipelines can be stopped"}])
    await pipelines.delete(row["id"])
    return json_response(await pipelines.view(await pipelines.row(row["id"]), 20), status=202)


def _owner(request: web.Request, reg: Registration) -> str:
    """Who owns a new pipeline: the caller, or the replica template's ``user`` an admin names (403 for others)."""
    who = auth.caller(request)
    template = reg.actuator.template if isinstance(reg.actuator, TasksActuator) else None
    wanted = template.user if template is not None and "user" in template.model_fields_set else who.name
    if wanted != who.name and not who.admin:
        raise ForbiddenError(f"user {who.name!r} may not create pipelines for {wanted!r}",
                             [{"field": "actuator.tasks.template.user", "problem": "only admins act for other users"}])
    return wanted


async def _owned(request: web.Request) -> dict:
    """The pipeline named in the path, 404 when unknown or not the caller's."""
    pipeline_id = int_param(request, "id", lo=1)
    row = await request.app[SERVICES].pipelines.row(pipeline_id)
    auth.require_owner(request, row["user"], f"pipeline {pipeline_id}")
    return row
