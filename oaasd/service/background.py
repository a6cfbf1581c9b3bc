"""Background coroutines that are never silent: a failure stops the daemon.

A full state disk is the one failure that does not: it is logged, and the daemon stays up
(stopping frees no space, and a restart would meet the same full disk).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Coroutine

from oaasd.errors import StorageFullError

log = logging.getLogger("oaasd")


class Background:
    """Owns fire-and-forget tasks; reaps each with ``.exception()`` and reports failures."""

    def __init__(self, fatal: Callable[[str], None]):
        self._fatal = fatal
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        """Run ``coro`` in the background under ``name``."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if isinstance(task.exception(), StorageFullError):  # not a bug, and a restart frees no space
            log.error("%s stopped: %s", task.get_name(), task.exception().message)
            return
        self._fatal(f"{task.get_name()} died: {task.exception()!r}")

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them (daemon shutdown)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
