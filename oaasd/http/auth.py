"""Authentication and ownership at the HTTP edge.

The auth middleware names the caller of every request (``request["caller"]``)
with the daemon's ``Users``; handlers never read tokens: they ask
``caller(request)`` and check ownership with ``require_owner`` /
``require_admin``. With auth turned off (loopback only), every caller is the
anonymous admin.
"""

from __future__ import annotations

from aiohttp import web

from oaasd.errors import ForbiddenError, NotFoundError
from oaasd.service.auth import ANONYMOUS, Caller, Users, may_see

OPEN_PATHS = frozenset({"/healthz", "/v1/openapi.json"})


def caller(request: web.Request) -> Caller:
    """The caller of a request (the anonymous admin when auth is off)."""
    return request.get("caller", ANONYMOUS)


def require_owner(request: web.Request, owner: str, what: str) -> None:
    """Refuse with 404 when the caller may not see ``what`` (its existence is not revealed)."""
    if not may_see(caller(request), owner):
        raise NotFoundError(f"no {what}", [{"field": "id", "problem": f"unknown {what.split()[0]} id"}])


def require_admin(request: web.Request) -> None:
    """Refuse with 403 unless the caller is an admin."""
    who = caller(request)
    if not who.admin:
        raise ForbiddenError(f"user {who.name!r} is not an admin",
                             [{"field": "Authorization", "problem": "admin role required"}])


def owner_filter(request: web.Request) -> str | None:
    """The user to restrict a listing to: None for admins, the caller otherwise."""
    who = caller(request)
    return None if who.admin else who.name


def auth_middleware(users: Users):
    """Middleware naming the caller of every request (401 without a valid token when auth is on).

    ``users`` is updated in place by a reload.
    """
    @web.middleware
    async def authenticate(request: web.Request, handler):
        if request.path not in OPEN_PATHS:
            request["caller"] = users.authenticate(request.headers.get("Authorization"))
        return await handler(request)
    return authenticate
