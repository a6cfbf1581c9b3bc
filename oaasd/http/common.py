"""What every handler shares: the services bundle, errors as JSON, bodies and parameters, paging.

Handlers see the daemon's parts only through ``request.app[SERVICES]``, a
frozen bundle of the components and verbs they use; only the app factory
(``oaasd.http.app``) knows the daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from oaasd.config import Settings
from oaasd.errors import (
    InvalidRequestError,
    OaasError,
    RequestTimeoutError,
    TooLargeError,
)
from oaasd.models import parse_model
from oaasd.pipeline.loop import Pipelines
from oaasd.service.auth import Users
from oaasd.service.callbacks import Callbacks
from oaasd.service.events import EventHub
from oaasd.service.intake import Intake
from oaasd.service.nodes import NodeAdmin
from oaasd.service.views import Views
from oaasd.store.db import Store
from oaasd.tuning.driver import Tunings
from oaasd.tuning.workers import Workers

__all__ = ["SERVICES", "Services", "choice_param", "error_middleware", "int_param", "json_response", "page",
           "parse_model", "read_body"]

log = logging.getLogger("oaasd.api")


@dataclass(frozen=True)
class Services:
    """The parts of one daemon the handlers use."""

    settings: Settings
    store: Store  # reads only: tasks, history, owners, schema version
    intake: Intake
    views: Views
    users: Users
    callbacks: Callbacks
    nodes: NodeAdmin
    tunings: Tunings
    workers: Workers
    pipelines: Pipelines
    events: EventHub
    scrape_metrics: Callable[[], Awaitable[Any]]  # refreshes the gauges, returns the registry
    counts: Callable[[], tuple[int, int]]  # (running, pending) for /healthz


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


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
    server = request.app[SERVICES].settings.server
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


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One page of a listing, newest first: ``next`` is the cursor of the following page (None at the end)."""
    return {"items": items, "next": str(items[-1]["id"]) if len(items) == limit else None}
