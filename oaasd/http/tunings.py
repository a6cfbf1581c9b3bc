"""Tunings over HTTP: create, list, show (best, Pareto front, trials), cancel; external workers' routes.

Only a tuning's owner (or an admin) sees it or acts on it; to anyone else it
does not exist (404).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, StrictInt

from oaasd.errors import ConflictError, ForbiddenError, ValidationFailedError
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
from oaasd.models import Strict, TaskSpec
from oaasd.tuning.description import Name
from oaasd.tuning.trials import parse_description
from oaasd.states import TuningState

routes = web.RouteTableDef()

TUNING_STATES = tuple(TuningState)
Finite = Annotated[float, Field(allow_inf_nan=False)]
Id = Annotated[StrictInt, Field(ge=1, le=1 << 62)]  # SQLite holds 64-bit integers


class WorkerBody(Strict):
    """``POST /v1/tunings/{id}/workers``: an optional label for the worker."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class SuggestBody(Strict):
    """``POST /v1/tunings/{id}/suggest``."""

    worker_id: Id


class ObservationBody(Strict):
    """``POST /v1/tunings/{id}/observations``: the result of one suggested trial."""

    trial_id: Id
    state: Literal["SUCCEEDED", "FAILED"] = "SUCCEEDED"
    objectives: dict[Name, Finite] = {}
    constraints: dict[Name, Finite] = {}
    metrics: dict[Name, Finite] = {}
    elapsed_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class ShouldStopBody(Strict):
    """``POST /v1/tunings/{id}/trials/{tid}/should-stop``: one intermediate value (or metrics holding it)."""

    step: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    value: Finite | None = None
    metrics: dict[Name, Finite] | None = None


def owner_of(request: web.Request, template: TaskSpec | None) -> str:
    """Who owns a new tuning: the caller, or the template's ``user`` when an admin names one (403 otherwise)."""
    who = auth.caller(request)
    wanted = template.user if template is not None and "user" in template.model_fields_set else who.name
    if wanted != who.name and not who.admin:
        raise ForbiddenError(f"user {who.name!r} may not create tunings for {wanted!r}",
                             [{"field": "trial.user", "problem": "only admins act for other users"}])
    return wanted


async def owned(request: web.Request) -> int:
    """The id of the tuning in the path, 404 unless the caller may see it."""
    tuning_id = int_param(request, "id", lo=1)
    row = await request.app[SERVICES].tunings.row(tuning_id)
    auth.require_owner(request, row["user"], f"tuning {tuning_id}")
    return tuning_id


@routes.post("/v1/tunings")
async def create_tuning(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    raw, desc, template = parse_description(await read_body(request))
    tuning_id = await s.tunings.create(raw, desc, template, owner_of(request, template))
    return json_response(await s.tunings.view(tuning_id), 201, {"Location": f"/v1/tunings/{tuning_id}"})


@routes.get("/v1/tunings")
async def list_tunings(request: web.Request) -> web.Response:
    tunings = request.app[SERVICES].tunings
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = int_param(request, "cursor", None, 1)
    state = choice_param(request, "state", TUNING_STATES)
    items = await tunings.summaries(state=state, user=auth.owner_filter(request), before=cursor, limit=limit)
    return json_response(page(items, limit))


@routes.get("/v1/tunings/{id}")
async def get_tuning(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    return json_response(await s.tunings.view(await owned(request)))


@routes.delete("/v1/tunings/{id}")
async def cancel_tuning(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    tuning_id = await owned(request)
    cancelled = await s.tunings.cancel(tuning_id)
    view = await s.tunings.view(tuning_id)
    if not cancelled:
        raise ConflictError(f"tuning {tuning_id} already ended {view['state']}",
                            [{"field": "state",
                              "problem": f"tuning is {view['state']}; only RUNNING tunings can be cancelled"}])
    return json_response(view, status=202)


# ---- external workers ------------------------------------------------
@routes.post("/v1/tunings/{id}/workers")
async def register_worker(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    tuning_id = await owned(request)
    body = await read_body(request)
    name = parse_model(WorkerBody, body).name if body.strip() else None
    return json_response(await s.workers.register(tuning_id, name), 201)


@routes.post("/v1/tunings/{id}/suggest")
async def suggest(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    tuning_id = await owned(request)
    body = parse_model(SuggestBody, await read_body(request))
    return json_response(await s.workers.suggest(tuning_id, body.worker_id))


@routes.post("/v1/tunings/{id}/observations")
async def observe(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    tuning_id = await owned(request)
    body = parse_model(ObservationBody, await read_body(request))
    metrics: dict[str, Any] = {**body.metrics, **body.constraints, **body.objectives}
    view = await s.workers.observe(tuning_id, body.trial_id, body.state, metrics, body.elapsed_s)
    return json_response(view)


@routes.post("/v1/tunings/{id}/trials/{tid}/should-stop")
async def should_stop(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    tuning_id = await owned(request)
    trial_id = int_param(request, "tid", lo=1)
    body = parse_model(ShouldStopBody, await read_body(request))
    if (body.value is None) == (body.metrics is None):
        raise ValidationFailedError("invalid should-stop report", [
            {"field": "value", "problem": "give exactly one of 'value' or 'metrics'"}])
    return json_response(await s.workers.should_stop(tuning_id, trial_id, body.step, body.value,
                                                             body.metrics))
