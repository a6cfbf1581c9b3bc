"""Load sources of the adaptation loop: where the observed request rate comes from.

This module and :mod:`.actuators` are the I/O edge of the pipeline package
(the rest of it is pure); only the daemon's loop manager imports them.

- ``http``: GET ``url``, a JSON body, the number at ``field`` (dotted path);
- ``prometheus``: an instant query, ``GET url?query=...``, the number at
  ``data.result[0].value[1]``;
- ``file``: a file appended to, one number per line; the last line counts.
  The path must lie inside the daemon's load directory
  (``<state_dir>/loads``): a request never names an arbitrary file. It is
  opened one name at a time, never through a symlink, non-blocking, and read
  only when a regular file (its last 4 KiB), on a pool of its own with a
  time limit: a FIFO or a hung file system there holds nobody else's work.

URLs are fetched through :class:`oaasd.outbound.Client` under the owner's
outbound policy.

Every failure is a :class:`LoadSourceError` whose message the loop records.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from oaasd.service.outbound import Client, OutboundError
from oaasd.service.pools import SOURCES, PoolTimeoutError

TAIL_BYTES = 4096  # a file source's last line must fit in this; no more is read per interval
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
NOT_OPENED = {errno.ELOOP: "a symlink, never followed",
              errno.ENOTDIR: "a symlink (never followed) or a file where a directory should be"}


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
    timeout_s: float = Field(default=2.0, gt=0, le=60)


SourceSpec = Annotated[HttpSource | PrometheusSource | FileSource, Field(discriminator="kind")]


def load_file_parts(path: str, load_dir: Path) -> tuple[str, ...] | None:
    """The names leading from ``load_dir`` to ``path`` (relative, or absolute inside it), or None when it leaves it.

    Decided on the words alone: ``..`` is refused, and symlinks are never followed when reading.
    """
    if "\x00" in path:
        return None
    wanted = PurePosixPath(path)  # collapses "//" and "." components, keeps ".."
    if wanted.is_absolute():
        for root in dict.fromkeys((load_dir.absolute(), load_dir.resolve())):
            if wanted.is_relative_to(root):
                wanted = wanted.relative_to(root)
                break
        else:
            return None
    parts = wanted.parts
    return parts if parts and ".." not in parts else None


def registrable(path: str, load_dir: Path) -> bool:
    """Whether a file source may be registered: inside ``load_dir`` in words, and as the path resolves now."""
    if load_file_parts(path, load_dir) is None:
        return False
    root = load_dir.resolve()
    resolved = (root / path).resolve()  # a symlink pointing out is refused here already, not only at read
    return resolved.is_relative_to(root) and resolved != root


async def read_load(source: HttpSource | PrometheusSource | FileSource, client: Client, load_dir: Path,
                    admin: bool) -> float:
    """The load (requests/s) ``source`` reports now, fetched under ``admin``'s or a user's policy.

    Raises :class:`LoadSourceError`.
    """
    if isinstance(source, FileSource):
        try:
            line = await SOURCES.run(_last_line, source.path, load_dir, timeout_s=source.timeout_s)
        except PoolTimeoutError:
            raise LoadSourceError(f"{source.path} could not be read within {source.timeout_s:g} s") from None
        return _as_load(line, "last line")
    if isinstance(source, PrometheusSource):
        body = await _get_json(client, source.url, {"query": source.query}, source.timeout_s, admin)
        try:
            raw = body["data"]["result"][0]["value"][1]
        except (KeyError, IndexError, TypeError):
            raise LoadSourceError("no data.result[0].value[1] in the Prometheus answer") from None
        return _as_load(raw, "data.result[0].value[1]")
    body = await _get_json(client, source.url, None, source.timeout_s, admin)
    return _as_load(_at_path(body, source.field), source.field)


async def _get_json(client: Client, url: str, params: dict[str, str] | None, timeout_s: float,
                    admin: bool) -> Any:
    try:
        answer = await client.request("GET", url, admin=admin, timeout_s=timeout_s, params=params)
    except OutboundError as exc:
        raise LoadSourceError(str(exc)) from None
    if answer.status != 200:
        raise LoadSourceError(f"{url} answered HTTP {answer.status}")
    try:
        return json.loads(answer.body)
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
    """The last line of a regular file below ``load_dir``; runs on the ``SOURCES`` pool."""
    parts = load_file_parts(path, load_dir)
    if parts is None:
        raise LoadSourceError(f"{path} is outside the load directory {load_dir}")
    try:
        fd = _open_below(load_dir, parts)
    except OSError as exc:
        raise LoadSourceError(f"{path}: {NOT_OPENED.get(exc.errno, exc.strerror or str(exc))}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: never read (a FIFO would block)
            raise LoadSourceError(f"{path} is not a regular file")
        tail = os.pread(fd, TAIL_BYTES, max(0, st.st_size - TAIL_BYTES))
    except OSError as exc:
        raise LoadSourceError(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    if not lines:
        raise LoadSourceError(f"{path} holds no value yet")
    return lines[-1].decode(errors="replace")


def _open_below(load_dir: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of ``load_dir/parts...``, opened one name at a time without following a symlink.

    Non-blocking, so opening a FIFO returns at once (and fstat then refuses it).
    """
    fd = os.open(load_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            below = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
        return os.open(parts[-1], FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


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
