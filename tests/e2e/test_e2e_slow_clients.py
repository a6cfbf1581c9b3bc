"""Slow and greedy HTTP clients against the real daemon, with raw sockets.

A slowloris (one header byte at a time) is answered 408 and closed after
``server.header_timeout_s``; a body that stalls gets 408 after
``server.body_timeout_s``; connections beyond ``server.max_connections_per_peer``
are refused at once with a 503 JSON body while other peers are served; and
SIGTERM with hundreds of such connections open exits promptly, rc 0, with no
traceback in the log.
"""

from __future__ import annotations

import json
import select
import socket
import time

SLOW = "header_timeout_s = 2.0\nbody_timeout_s = 2.0\nmax_connections_per_peer = 20\nmax_connections = 500\n"


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.setblocking(False)
    return sock


def answer_of(sock: socket.socket, timeout: float) -> tuple[int | None, dict | None, bool]:
    """Read until the server closes or ``timeout``: (status, JSON body, closed)."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return _parse(data) + (True,)
        if not chunk:
            return _parse(data) + (True,)
        data += chunk
    return _parse(data) + (False,)


def _parse(data: bytes) -> tuple[int | None, dict | None]:
    if not data.startswith(b"HTTP/1.1 "):
        return None, None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


def trickle(socks: list[socket.socket], seconds: float, byte: bytes = b"X") -> None:
    """Send one more header byte on each socket every 0.25 s for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in socks:
            try:
                sock.send(byte)
            except OSError:
                pass
        time.sleep(0.25)


def healthz(port: int, source: str) -> int:
    sock = connect(port, source)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, _ = answer_of(sock, 5)
    sock.close()
    return status


def test_slowloris_is_closed_after_the_header_timeout_and_the_peer_cap_refuses_more(daemon_factory):
    d = daemon_factory(start=False)
    d.server_extra = SLOW
    d.start()
    slow = [connect(d.port) for _ in range(20)]
    for sock in slow:
        sock.send(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    time.sleep(0.3)
    beyond = connect(d.port)
    status, body, closed = answer_of(beyond, 3)
    assert (status, closed) == (503, True) and body["error"] == "TooManyConnections"
    assert body["detail"][0]["field"] == "server.max_connections_per_peer"
    assert healthz(d.port, "127.0.0.9") == 200  # another peer is still served meanwhile
    started = time.monotonic()
    trickle(slow, 1.0)
    answers = [answer_of(sock, 4) for sock in slow]
    assert all(a[0] == 408 and a[2] for a in answers), answers[:3]
    assert answers[0][1]["detail"][0]["field"] == "server.header_timeout_s"
    assert time.monotonic() - started < 5
    assert healthz(d.port, "127.0.0.1") == 200  # the slots of the closed ones are free again
    assert "Traceback" not in d.log()


def test_a_stalled_body_gets_408(daemon_factory):
    d = daemon_factory(start=False)
    d.server_extra = SLOW
    d.start()
    sock = connect(d.port)
    sock.send(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 200\r\n\r\n{\"name\": ")
    started = time.monotonic()
    status, body, _ = answer_of(sock, 6)
    assert status == 408 and body["error"] == "RequestTimeout" and body["detail"][0]["field"] == "body"
    assert 1.5 < time.monotonic() - started < 5
    status, body = d.request("GET", "/v1/tasks")
    assert status == 200 and body["items"] == []


def test_sigterm_with_200_slow_connections_exits_promptly_without_traceback(daemon_factory):
    d = daemon_factory(start=False)
    d.server_extra = ("header_timeout_s = 60.0\nbody_timeout_s = 60.0\nmax_connections_per_peer = 400\n"
                      "max_connections = 1000\n")
    d.start()
    slow = [connect(d.port) for _ in range(200)]
    for sock in slow:
        sock.send(b"GET /v1/tasks HTTP/1.1\r\nX-Slow: ")
    halves = [connect(d.port) for _ in range(5)]
    for sock in halves:
        sock.send(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"name\": \"half")
    assert d.request("GET", "/healthz")[0] == 200
    time.sleep(0.5)
    started = time.monotonic()
    assert d.stop(timeout=20) == 0
    assert time.monotonic() - started < 6
    assert "Traceback" not in d.log()
    for sock in slow + halves:
        sock.close()
