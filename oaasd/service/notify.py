"""systemd's notify protocol, written by the daemon itself.

A datagram of ``KEY=value`` lines to the socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract socket when it starts with ``@``). Without that
variable every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("oaasd.notify")


class SystemdNotifier:
    """Sends READY/STATUS/STOPPING/WATCHDOG to the service manager."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_s = _watchdog_interval(env)

    @property
    def active(self) -> bool:
        """True when a service manager listens."""
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """Send one datagram; a failure is logged, never raised."""
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %r: %s", self.address, exc)

    async def run(self, status: Callable[[], str], every_s: float = 5.0) -> None:
        """Keep STATUS fresh and, when asked for, pet the watchdog at half its interval."""
        if not self.address:
            return
        period = min(every_s, self.watchdog_s) if self.watchdog_s else every_s
        while True:
            lines = [f"STATUS={status()}"]
            if self.watchdog_s:
                lines.append("WATCHDOG=1")
            self.send(*lines)
            await asyncio.sleep(period)


def _watchdog_interval(env: dict[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
