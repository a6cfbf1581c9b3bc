"""One pooled asyncssh connection per node, and the errors a node can give.

Every launch, probe, follow and kill for a node goes over the same
connection: a command on an open connection costs 3-8 ms, a fresh one
~130 ms. Each connection has keepalive on (asyncssh leaves it off, and a
node that dies silently would otherwise hang its commands forever) and a
connect timeout. A failed connect is retried no sooner than an exponential
backoff allows; until then callers get the last error at once.

Host keys are checked against the node's ``known_hosts``; an unknown key is
accepted only when the node says ``accept_unknown_hosts``, and then pinned
for this process's later reconnects. A changed key is never accepted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping

import asyncssh

from oaasd.errors import OaasError

log = logging.getLogger(__name__)

# The reasons a NodeError can carry (``NodeError.reason``).
NODE_UNREACHABLE = "NodeUnreachable"  # connection refused, no route, connect timeout
AUTH_REFUSED = "AuthRefused"  # the node refused our key
HOST_KEY_UNKNOWN = "HostKeyUnknown"  # no known_hosts entry and accept_unknown_hosts is off
HOST_KEY_CHANGED = "HostKeyChanged"  # known_hosts holds another key for this host
KEY_UNREADABLE = "KeyUnreadable"  # the configured client key cannot be loaded
CONNECTION_LOST = "ConnectionLost"  # an open connection dropped (keepalive, reset)
CHANNEL_REFUSED = "ChannelRefused"  # the node refused one more session (sshd MaxSessions)
COMMAND_TIMEOUT = "CommandTimeout"  # a control command did not answer in time
REMOTE_FAILED = "RemoteCommandFailed"  # a control command ran and failed
UNKNOWN_NODE = "UnknownNode"  # no such node in the launcher's configuration


class NodeError(OaasError):
    """A node cannot be used right now; ``reason`` says why, ``node`` which."""

    status = 503

    def __init__(self, node: str, reason: str, message: str):
        super().__init__(f"node {node}: {message}",
                         detail=[{"node": node, "reason": reason, "problem": message}])
        self.node = node
        self.reason = reason


@dataclass(frozen=True)
class NodeConn:
    """How to reach one node over SSH.

    ``known_hosts`` None means the daemon user's ``~/.ssh/known_hosts``;
    ``work_root`` None means ``SshOptions.work_root`` (relative paths are
    under the login user's home).
    """

    host: str
    port: int = 22
    user: str | None = None
    key_path: str | None = None
    known_hosts: str | None = None
    accept_unknown_hosts: bool = False
    work_root: str | None = None


@dataclass(frozen=True)
class SshOptions:
    """Knobs shared by every node's connection and follower."""

    connect_timeout_s: float = 10.0
    keepalive_interval_s: float = 5.0  # loss is seen after interval * (count_max + 1)
    keepalive_count_max: int = 3
    command_timeout_s: float = 30.0  # launch, probe, kill, fetch
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    lost_grace_s: float = 10.0  # how long an attempt tries to reach its node again before it is lost
    work_root: str = ".oaasd/attempts"
    keep_remote_dirs: bool = False
    max_streams: int = 6  # long-lived follower channels per node (OpenSSH MaxSessions defaults to 10)
    poll_interval_s: float = 1.0  # followers beyond max_streams poll at this interval
    watch_poll_max_s: float = 1.0  # remote liveness checks back off from 50 ms up to this


class SshPool:
    """Keeps one live connection per node and runs commands over it."""

    def __init__(self, nodes: Mapping[str, NodeConn], options: SshOptions | None = None):
        self.nodes = dict(nodes)
        self.options = options or SshOptions()
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, tuple[int, float, NodeError]] = {}
        self._pinned: dict[str, asyncssh.SSHKey] = {}
        self._keys: dict[str, list] = {}
        self.streams: dict[str, asyncio.Semaphore] = {}
        self.closed = False
        self._chores: set[asyncio.Task] = set()

    def conn_of(self, node: str) -> NodeConn:
        """Return the configuration of ``node`` or raise NodeError(UnknownNode)."""
        try:
            return self.nodes[node]
        except KeyError:
            raise NodeError(node, UNKNOWN_NODE, "not in the launcher's node list") from None

    def work_root(self, node: str) -> str:
        """The remote directory under which attempt directories live."""
        return self.conn_of(node).work_root or self.options.work_root

    def stream_slots(self, node: str) -> asyncio.Semaphore:
        """The semaphore bounding long-lived follower channels on ``node``."""
        return self.streams.setdefault(node, asyncio.Semaphore(self.options.max_streams))

    async def connection(self, node: str) -> asyncssh.SSHClientConnection:
        """Return the node's open connection, connecting (with backoff) if needed."""
        conn = self._conns.get(node)
        if conn is not None and not conn.is_closed():
            return conn
        if self.closed:
            raise NodeError(node, CONNECTION_LOST, "the launcher's connections are closed")
        async with self._locks.setdefault(node, asyncio.Lock()):
            conn = self._conns.get(node)
            if conn is not None and not conn.is_closed():
                return conn
            count, not_before, last = self._failures.get(node, (0, 0.0, None))
            if last is not None and time.monotonic() < not_before:
                raise last
            try:
                conn = await self._connect(node)
            except NodeError as exc:
                delay = min(self.options.backoff_max_s, self.options.backoff_initial_s * 2 ** min(count, 16))
                self._failures[node] = (count + 1, time.monotonic() + delay, exc)
                raise
            self._failures.pop(node, None)
            self._conns[node] = conn
            return conn

    async def _connect(self, node: str) -> asyncssh.SSHClientConnection:
        nc = self.conn_of(node)
        opts = self.options
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                nc.host, nc.port, username=nc.user, client_keys=self._client_keys(node, nc),
                known_hosts=self._known_hosts_arg(node, nc), config=None, agent_path=None,
                password_auth=False, kbdint_auth=False, gss_auth=False,
                connect_timeout=opts.connect_timeout_s, login_timeout=opts.connect_timeout_s,
                keepalive_interval=opts.keepalive_interval_s, keepalive_count_max=opts.keepalive_count_max,
            ), opts.connect_timeout_s + 1.0)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._host_key_error(node, nc, exc) from None
        except asyncssh.PermissionDenied as exc:
            raise NodeError(node, AUTH_REFUSED,
                            f"{nc.user}@{nc.host}:{nc.port} refused our key ({exc.reason})") from None
        except asyncio.TimeoutError:
            raise NodeError(node, NODE_UNREACHABLE,
                            f"{nc.host}:{nc.port} did not answer within {opts.connect_timeout_s:g}s") from None
        except (OSError, asyncssh.Error) as exc:
            errno = getattr(exc, "errno", None)
            text = os.strerror(errno) if errno else getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise NodeError(node, NODE_UNREACHABLE, f"cannot connect to {nc.host}:{nc.port}: {text}") from None
        if nc.accept_unknown_hosts and node not in self._pinned:
            self._pinned[node] = conn.get_server_host_key()
        return conn

    def _client_keys(self, node: str, nc: NodeConn):
        if nc.key_path is None:
            return ()
        if node not in self._keys:
            try:
                self._keys[node] = [asyncssh.read_private_key(nc.key_path)]
            except (OSError, asyncssh.KeyImportError) as exc:
                raise NodeError(node, KEY_UNREADABLE, f"cannot load key {nc.key_path}: {exc}") from None
        return self._keys[node]

    def _trusted_keys(self, nc: NodeConn) -> list:
        """The host keys known_hosts trusts for this node (empty when none)."""
        path = nc.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        try:
            known = asyncssh.read_known_hosts(path)
        except (OSError, ValueError):
            return []
        return list(known.match(nc.host, nc.host, nc.port)[0])

    def _known_hosts_arg(self, node: str, nc: NodeConn):
        if not nc.accept_unknown_hosts:
            return nc.known_hosts if nc.known_hosts is not None else ()
        if node in self._pinned:
            return ([self._pinned[node]], [], [])
        trusted = self._trusted_keys(nc)
        return (trusted, [], []) if trusted else None  # None: trust on first use, pinned after

    def _host_key_error(self, node: str, nc: NodeConn, exc: Exception) -> NodeError:
        where = f"[{nc.host}]:{nc.port}"
        if self._trusted_keys(nc) or node in self._pinned:
            return NodeError(node, HOST_KEY_CHANGED,
                             f"host key of {where} does not match known_hosts (changed key: possible impostor)")
        return NodeError(node, HOST_KEY_UNKNOWN,
                         f"host key of {where} is not in known_hosts {nc.known_hosts or '~/.ssh/known_hosts'}")

    def _lost(self, node: str, exc: BaseException | None = None) -> NodeError:
        conn = self._conns.get(node)
        if isinstance(exc, asyncssh.ChannelOpenError) and conn is not None and not conn.is_closed():
            return NodeError(node, CHANNEL_REFUSED, f"session refused ({exc.reason}); raise sshd MaxSessions")
        why = f": {exc}" if exc is not None and str(exc) else ""
        return NodeError(node, CONNECTION_LOST, f"connection lost{why}")

    async def run(self, node: str, command: str, *, timeout: float | None = None,
                  check: bool = True) -> asyncssh.SSHCompletedProcess:
        """Run ``command`` (already quoted) over the pooled connection; bytes out.

        A dropped connection reports ``exit_status`` None: that is raised as
        ConnectionLost, never taken for success.
        """
        conn = await self.connection(node)
        limit = self.options.command_timeout_s if timeout is None else timeout
        try:
            result = await asyncio.wait_for(
                conn.run(command, encoding=None, stdin=asyncssh.DEVNULL, check=False), limit)
        except asyncio.TimeoutError:
            raise NodeError(node, COMMAND_TIMEOUT, f"no answer within {limit:g}s") from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(node, exc) from None
        if result.exit_status is None and result.exit_signal is None:
            raise self._lost(node)
        if check and result.exit_status != 0:
            text = (result.stderr or b"").decode(errors="replace").strip()[-300:]
            raise NodeError(node, REMOTE_FAILED, f"exit {result.exit_status}: {text}")
        return result

    async def open(self, node: str, command: str) -> asyncssh.SSHClientProcess:
        """Start a long-lived ``command`` on ``node``; bytes on both streams."""
        conn = await self.connection(node)
        try:
            return await conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(node, exc) from None

    def chore(self, coro, what: str) -> None:
        """Run a best-effort command without delaying the caller; failures are logged."""
        task = asyncio.ensure_future(coro)
        self._chores.add(task)

        def reap(done: asyncio.Task) -> None:
            self._chores.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.warning("%s failed: %s", what, done.exception())

        task.add_done_callback(reap)

    async def close(self) -> None:
        """Finish pending chores, close every connection (remote processes keep running)."""
        if self._chores:
            await asyncio.wait(list(self._chores), timeout=2.0)
        self.closed = True
        conns = [c for c in self._conns.values() if not c.is_closed()]
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                await asyncio.wait_for(conn.wait_closed(), 2.0)
            except (asyncio.TimeoutError, OSError, asyncssh.Error):
                pass
