"""The HTTP listener: sockets bound before the daemon starts, connection caps, a header deadline.

aiohttp parses and answers requests; in front of each of its connection
handlers sits a ``Guard`` that (1) refuses a connection beyond
``server.max_connections`` or ``server.max_connections_per_peer`` with a
503 JSON answer before any handler exists for it, and (2) closes with a 408
a connection whose first request head has not arrived within
``server.header_timeout_s`` (later heads on a kept-alive connection are
bounded by aiohttp's keep-alive timeout, ``cli.KEEPALIVE_S``). Body read
deadlines live where bodies are read (``api.read_body``).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from typing import Any, Callable

from aiohttp import web

from oaasd.errors import StartupError

BACKLOG = 1024


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host:port``, or StartupError naming the address."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from None
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys((i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from None
    return socks


class Limits:
    """Open connections, in all and per peer address, against the ``[server]`` caps."""

    def __init__(self, max_total: int, max_per_peer: int):
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.total = 0
        self.per_peer: Counter[str] = Counter()

    def refusal(self, peer: str) -> dict[str, str] | None:
        """Why one more connection from ``peer`` is refused (field + problem), or None."""
        if self.total >= self.max_total:
            return {"field": "server.max_connections", "problem": f"{self.total} connections open"}
        if self.per_peer[peer] >= self.max_per_peer:
            return {"field": "server.max_connections_per_peer",
                    "problem": f"{self.per_peer[peer]} connections open from {peer}"}
        return None

    def opened(self, peer: str) -> None:
        """Count a connection accepted from ``peer``."""
        self.total += 1
        self.per_peer[peer] += 1

    def closed(self, peer: str) -> None:
        """Forget a connection of ``peer``."""
        self.total -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]


def answer_and_close(transport: asyncio.BaseTransport, status: str, error: str, message: str,
                     detail: dict[str, str], extra: str = "") -> None:
    """Write a complete JSON error response on a raw connection and close it."""
    body = json.dumps({"error": error, "message": message, "detail": [detail]}).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()
    transport.write(head + body)  # type: ignore[attr-defined]
    transport.close()


class Guard(asyncio.Protocol):
    """One connection: admitted under the caps, then handed to aiohttp's handler."""

    def __init__(self, make_handler: Callable[[], Any], limits: Limits, header_timeout_s: float):
        self._make_handler = make_handler
        self._limits = limits
        self._header_timeout_s = header_timeout_s
        self._inner: Any = None
        self._peer = ""
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "unknown"
        refusal = self._limits.refusal(self._peer)
        if refusal is not None:
            answer_and_close(transport, "503 Service Unavailable", "TooManyConnections",
                             "too many connections; retry later", refusal, "Retry-After: 1\r\n")
            return
        self._transport = transport
        self._limits.opened(self._peer)
        self._timer = asyncio.get_running_loop().call_later(self._header_timeout_s, self._head_late)
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._timer is not None:  # until the first head ends; 3 bytes kept for a split CRLFCRLF
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
            self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner is not None:
            self._limits.closed(self._peer)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def _head_late(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            answer_and_close(self._transport, "408 Request Timeout", "RequestTimeout",
                             f"request head not received within {self._header_timeout_s:g}s",
                             {"field": "server.header_timeout_s", "problem": "request head too slow"})


class GuardedSite(web.BaseSite):
    """An aiohttp site on a socket bound beforehand, each connection behind a Guard."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, limits: Limits, header_timeout_s: float):
        super().__init__(runner, backlog=BACKLOG)
        self._sock = sock
        self._limits = limits
        self._header_timeout_s = header_timeout_s
        host, port = sock.getsockname()[:2]
        self._name = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        """Start accepting connections."""
        await super().start()
        make_handler = self._runner.server
        assert make_handler is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Guard(make_handler, self._limits, self._header_timeout_s), sock=self._sock,
            backlog=self._backlog)
