"""Domain errors, each carrying its HTTP status and a reason code.

Errors are data until the edge: the API's error middleware turns them into
``{"error": reason, "message": ..., "detail": [...]}`` bodies.
"""

from __future__ import annotations

import math
from typing import Any


class OaasError(Exception):
    """Base of every error oaasd reports on purpose."""

    status = 500
    reason = "InternalError"

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or []

    def body(self) -> dict[str, Any]:
        """Return the JSON body the API answers with."""
        return {"error": self.reason, "message": self.message, "detail": self.detail}

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class InvalidRequestError(OaasError):
    """The request is malformed or names a bad field."""

    status = 400
    reason = "InvalidRequest"


class ValidationFailedError(OaasError):
    """The body parsed but its fields are invalid."""

    status = 422
    reason = "ValidationFailed"


class UnsatisfiableError(OaasError):
    """No node could ever hold the request, even in an empty cluster."""

    status = 422
    reason = "Unsatisfiable"


class NotFoundError(OaasError):
    """The named task, node or tuning does not exist."""

    status = 404
    reason = "NotFound"


class ConflictError(OaasError):
    """The request conflicts with the current state."""

    status = 409
    reason = "Conflict"


class UnauthorizedError(OaasError):
    """No valid token was given."""

    status = 401
    reason = "Unauthorized"


class ForbiddenError(OaasError):
    """The token is valid but does not allow this."""

    status = 403
    reason = "Forbidden"


class TooLargeError(OaasError):
    """The request body is larger than allowed."""

    status = 413
    reason = "TooLarge"


class RequestTimeoutError(OaasError):
    """The client did not send its request body in time (``server.body_timeout_s``)."""

    status = 408
    reason = "RequestTimeout"


class RateLimitedError(OaasError):
    """The user exceeded a configured limit."""

    status = 429
    reason = "RateLimited"

    def __init__(self, message: str, retry_after_s: float, detail: list[dict[str, Any]] | None = None):
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class StorageFullError(OaasError):
    """The state disk is full: nothing was stored (retry once space is freed)."""

    status = 507
    reason = "InsufficientStorage"

    def __init__(self, message: str = "the state disk is full; nothing was stored, try again later",
                 detail: list[dict[str, Any]] | None = None):
        super().__init__(message, detail or [{"field": "storage", "problem": "state disk full (ENOSPC)"}])


class OverloadedError(OaasError):
    """The daemon is at a configured cap (e.g. open event streams); retry later."""

    status = 503
    reason = "Overloaded"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class IllegalTransitionError(OaasError):
    """A state change the transition table forbids: a bug, never user input."""

    status = 500
    reason = "IllegalTransition"


class ConfigError(OaasError):
    """The configuration file is invalid; names the key."""

    reason = "ConfigError"


class StartupError(OaasError):
    """The daemon cannot start (port, state dir, database, lock); names the address or path."""

    reason = "StartupError"


def pydantic_detail(exc: Any) -> list[dict[str, Any]]:
    """Turn a pydantic ValidationError into detail entries naming each field."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        out.append({"field": loc, "problem": err.get("msg", "invalid"), "type": err.get("type")})
    return out
