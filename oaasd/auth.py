"""Who is calling: users, tokens and roles.

Handlers never read tokens. The auth middleware (added to the app in
``create_app``) sets ``request["caller"]``; handlers ask ``caller(request)``
and check ownership with ``may_see`` / ``require_owner`` / ``require_admin``.
With auth turned off (loopback only), every caller is the anonymous admin.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .errors import ForbiddenError, NotFoundError


@dataclass(frozen=True, slots=True)
class Caller:
    """The user behind a request."""

    name: str
    admin: bool


ANONYMOUS = Caller("anonymous", admin=True)


def caller(request: web.Request) -> Caller:
    """The caller of a request (the anonymous admin when auth is off)."""
    return request.get("caller", ANONYMOUS)


def may_see(who: Caller, owner: str) -> bool:
    """True when ``who`` may see and act on something owned by ``owner``."""
    return who.admin or who.name == owner


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
