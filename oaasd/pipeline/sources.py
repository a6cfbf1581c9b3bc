"""Load sources of the adaptation loop: where the observed request rate comes from.

This module and :mod:`.actuators` are the I/O edge of the pipeline package
(the rest of it is pure); only the daemon's loop manager imports them.

- ``http``: GET ``url``, a JSON body, the number at ``field`` (dotted path);
- ``prometheus``: an instant query, ``GET url?query=...``, the number at
  ``data.result[0].value[1]``;
- ``file``: a file appended to, one number per line; the last line counts.
  The path must lie inside the daemon's load directory
  (``<state_dir>/loads``): a request never names an arbitrary file.

Every failure is a :class:`LoadSourceError` whose message the loop records.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

TAIL_BYTES = 4096  # a file source's last line must fit in this


class LoadSourceError(Exception):
    """The load could not be read this interval (recorded, retried next interval)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSource(_Spec):
    """A URL answering JSON with the load at ``field``."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://", max_length=2048)
    field: str = Field(default="rps", min_length=1, max_length=200, description="dotted path in the JSON body")
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class PrometheusSource(_Spec):
    """A Prometheus instant-query endpoint, e.g. ``http://prom:9090/api/v1/query``."""

    kind: Literal["prometheus"]
    url: str = Field(pattern=r"^https?://", max_length=2048)
    query: str = Field(min_length=1, max_length=4096)
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class FileSource(_Spec):
    """A file under the load directory, appended to, one number per line."""

    kind: Literal["file"]
    path: str = Field(min_length=1, max_length=4096)


SourceSpec = Annotated[HttpSource | PrometheusSource | FileSource, Field(discriminator="kind")]


def load_file_path(path: str, load_dir: Path) -> Path | None:
    """``path`` (relative to ``load_dir`` or absolute) resolved, or None when it escapes ``load_dir``."""
    if "\x00" in path:
        return None
    root = load_dir.resolve()
    resolved = (root / path).resolve()  # an absolute ``path`` replaces root; symlinks are followed
    return resolved if resolved.is_relative_to(root) and resolved != root else None


async def read_load(source: HttpSource | PrometheusSource | FileSource, session: aiohttp.ClientSession,
                    load_dir: Path) -> float:
    """The load (requests/s) ``source`` reports now; raises :class:`LoadSourceError`."""
    if isinstance(source, FileSource):
        return _as_load(await asyncio.to_thread(_last_line, source.path, load_dir), "last line")
    if isinstance(source, PrometheusSource):
        body = await _get_json(session, source.url, {"query": source.query}, source.timeout_s)
        try:
            raw = body["data"]["result"][0]["value"][1]
        except (KeyError, IndexError, TypeError):
            raise LoadSourceError("no data.result[0].value[1] in the Prometheus answer") from None
        return _as_load(raw, "data.result[0].value[1]")
    body = await _get_json(session, source.url, None, source.timeout_s)
    return _as_load(_at_path(body, source.field), source.field)


async def _get_json(session: aiohttp.ClientSession, url: str, params: dict[str, str] | None,
                    timeout_s: float) -> Any:
    try:
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise LoadSourceError(f"{url} answered HTTP {resp.status}")
            return await resp.json(content_type=None)
    except asyncio.TimeoutError:
        raise LoadSourceError(f"{url} did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise LoadSourceError(f"{url}: {type(exc).__name__}: {exc}") from None
    except ValueError:
        raise LoadSourceError(f"{url} did not answer JSON") from None


def _at_path(body: Any, field: str) -> Any:
    value = body
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            raise LoadSourceError(f"no field {field!r} in the answer")
        value = value[key]
    return value


def _last_line(path: str, load_dir: Path) -> str:
    resolved = load_file_path(path, load_dir)  # again at each read: a symlink may have moved
    if resolved is None:
        raise LoadSourceError(f"{path} is outside the load directory {load_dir}")
    try:
        with open(resolved, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError as exc:
        raise LoadSourceError(f"{path}: {exc.strerror or exc}") from None
    if not lines:
        raise LoadSourceError(f"{path} holds no value yet")
    return lines[-1].decode(errors="replace")


def _as_load(raw: Any, what: str) -> float:
    """A finite, non-negative number from a JSON number or a numeric string."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise LoadSourceError(f"{what} is not a number: {str(raw)[:60]!r}")
    try:
        value = float(raw)
    except ValueError:
        raise LoadSourceError(f"{what} is not a number: {raw[:60]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise LoadSourceError(f"{what} must be a finite load >= 0, got {value}")
    return value
