"""Requests the daemon makes on a user's behalf, and which addresses they may reach.

A pipeline's ``http`` and ``prometheus`` sources GET a URL its owner gave, and
a task's ``callback_url`` is POSTed when it ends. Run by the daemon on the
head node, such a request could reach what only the head node may: a
loopback-only admin endpoint, a cloud metadata service (169.254.169.254),
the daemon itself. The policy decides per address, after DNS resolution:

1. an address in ``[outbound] deny`` is refused to everyone, admins too;
2. admins may reach any other address;
3. for other users, an address in ``[outbound] allow`` may be reached;
4. refused: loopback, link-local (169.254/16, fe80::/10), unspecified
   (0.0.0.0/8, ::), multicast and broadcast, and the daemon's own listen
   address (every local address when it listens on 0.0.0.0 or ::);
5. anything else: ``[outbound] default`` (``allow``).

With auth off (loopback, single user) every caller is the anonymous admin.

Enforcement, without a window between check and use: an IP literal in the
URL is checked before the request; a name is resolved by the connector's own
resolver (:class:`PolicyResolver`), which drops refused addresses, so the
connection goes only to an address that was checked. Redirects are followed
here for GETs, one hop at a time (each checked again, at most
``max_redirects``; a callback's POST follows none, a redirect is its answer);
answers are read up to ``max_response_bytes``, all hops within one time limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
import psutil
from aiohttp.abc import AbstractResolver
from yarl import URL

from oaasd.config import OutboundConfig, Settings
from oaasd.errors import ValidationFailedError
from oaasd.service.pools import DNS, PoolTimeoutError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BUILT_IN_DENIED: tuple[tuple[str, tuple[Network, ...]], ...] = tuple(
    (what, tuple(ipaddress.ip_network(n) for n in nets)) for what, nets in (
        ("loopback", ("127.0.0.0/8", "::1/128")),
        ("link-local", ("169.254.0.0/16", "fe80::/10")),
        ("unspecified", ("0.0.0.0/8", "::/128")),
        ("multicast", ("224.0.0.0/4", "ff00::/8", "255.255.255.255/32"))))
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DNS_TIMEOUT_S = 10.0
LOOPBACK_NAMES = ("localhost", "localhost.")  # and every *.localhost (RFC 6761)


class OutboundError(Exception):
    """An outbound request failed; the message is what the caller records."""


class DeniedError(OutboundError):
    """The policy refuses the destination."""


@dataclass(frozen=True)
class Answer:
    """The final answer of a request: status, reason and the body (at most ``max_response_bytes``)."""

    status: int
    reason: str
    body: bytes


def _plain(addr: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) as the IPv4 address it carries."""
    return addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped else addr


def _literal(host: str) -> Address | None:
    """The address a URL host spells, legacy IPv4 forms too (``127.1``, ``0x7f000001``), or None for a name."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.inet_aton(host))  # what the C library would make of it
    except OSError:
        return None


def own_addresses(settings: Settings) -> frozenset[Address]:
    """The addresses the daemon listens on: all local ones for 0.0.0.0 / ::."""
    host = settings.server.host
    if host == "localhost":
        return frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
    listen = ipaddress.ip_address(host)
    if not listen.is_unspecified:
        return frozenset({_plain(listen)})
    found = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                found.add(_plain(ipaddress.ip_address(a.address.split("%")[0])))
    return frozenset(found)


def privileged(settings: Settings, user: str) -> bool:
    """Whether ``user`` is under the admins' policy (every caller is, with auth off)."""
    return not settings.auth_on or any(u.name == user and u.role == "admin" for u in settings.users)


@dataclass(frozen=True)
class Policy:
    """Which addresses may be reached, for admins and for other users."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    own: frozenset[Address] = frozenset()
    default: str = "allow"

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policy":
        """The policy of ``[outbound]`` and the daemon's listen address."""
        cfg = settings.outbound
        return cls(tuple(map(ipaddress.ip_network, cfg.allow)), tuple(map(ipaddress.ip_network, cfg.deny)),
                   own_addresses(settings), cfg.default)

    def refusal(self, addr: Address, admin: bool) -> str | None:
        """Why ``addr`` may not be reached, or None when it may."""
        addr = _plain(addr)
        for net in self.deny:
            if addr in net:
                return f"{addr} is in outbound.deny {net}"
        if admin or any(addr in net for net in self.allow):
            return None
        for what, nets in BUILT_IN_DENIED:
            if any(addr in net for net in nets):
                return f"{addr} is {what}"
        if addr in self.own:
            return f"{addr} is the daemon's own address"
        return None if self.default == "allow" else f"{addr} is not in outbound.allow"

    def url_refusal(self, url: URL, admin: bool) -> str | None:
        """Why ``url`` may not be fetched as written (scheme, IP literal, a localhost name), or None.

        A host name other than localhost is checked when it is resolved.
        """
        if url.scheme not in ("http", "https") or not url.host:
            return f"{url.scheme or 'a URL without a scheme'}: only http:// and https:// URLs with a host"
        host = url.host.lower()
        if host in LOOPBACK_NAMES or host.rstrip(".").endswith(".localhost"):
            why = self.refusal(ipaddress.ip_address("127.0.0.1"), admin)
            return None if why is None else f"{host} is loopback"
        addr = _literal(host)
        return None if addr is None else self.refusal(addr, admin)

    def check_registered(self, url: str, field: str, admin: bool) -> None:
        """Refuse (422 naming ``field``) a URL the policy forbids as written."""
        why = self.url_refusal(URL(url), admin)
        if why is not None:
            raise ValidationFailedError(f"{field} is refused by the outbound policy", [{
                "field": field, "type": "outbound_denied", "problem": f"refused by the outbound policy: {why}"}])


