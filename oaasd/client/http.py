"""A small synchronous HTTP client of the oaasd API, for the command line.

Standard library only (http.client over one kept-alive connection), so the
CLI starts fast and adds no dependency. Every failure, an error answer or an
unreachable server, is a ``ClientError`` whose text is one readable line.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_URL = "http://127.0.0.1:8750"
CONFIG_KEYS = ("url", "token")


class ClientError(Exception):
    """A request that failed; ``str()`` is one line fit for a terminal."""


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """The user's client config file, under ``$XDG_CONFIG_HOME`` (default ``~/.config``)."""
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "oaasd" / "client.toml"


def read_config(path: Path) -> dict[str, str]:
    """The ``url`` and ``token`` of a client config file ({} when it does not exist)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"{path}: {exc}") from None
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise ClientError(f"{path}: unknown key {key!r} (expected {', '.join(CONFIG_KEYS)})")
        if not isinstance(value, str):
            raise ClientError(f"{path}: {key} must be a string")
    return data


def resolve(url: str | None, token: str | None, env: Mapping[str, str] = os.environ) -> tuple[str, str | None]:
    """Server URL and token: the arguments, then OAAS_URL/OAAS_TOKEN, then the config file, then defaults."""
    url = url or env.get("OAAS_URL")
    token = token or env.get("OAAS_TOKEN")
    if url is None or token is None:
        cfg = read_config(config_path(env))
        url = url or cfg.get("url")
        token = token or cfg.get("token")
    return url or DEFAULT_URL, token or None


def error_line(status: int, reason: str, payload: bytes) -> str:
    """One line for an error answer: status, reason code and each field's problem."""
    try:
        body = json.loads(payload)
        code, detail = body["error"], body.get("detail") or []
    except (ValueError, KeyError, TypeError):
        return f"{status} {reason}"
    problems = [f"{d['field']}: {d['problem']}" for d in detail if isinstance(d, dict) and "field" in d and "problem" in d]
    return f"{status} {code}: {'; '.join(problems) or body.get('message', '')}".rstrip(": ")


class Client:
    """The oaasd API at ``url``, with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"bad server URL {url!r} (expected http://HOST:PORT)")
        self.url = url
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._conn_args = (parts.scheme, parts.hostname, parts.port)
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        scheme, host, port = self._conn_args
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        return cls(host, port, timeout=timeout)

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str,
              body: Any, query: Mapping[str, Any] | None) -> http.client.HTTPResponse:
        target = self.prefix + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers, **({"Content-Type": "application/json"} if data is not None else {}))
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ClientError(f"cannot reach {self.url}: {_why(exc)}") from None
        if resp.status >= 400:
            raise ClientError(error_line(resp.status, resp.reason, resp.read()))
        return resp

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """One request on the kept-alive connection; returns the decoded JSON answer."""
        if self._conn is None:
            self._conn = self._connect(self.timeout)
        try:
            payload = self._send(self._conn, method, path, body, query).read()
        except ClientError:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ClientError(f"cannot reach {self.url}: {_why(exc)}") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise ClientError(f"{method} {path}: the server answered with something other than JSON") from None

    def stream(self, path: str, query: Mapping[str, Any] | None = None,
               timeout: float | None = None) -> Iterator[bytes]:
        """Yield the body of a GET chunk by chunk as it arrives (its own connection)."""
        conn = self._connect(timeout)
        try:
            resp = self._send(conn, "GET", path, None, query)
            while chunk := resp.read1(1 << 16):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"stream from {self.url} broke: {_why(exc)}") from None
        finally:
            conn.close()

    def close(self) -> None:
        """Close the kept-alive connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- the API's verbs --------------------------------------------
    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST a task spec; the answer is the new task's summary."""
        return self.request("POST", "/v1/tasks", spec)

    def tasks(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest tasks' summaries, optionally in one state."""
        query = {"limit": limit, **({"state": state} if state else {})}
        return self.request("GET", "/v1/tasks", query=query)["items"]

    def task(self, task_id: int) -> dict[str, Any]:
        """One task's full view: spec, history, attempts, metrics, result."""
        return self.request("GET", f"/v1/tasks/{task_id}")

    def cancel(self, task_id: int) -> dict[str, Any]:
        """Cancel a task; the answer is its summary."""
        return self.request("DELETE", f"/v1/tasks/{task_id}")

    def logs(self, task_id: int, follow: bool = False, stream: str = "stdout") -> Iterator[bytes]:
        """A task's log, chunk by chunk; with ``follow`` until the task ends."""
        query = {"stream": stream, "follow": "1" if follow else "0"}
        return self.stream(f"/v1/tasks/{task_id}/logs", query, timeout=None if follow else self.timeout)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node's view."""
        return self.request("GET", "/v1/nodes")["items"]

    def node(self, name: str) -> dict[str, Any]:
        """One node's view, with the tasks running on it."""
        return self.request("GET", f"/v1/nodes/{_segment(name)}")

    def set_node(self, name: str, state: str, reason: str | None = None) -> dict[str, Any]:
        """Set an admin intent on a node: DRAIN, RESUME or DOWN (with a reason)."""
        body = {"state": state, **({"reason": reason} if reason else {})}
        return self.request("PATCH", f"/v1/nodes/{_segment(name)}", body)


def _segment(name: str) -> str:
    """A node name as one path segment (a '/' in it cannot change the route)."""
    return quote(name, safe="")


def _why(exc: BaseException) -> str:
    """A short reason for a connection failure."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
