"""Tasks over HTTP: submit, list, show, cancel, logs; and ``/healthz``.

Thin handlers over the services bundle: parse and check at this edge,
then one verb (``intake``, ``views``); errors become JSON in the middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

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
from oaasd.models import TaskSpec
from oaasd.states import State

routes = web.RouteTableDef()


@routes.post("/v1/tasks")
async def submit_task(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    spec = parse_model(TaskSpec, await read_body(request))
    if spec.trial_config is not None:  # only the tuning driver launches trials
        raise ValidationFailedError("invalid TaskSpec", [{"field": "trial_config", "type": "forbidden",
                                                          "problem": "set by the daemon for tuning trials only"}])
    async with admit(request, spec) as spec:
        s.callbacks.check_url(spec.callback_url, spec.user)  # 422 when the owner's outbound policy forbids it
        task_id, created, submitted_at = await s.intake.submit(spec)
    view = s.views.new_task_summary(task_id, spec, submitted_at) if created else await s.views.task_summary(task_id)
    return json_response(view, status=201 if created else 200, headers={"Location": f"/v1/tasks/{task_id}"})


@contextlib.asynccontextmanager
async def admit(request: web.Request, spec: TaskSpec):
    """Charge a submission to its owner through the one admission seam (403 for another's, 429 over a limit).

    Yields the spec to submit (owned by the caller unless an admin named
    another user). Submissions still in flight count against ``max_pending``,
    so concurrent ones cannot overshoot.
    """
    s = request.app[SERVICES]
    who = auth.caller(request)
    if s.users.on and "user" in spec.model_fields_set and spec.user != who.name and not who.admin:
        raise ForbiddenError(f"user {who.name!r} may not submit as {spec.user!r}",
                             [{"field": "user", "problem": "only admins submit for other users"}])
    if s.users.on and "user" not in spec.model_fields_set:
        spec = spec.model_copy(update={"user": who.name})
    async with s.users.admission(spec.user, 1, s.store.count_pending) as grant:
        if grant.refusal is not None:
            raise grant.refusal
        yield spec


async def task_row(request: web.Request) -> dict[str, Any]:
    """The task named in the path, 404 unless the caller may see it."""
    row = await request.app[SERVICES].store.get_task(int_param(request, "id", lo=1))
    auth.require_owner(request, row["user"], f"task {row['id']}")
    return row


@routes.get("/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = int_param(request, "cursor", None, 1)
    state = choice_param(request, "state", tuple(st.value for st in State))
    user = auth.owner_filter(request) or request.query.get("user")
    name = request.query.get("name")
    rows = await s.store.list_tasks(state=state, user=user, name=name, before=cursor, limit=limit)
    return json_response(page([s.views.summarize(r) for r in rows], limit))


@routes.get("/v1/tasks/{id}")
async def get_task(request: web.Request) -> web.Response:
    views = request.app[SERVICES].views
    return json_response(await views.task_view((await task_row(request))["id"]))


@routes.delete("/v1/tasks/{id}")
async def cancel_task(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    task_id = (await task_row(request))["id"]
    cancelled = await s.intake.cancel(task_id)
    summary = await s.views.task_summary(task_id)
    if not cancelled:  # as scancel on a completed job: nothing was changed
        raise ConflictError(f"task {task_id} already ended {summary['state']}",
                            [{"field": "state", "problem": f"task is {summary['state']}; "
                                                           "only PENDING or RUNNING tasks can be cancelled"}])
    return json_response(summary, status=202)


@routes.get("/v1/tasks/{id}/logs")
async def task_logs(request: web.Request) -> web.StreamResponse:
    views = request.app[SERVICES].views
    row = await task_row(request)
    task_id = row["id"]
    stream = choice_param(request, "stream", ("stdout", "stderr"), "stdout")
    follow = choice_param(request, "follow", ("0", "1", "true", "false"), "0") in ("1", "true")
    seq = int_param(request, "attempt", row["attempts"], 0, max(row["attempts"], 0))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    if seq == 0:
        if not follow:
            return resp
        seq = await views.wait_first_attempt(task_id)
        if seq == 0:
            return resp
    path = views.log_path(task_id, seq, stream)
    offset = 0
    while True:
        offset = await _send_new(resp, path, offset)
        if not follow or views.attempt_over(task_id, seq):
            await _send_new(resp, path, offset)
            break
        await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


async def _send_new(resp: web.StreamResponse, path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(1 << 16):
                await resp.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        pass
    return offset


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    running, pending = s.counts()
    return json_response({"status": "ok", "schema_version": await s.store.schema_version(),
                          "running": running, "pending": pending})
