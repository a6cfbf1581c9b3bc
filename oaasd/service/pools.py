"""Bounded thread pools for the blocking work of the event loop, one per kind of work.

The loop hands a blocking call to a pool and awaits it. Each kind of work has
a pool of its own, so one kind cannot starve another: a load source stuck on
a file system never delays a solve or a tuning's suggestion, and a burst of
suggestions never delays a pipeline's solve.

- ``SOLVE``: the pipeline solver (``POST /v1/pipelines/solve`` and each
  adaptation's plan), CPU-bound, tens of ms;
- ``SUGGEST``: a tuner's next configurations (GP fits, 10-100 ms);
- ``SOURCES``: file load sources (an open, an fstat and a 4 KiB read);
- ``DNS``: name lookups of outbound requests (:mod:`oaasd.outbound`).

Threads are daemon threads started on first use, so a call that never
returns (a hung file system, a stuck lookup) cannot hold the daemon's exit;
``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit and
would. A caller that gives up (``timeout_s``, cancellation) gets its answer
at once; a call still queued then never starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any, Callable


class PoolTimeoutError(Exception):
    """A call did not finish within its time limit (it may still run on; its result is dropped)."""


class Pool:
    """At most ``threads`` blocking calls at once, the others queued in order."""

    def __init__(self, name: str, threads: int):
        self.name = name
        self.threads = threads
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None) -> Any:
        """``fn(*args)`` on one of the pool's threads; :class:`PoolTimeoutError` after ``timeout_s``."""
        job: concurrent.futures.Future = concurrent.futures.Future()
        self._ensure_threads()
        self._queue.put((job, fn, args))
        waiter = asyncio.wrap_future(job)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except asyncio.TimeoutError:
            raise PoolTimeoutError(f"{self.name}: no answer within {timeout_s:g} s") from None
        finally:
            job.cancel()  # a no-op when done; a queued call is then skipped

    def _ensure_threads(self) -> None:
        with self._lock:
            while self._started < self.threads:
                self._started += 1
                threading.Thread(target=self._work, name=f"oaasd-{self.name}-{self._started}", daemon=True).start()

    def _work(self) -> None:
        while True:
            job, fn, args = self._queue.get()
            if not job.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            try:
                job.set_result(fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine, re-raised there
                job.set_exception(exc)


SOLVE = Pool("solve", 2)
SUGGEST = Pool("suggest", 2)
SOURCES = Pool("sources", 2)
DNS = Pool("dns", 4)
