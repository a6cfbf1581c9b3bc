"""The in-process event hub: state changes, metrics and results, fanned out.

Publishing never blocks and never waits for a consumer: it appends to each
subscription's bounded queue and sets a flag, nothing more (no await, no
task, no I/O). One that falls ``size`` events behind is closed with a final
``overflow`` event instead of growing memory or stalling the loops. The
consumer (an SSE stream) takes what is queued in one ``batch()`` and writes
it at once, and ends when it reads ``overflow`` or the hub is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from typing import Any, Callable

QUEUE_SIZE = 1000

Event = dict[str, Any]


class Subscription:
    """One consumer's bounded queue of events, filtered at publish time."""

    def __init__(self, hub: "EventHub", accept: Callable[[Event], bool] | None, size: int, owner: str | None):
        self._hub = hub
        self._accept = accept
        self._size = size
        self.owner = owner
        self._queue: deque[Event] = deque()  # bounded by offer(), room kept for overflow
        self._ready = asyncio.Event()  # set while events are queued or once closed
        self.closed = False

    def offer(self, event: Event) -> None:
        """Queue ``event`` if wanted; a full queue closes the subscription with ``overflow``."""
        if self.closed or (self._accept is not None and not self._accept(event)):
            return
        if len(self._queue) >= self._size:
            self._queue.append({"seq": event["seq"], "type": "overflow", "at": event["at"],
                                "message": f"subscriber fell {self._size} events behind"})
            self.close()
            return
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> Event:
        """The next event, waiting for one."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def batch(self) -> list[Event]:
        """Every event queued now, waiting for at least one; [] once closed and read out."""
        while not self._queue and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        out = list(self._queue)
        self._queue.clear()
        return out

    def close(self) -> None:
        """Stop receiving events (queued ones can still be read)."""
        if not self.closed:
            self.closed = True
            self._hub.unsubscribe(self)
        self._ready.set()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Fans each published event out to the current subscriptions."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._subscriptions: set[Subscription] = set()
        self._owners: Counter[str | None] = Counter()
        self.queue_size = queue_size
        self.seq = 0

    def publish(self, event: Event) -> None:
        """Stamp ``event`` with a sequence number and time; deliver it without waiting."""
        self.seq += 1
        event = {"seq": self.seq, "at": time.time(), **event}
        for sub in list(self._subscriptions):  # offer() may close (and remove) a subscription
            sub.offer(event)

    def subscribe(self, accept: Callable[[Event], bool] | None = None, owner: str | None = None) -> Subscription:
        """A new subscription to events published from now on that ``accept`` keeps."""
        sub = Subscription(self, accept, self.queue_size, owner)
        self._subscriptions.add(sub)
        self._owners[owner] += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Drop a subscription (a no-op when already gone)."""
        if sub in self._subscriptions:
            self._subscriptions.discard(sub)
            self._owners[sub.owner] -= 1

    def close_all(self) -> None:
        """End every subscription (daemon shutdown): each consumer reads what is queued, then stops."""
        for sub in list(self._subscriptions):
            sub.close()

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def subscribers_of(self, owner: str | None) -> int:
        """How many subscriptions ``owner`` has open."""
        return self._owners[owner]
