"""HTTP API v1: thin handlers over the daemon; errors become JSON at this edge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from oaasd.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    OaasError,
    RateLimitedError,
    RequestTimeoutError,
    TooLargeError,
    ValidationFailedError,
    pydantic_detail,
)
from oaasd.models import TaskSpec
from oaasd.service import auth
from oaasd.states import State

if TYPE_CHECKING:
    from oaasd.service.daemon import Daemon

log = logging.getLogger("oaasd.api")
DAEMON: web.AppKey["Daemon"] = web.AppKey("daemon")
routes = web.RouteTableDef()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Answer ``data`` as JSON."""
    return web.Response(text=json.dumps(data), status=status, content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Turn every error into a JSON body; never answer a bare 500 page."""
    try:
        return await handler(request)
    except OaasError as exc:
        return json_response(exc.body(), status=exc.status, headers=exc.headers() or None)
    except web.HTTPRequestEntityTooLarge:
        return json_response(TooLargeError("request body too large", [{"field": "body", "problem": "too large"}]).body(), 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason.replace(" ", "")
        body = {"error": reason, "message": exc.reason, "detail": [{"field": "path", "problem": exc.reason}]}
        return json_response(body, status=exc.status, headers={k: v for k, v in exc.headers.items() if k == "Allow"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": "InternalError", "message": "internal error", "detail": []}, status=500)


async def read_body(request: web.Request) -> bytes:
    """Return the raw body, refusing oversized ones with 413 and slow ones with 408."""
    server = request.app[DAEMON].settings.server
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"body of {request.content_length} bytes exceeds {limit}",
                            [{"field": "body", "problem": f"larger than {limit} bytes"}])
    try:
        async with asyncio.timeout(server.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {server.body_timeout_s:g}s",
                                  [{"field": "body", "problem": "sent too slowly"}]) from None


def parse_model(model, body: bytes, **context):
    """Validate a JSON body against a pydantic model (strict types)."""
    try:
        return model.model_validate_json(body or b"null", strict=True, context=context or None)
    except ValidationError as exc:
        detail = pydantic_detail(exc)
        if any(d["type"] == "json_invalid" for d in detail):
            raise InvalidRequestError("body is not valid JSON", detail) from None
        if any(d["type"] == "model_type" and d["field"] == "body" for d in detail) or body.strip() in (b"", b"null"):
            raise InvalidRequestError("body must be a JSON object", [{"field": "body", "problem": "expected a JSON object"}]) from None
        raise ValidationFailedError(f"invalid {model.__name__}", detail) from None


def int_param(request: web.Request, name: str, default: int | None = None, lo: int = 0, hi: int = 1 << 62) -> int | None:
    """Read an integer query or path parameter, 400 naming it when bad."""
    raw = request.match_info.get(name, request.query.get(name))
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:  # isdigit() alone passes "²"
        raise InvalidRequestError(f"{name} must be an integer in {lo}..{hi}",
                                  [{"field": name, "problem": f"expected an integer in {lo}..{hi}, got {raw[:40]!r}"}])
    return int(raw)


def choice_param(request: web.Request, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    """Read a query parameter restricted to ``choices``."""
    raw = request.query.get(name, default)
    if raw is not None and raw not in choices:
        raise InvalidRequestError(f"{name} must be one of {', '.join(choices)}",
                                  [{"field": name, "problem": f"expected one of {list(choices)}, got {raw[:40]!r}"}])
    return raw


# ---- tasks ----------------------------------------------------------
@routes.post("/v1/tasks")
async def submit_task(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    spec = parse_model(TaskSpec, await read_body(request))
    if spec.trial_config is not None:  # only the tuning driver launches trials
        raise ValidationFailedError("invalid TaskSpec", [{"field": "trial_config", "type": "forbidden",
                                                          "problem": "set by the daemon for tuning trials only"}])
    async with admit(request, spec) as spec:
        d.callbacks.check_url(spec.callback_url, spec.user)  # 422 when the owner's outbound policy forbids it
        task_id, created, view = await d.submit(spec)
    return json_response(view, status=201 if created else 200, headers={"Location": f"/v1/tasks/{task_id}"})


@contextlib.asynccontextmanager
async def admit(request: web.Request, spec: TaskSpec):
    """Charge a submission to its owner through the one admission seam (403 for another's, 429 over a limit).

    Yields the spec to submit (owned by the caller unless an admin named
    another user). Submissions still in flight count against ``max_pending``,
    so concurrent ones cannot overshoot.
    """
    d = request.app[DAEMON]
    who = auth.caller(request)
    if d.users.on and "user" in spec.model_fields_set and spec.user != who.name and not who.admin:
        raise ForbiddenError(f"user {who.name!r} may not submit as {spec.user!r}",
                             [{"field": "user", "problem": "only admins submit for other users"}])
    if d.users.on and "user" not in spec.model_fields_set:
        spec = spec.model_copy(update={"user": who.name})
    async with d.users.admission(spec.user, 1, d.store.count_pending) as grant:
        if grant.refusal is not None:
            raise grant.refusal
        yield spec


async def task_row(request: web.Request) -> dict[str, Any]:
    """The task named in the path, 404 unless the caller may see it."""
    row = await request.app[DAEMON].store.get_task(int_param(request, "id", lo=1))
    auth.require_owner(request, row["user"], f"task {row['id']}")
    return row


@routes.get("/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = int_param(request, "cursor", None, 1)
    state = choice_param(request, "state", tuple(s.value for s in State))
    user = auth.owner_filter(request) or request.query.get("user")
    name = request.query.get("name")
    rows = await d.store.list_tasks(state=state, user=user, name=name, before=cursor, limit=limit)
    items = [d.summarize(r) for r in rows]
    nxt = str(rows[-1]["id"]) if len(rows) == limit else None
    return json_response({"items": items, "next": nxt})


@routes.get("/v1/tasks/{id}")
async def get_task(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    return json_response(await d.task_view((await task_row(request))["id"]))


@routes.delete("/v1/tasks/{id}")
async def cancel_task(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    task_id = (await task_row(request))["id"]
    cancelled = await d.cancel(task_id)
    summary = await d.task_summary(task_id)
    if not cancelled:  # as scancel on a completed job: nothing was changed
        raise ConflictError(f"task {task_id} already ended {summary['state']}",
                            [{"field": "state", "problem": f"task is {summary['state']}; "
                                                           "only PENDING or RUNNING tasks can be cancelled"}])
    return json_response(summary, status=202)


@routes.get("/v1/tasks/{id}/logs")
async def task_logs(request: web.Request) -> web.StreamResponse:
    d = request.app[DAEMON]
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
        seq = await d.wait_first_attempt(task_id)
        if seq == 0:
            return resp
    path = d.runner.attempt_dir(task_id, seq) / f"{stream}.log"
    offset = 0
    while True:
        offset = await _send_new(resp, path, offset)
        if not follow or await d.attempt_over(task_id, seq):
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


# ---- nodes and health -----------------------------------------------
@routes.get("/v1/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    running = d.runner.by_node()
    return json_response({"items": [{**v, **running_on(request, running.get(v["name"], []))}
                                    for v in d.cluster.views()]})


def running_on(request: web.Request, task_ids: list[int]) -> dict[str, Any]:
    """A node's running tasks as its caller may see them: every id for admins,
    only their own for users (with the count of all, which tells load, not whose)."""
    who = auth.caller(request)
    runs = request.app[DAEMON].runner.runs
    mine = [t for t in task_ids if who.admin or (t in runs and runs[t].spec.user == who.name)]
    return {"running": sorted(mine), "running_count": len(task_ids)}


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    return json_response({"status": "ok", "schema_version": await d.store.schema_version(),
                          "running": len(d.runner.runs), "pending": d.scheduler.queue_length})

