"""Pipeline optimisation over HTTP: a one-shot solve for a given load."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .api import json_response, parse_model, read_body

routes = web.RouteTableDef()


@routes.post("/v1/pipelines/solve")
async def solve(request: web.Request) -> web.Response:
    """Variant, batch and replicas per stage for ``load_rps`` under the SLO."""
    from .pipeline import SolveRequest
    from .pipeline.solver import solve_request
    body = parse_model(SolveRequest, await read_body(request))
    # The exact solver takes tens of ms on 8 stages (bench/RESULTS-pipeline.md): keep it off the loop.
    decision = await asyncio.get_running_loop().run_in_executor(None, solve_request, body)
    return web.Response(text=decision.model_dump_json(), content_type="application/json")
