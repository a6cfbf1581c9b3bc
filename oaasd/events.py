"""The in-process event hub: state changes, metrics and results, fanned out.

Publishing never blocks: each subscriber has a bounded queue, and one that
falls behind loses its oldest events (and is told so) instead of stalling
the loops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

QUEUE_SIZE = 1000


class EventHub:
    """Fans each published event out to the current subscribers."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue] = set()
        self.seq = 0

    def publish(self, event: dict[str, Any]) -> None:
        """Deliver ``event`` to every subscriber without waiting."""
        self.seq += 1
        event = {"seq": self.seq, "at": time.time(), **event}
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                queue.put_nowait({"seq": self.seq, "type": "overflow", "at": event["at"]})
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Yield events published from now on, until the consumer stops."""
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
