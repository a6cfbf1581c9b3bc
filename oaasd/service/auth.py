"""Who is calling: users, tokens, roles, and each user's intake limits.

Tokens become callers here (``Users.authenticate``); the HTTP edge
(``oaasd.http.auth``) names the caller of every request with it and checks
ownership. With auth turned off (loopback only), every caller is the
anonymous admin. ``Users.admission`` is the one seam every path that
creates tasks goes through.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from oaasd.config import Settings
from oaasd.errors import RateLimitedError, UnauthorizedError


@dataclass(frozen=True, slots=True)
class Caller:
    """The user behind a request."""

    name: str
    admin: bool


ANONYMOUS = Caller("anonymous", admin=True)


def may_see(who: Caller, owner: str) -> bool:
    """True when ``who`` may see and act on something owned by ``owner``."""
    return who.admin or who.name == owner


def token_hash(token: str) -> str:
    """The hex SHA-256 stored in ``[[users]] token_sha256``.

    Tokens are long random strings (``oaasd token new``), so one fast hash is
    enough: there is no small password space for a slow KDF to protect.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass
class Bucket:
    """A token bucket: ``rate`` per second, at most ``burst`` at once."""

    rate: float
    burst: float
    level: float
    at: float

    def take(self, now: float) -> float:
        """Take one token; return 0 when granted, else seconds until one is due."""
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


@dataclass(frozen=True)
class Limits:
    """One user's intake limits (0 = unlimited)."""

    max_pending: int
    submit_rate: float
    submit_burst: int


class Users:
    """The users of the config: tokens to callers, and per-user limits."""

    def __init__(self, settings: Settings):
        self.on = settings.auth_on
        self._users = [(bytes.fromhex(u.token_sha256), Caller(u.name, u.role == "admin")) for u in settings.users]
        base = settings.limits
        self._limits = {u.name: Limits(_pick(u.max_pending, base.max_pending), _pick(u.submit_rate, base.submit_rate),
                                       _pick(u.submit_burst, base.submit_burst)) for u in settings.users}
        self._default = Limits(base.max_pending, base.submit_rate, base.submit_burst)
        self._buckets: dict[str, Bucket] = {}
        self.inflight: Counter[str] = Counter()  # submissions between admission and commit

    def authenticate(self, header: str | None) -> Caller:
        """The caller a ``Authorization: Bearer`` header names; 401 otherwise."""
        if not self.on:
            return ANONYMOUS
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("a bearer token is required",
                                    [{"field": "Authorization", "problem": "missing or not 'Bearer TOKEN'"}])
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for stored, who in self._users:  # every entry compared, in constant time each
            if hmac.compare_digest(stored, digest):
                found = who
        if found is None:
            raise UnauthorizedError("unknown token", [{"field": "Authorization", "problem": "token not recognised"}])
        return found

    def limits(self, who: Caller) -> Limits:
        """The intake limits of a caller."""
        return self._limits.get(who.name, self._default)

    @contextlib.asynccontextmanager
    async def admission(self, owner: str, want: int,
                        pending: Callable[[str], Awaitable[int]]) -> AsyncIterator[Grant]:
        """The one admission seam: how many of ``want`` new tasks ``owner`` may create now.

        Every path that creates tasks (``POST /v1/tasks``, tuning trials,
        pipeline replicas) comes through here: ``max_pending`` against the
        owner's PENDING tasks (``pending(owner)``) plus those admitted and not
        yet committed, then one ``submit_rate`` token per task. Yields a
        ``Grant``; its tasks count as in flight until the block ends, so that
        block commits them. With auth off there are no limits.
        """
        if not self.on or want <= 0:
            yield Grant(max(want, 0), None)
            return
        lim = self._limits.get(owner, self._default)
        self.inflight[owner] += want  # reserved first: a concurrent admission sees these before our count
        granted, refusal = want, None
        try:
            if lim.max_pending:
                room = lim.max_pending - (await pending(owner)) - (self.inflight[owner] - want)
                if room < want:
                    granted, refusal = max(room, 0), _pending_refusal(owner, lim.max_pending)
            taken = self._take(owner, lim, granted, time.monotonic())
            if taken < granted:
                granted, refusal = taken, refusal or self._rate_refusal(owner, lim, time.monotonic())
            self.inflight[owner] -= want - granted
            want = granted
            yield Grant(granted, refusal)
        finally:
            self.inflight[owner] -= want

    def _bucket(self, owner: str, lim: Limits, now: float) -> Bucket:
        burst = lim.submit_burst or max(1.0, 2 * lim.submit_rate)
        bucket = self._buckets.get(owner)
        if bucket is None or (bucket.rate, bucket.burst) != (lim.submit_rate, burst):
            bucket = self._buckets[owner] = Bucket(lim.submit_rate, burst, burst, now)
        return bucket

    def _take(self, owner: str, lim: Limits, n: int, now: float) -> int:
        """Take up to ``n`` submission tokens of the owner's rate; return how many were granted."""
        if lim.submit_rate <= 0:
            return n
        bucket = self._bucket(owner, lim, now)
        taken = 0
        while taken < n and not bucket.take(now):
            taken += 1
        return taken

    def _rate_refusal(self, owner: str, lim: Limits, now: float) -> RateLimitedError:
        bucket = self._bucket(owner, lim, now)
        wait = max((1 - bucket.level) / bucket.rate, 0.01)
        return RateLimitedError(
            f"user {owner!r} is over {lim.submit_rate:g} submissions/s", wait,
            [{"field": "rate", "problem": f"at most {lim.submit_rate:g}/s (burst {bucket.burst:g})"}])

    def reload(self, settings: Settings) -> None:
        """Take the users of new settings in place, keeping the rate buckets of those still there
        (every part holding these Users sees the change)."""
        fresh = Users(settings)
        self._buckets = {k: v for k, v in self._buckets.items() if k in fresh._limits or not fresh.on}
        self.on, self._users, self._limits, self._default = fresh.on, fresh._users, fresh._limits, fresh._default


@dataclass(frozen=True)
class Grant:
    """What an admission allowed: ``count`` new tasks; ``refusal`` names the limit that held back the rest."""

    count: int
    refusal: RateLimitedError | None

    @property
    def retry_after_s(self) -> float:
        """When a caller that waits (a tuning, a pipeline) should ask again."""
        return 0.0 if self.refusal is None else min(self.refusal.retry_after_s, PENDING_RETRY_S)


PENDING_RETRY_S = 1.0  # a waiting tuning or pipeline looks again this often while at max_pending


def _pending_refusal(owner: str, cap: int) -> RateLimitedError:
    return RateLimitedError(f"user {owner!r} already has {cap} pending tasks", 5.0,
                            [{"field": "max_pending", "problem": f"at most {cap} pending tasks"}])


def _pick(own: Any, default: Any) -> Any:
    return default if own is None else own
