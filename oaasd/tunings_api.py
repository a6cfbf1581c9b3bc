"""Tunings over HTTP: create, list, show (best, Pareto front, trials), cancel."""

from __future__ import annotations

from aiohttp import web

from .api import DAEMON, choice_param, int_param, json_response, read_body
from .tunings import parse_description, summarize

routes = web.RouteTableDef()

TUNING_STATES = ("RUNNING", "COMPLETED", "FAILED", "CANCELLED")


@routes.post("/v1/tunings")
async def create_tuning(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    raw, desc, template = parse_description(await read_body(request))
    tuning_id = await d.tunings.create(raw, desc, template)
    return json_response(await d.tunings.view(tuning_id), 201, {"Location": f"/v1/tunings/{tuning_id}"})


@routes.get("/v1/tunings")
async def list_tunings(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = int_param(request, "cursor", None, 1)
    state = choice_param(request, "state", TUNING_STATES)
    rows = await d.store.list_tunings(state=state, before=cursor, limit=limit)
    nxt = str(rows[-1]["id"]) if len(rows) == limit else None
    return json_response({"items": [summarize(r) for r in rows], "next": nxt})


@routes.get("/v1/tunings/{id}")
async def get_tuning(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    return json_response(await d.tunings.view(int_param(request, "id", lo=1)))


@routes.delete("/v1/tunings/{id}")
async def cancel_tuning(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    tuning_id = int_param(request, "id", lo=1)
    await d.tunings.cancel(tuning_id)
    return json_response(await d.tunings.view(tuning_id), status=202)