class _Refused(OSError):
    """Every address a name resolved to is refused (raised inside aiohttp's connector)."""


class PolicyResolver(AbstractResolver):
    """A resolver handing the connector only the addresses the policy lets it reach."""

    def __init__(self, policy: Policy, admin: bool, lookup: Callable[..., list] = socket.getaddrinfo):
        self.policy, self.admin, self.lookup = policy, admin, lookup

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        """The allowed addresses of ``host``; :class:`_Refused` when there are none."""
        try:
            infos = await DNS.run(self.lookup, host, port, family, socket.SOCK_STREAM, 0,
                                  socket.AI_ADDRCONFIG, timeout_s=DNS_TIMEOUT_S)
        except PoolTimeoutError:
            raise OSError(f"no DNS answer for {host} within {DNS_TIMEOUT_S:g} s") from None
        out, refused = [], []
        for fam, _, proto, _, sockaddr in infos:
            why = self.policy.refusal(ipaddress.ip_address(sockaddr[0].split("%")[0]), self.admin)
            if why is not None:
                refused.append(why)
                continue
            out.append({"hostname": host, "host": sockaddr[0], "port": sockaddr[1], "family": fam,
                        "proto": proto, "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV})
        if not out:
            raise _Refused(f"{host} resolves only to refused addresses: {'; '.join(dict.fromkeys(refused))}")
        return out

    async def close(self) -> None:
        """Nothing to release."""


class Client:
    """HTTP requests on a user's behalf, kept to the policy: one session for admins, one for others."""

    def __init__(self, policy: Policy, cfg: OutboundConfig, lookup: Callable[..., list] = socket.getaddrinfo):
        self.policy, self.cfg, self.lookup = policy, cfg, lookup
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "Client":
        """The client of ``[outbound]``."""
        return cls(Policy.from_settings(settings), settings.outbound)

    def _session(self, admin: bool) -> aiohttp.ClientSession:
        if admin not in self._sessions:
            connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.policy, admin, self.lookup), limit=100)
            # Bodies undecoded: a compressed answer cannot grow past the size cap while being read.
            self._sessions[admin] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                headers={"User-Agent": "oaasd", "Accept-Encoding": "identity"})
        return self._sessions[admin]

    async def close(self) -> None:
        """Close the sessions."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def request(self, method: str, url: str, *, admin: bool, timeout_s: float,
                      params: dict[str, str] | None = None, data: str | None = None,
                      headers: dict[str, str] | None = None) -> Answer:
        """One request, redirects followed and checked; :class:`OutboundError` on any failure."""
        target = URL(url).extend_query(params) if params else URL(url)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._follow(method, target, admin, data, headers)
        except TimeoutError:
            raise OutboundError(f"{url} did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _Refused):
                raise DeniedError(f"{url}: refused by the outbound policy: {exc.os_error}") from None
            raise OutboundError(f"{url}: {type(exc).__name__}: {exc}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise OutboundError(f"{url}: {type(exc).__name__}: {exc}") from None

    async def _follow(self, method: str, target: URL, admin: bool, data: str | None,
                      headers: dict[str, str] | None) -> Answer:
        session = self._session(admin)
        for _ in range(self.cfg.max_redirects + 1):
            why = self.policy.url_refusal(target, admin)
            if why is not None:
                raise DeniedError(f"{target}: refused by the outbound policy: {why}")
            async with session.request(method, target, data=data, headers=headers, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location and method == "GET":  # a POST's redirect is its answer
                    target = target.join(URL(location))
                    continue
                return Answer(resp.status, resp.reason or "", await self._body(resp, target))
        raise OutboundError(f"{target}: more than {self.cfg.max_redirects} redirects")

    async def _body(self, resp: aiohttp.ClientResponse, target: URL) -> bytes:
        cap = self.cfg.max_response_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise OutboundError(f"{target}: answer of {resp.content_length} bytes, more than {cap}")
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > cap:
                raise OutboundError(f"{target}: answer longer than {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
