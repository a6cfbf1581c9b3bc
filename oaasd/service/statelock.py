"""One daemon per state dir: an exclusive ``flock`` held for the process's life.

The lock file ``<state_dir>/oaasd.lock`` holds the holder's pid (for the
message a second daemon prints). The kernel drops the lock when the process
exits, however it exits, so a stale file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from oaasd.errors import StartupError

LOCK_NAME = "oaasd.lock"


class StateLock:
    """The exclusive lock on one state dir; ``acquire`` also proves the dir is writable."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True once this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Create the dir if needed and take the lock, or raise StartupError naming the dir."""
        if self._fd is not None:
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StartupError(f"state dir {self.state_dir} is not usable: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StartupError(f"state dir {self.state_dir} is in use by another oaasd{who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; its pid is only a hint)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, when it reads as one."""
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None
