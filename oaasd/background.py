"""Background coroutines that are never silent: a failure stops the daemon."""

from __future__ import annotations

import asyncio
from typing import Callable, Coroutine


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
        if not task.cancelled() and task.exception() is not None:
            self._fatal(f"{task.get_name()} died: {task.exception()!r}")

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them (daemon shutdown)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
