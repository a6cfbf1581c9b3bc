"""The in-process event hub: state changes, metrics and results, fanned out.

Publishing never blocks and never waits for a consumer: each subscription
has a bounded queue, and one that falls ``size`` events behind is closed
with a final ``overflow`` event instead of growing memory or stalling the
loops. The consumer (an SSE stream) ends when it reads that event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

QUEUE_SIZE = 1000

Event = dict[str, Any]


class Subscription:
    """One consumer's bounded queue of events, filtered at publish time."""

    def __init__(self, hub: "EventHub", accept: Callable[[Event], bool] | None, size: int):
        self._hub = hub
        self._accept = accept
        self._size = size
        self._queue: asyncio.Queue[Event] = asyncio.Queue()  # bounded by offer(), room kept for overflow
        self.closed = False

    def offer(self, event: Event) -> None:
        """Queue ``event`` if wanted; a full queue closes the subscription with ``overflow``."""
        if self.closed or (self._accept is not None and not self._accept(event)):
            return
        if self._queue.qsize() >= self._size:
            self._queue.put_nowait({"seq": event["seq"], "type": "overflow", "at": event["at"],
                                    "message": f"subscriber fell {self._size} events behind"})
            self.close()
            return
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        """The next event, waiting for one."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events (queued ones can still be read)."""
        self.closed = True
        self._hub.unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Fans each published event out to the current subscriptions."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._subscriptions: set[Subscription] = set()
        self.queue_size = queue_size
        self.seq = 0

    def publish(self, event: Event) -> None:
        """Stamp ``event`` with a sequence number and time; deliver it without waiting."""
        self.seq += 1
        event = {"seq": self.seq, "at": time.time(), **event}
        for sub in list(self._subscriptions):  # offer() may close (and remove) a subscription
            sub.offer(event)

    def subscribe(self, accept: Callable[[Event], bool] | None = None) -> Subscription:
        """A new subscription to events published from now on that ``accept`` keeps."""
        sub = Subscription(self, accept, self.queue_size)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Drop a subscription (a no-op when already gone)."""
        self._subscriptions.discard(sub)

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)
