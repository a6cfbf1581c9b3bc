"""The in-process event hub: state changes, metrics and results, fanned out.

Publishing costs the same however many subscribers there are: it appends the
event to one shared, bounded log (the last ``size`` events) and sets one
timer (readers wake at most every ``FLUSH_S``, so a burst of submissions
costs each stream one wake-up and one write); no await, no task, no I/O,
no per-subscriber work. Each subscription
is a cursor into that log: its consumer (an SSE stream) takes every event
it has not read yet in one ``batch()``, filtered then, and writes them at
once. A consumer that falls ``size`` events behind reads a final
``overflow`` event instead of growing memory or stalling the loops; a
stalled one costs nothing but its cursor. The stream ends when it reads
``overflow`` or the hub is closed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, deque
from typing import Any, Callable

from oaasd.ports import EventSink

log = logging.getLogger("oaasd")

QUEUE_SIZE = 1000
FLUSH_S = 0.02  # a burst of events reaches each stream in one write, at most this late

Event = dict[str, Any]


class Subscription:
    """One consumer's cursor into the hub's log, with its filter."""

    def __init__(self, hub: "EventHub", accept: Callable[[Event], bool] | None, owner: str | None):
        self._hub = hub
        self._accept = accept
        self.owner = owner
        self._next = hub.seq + 1  # the first sequence number not read yet
        self._unread: deque[Event] = deque()  # taken but not yet handed out by get()
        self.closed = False

    def take(self) -> list[Event]:
        """Every wanted event published since the last take (maybe none), without waiting."""
        hub = self._hub
        if self.closed or self._next > hub.seq:
            return []
        first = hub.seq - len(hub.log) + 1
        if self._next < first:
            missed = {"seq": hub.seq, "type": "overflow", "at": time.time(),
                      "message": f"subscriber fell {hub.queue_size} events behind"}
            self.close()
            return [missed]
        new = list(itertools.islice(reversed(hub.log), hub.seq - self._next + 1))  # O(new), not O(log)
        new.reverse()
        self._next = hub.seq + 1
        return [e for e in new if self._accept is None or self._accept(e)]

    async def batch(self) -> list[Event]:
        """Every wanted event not read yet, waiting for at least one; [] once closed."""
        while True:
            out = self.take()
            if out or self.closed:
                return out
            await self._hub.published()

    async def get(self) -> Event:
        """The next event, waiting for one."""
        while not self._unread:
            self._unread.extend(await self.batch())
        return self._unread.popleft()

    def close(self) -> None:
        """Stop receiving events."""
        if not self.closed:
            self.closed = True
            self._hub.unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Keeps the last ``queue_size`` events for the subscriptions to read."""

    def __init__(self, queue_size: int = QUEUE_SIZE, flush_s: float = FLUSH_S) -> None:
        self._subscriptions: set[Subscription] = set()
        self._owners: Counter[str | None] = Counter()
        self.queue_size = queue_size
        self.log: deque[Event] = deque(maxlen=queue_size)
        self._ready = asyncio.Event()  # set by the flush timer; a waiting consumer clears it first
        self._flush: asyncio.TimerHandle | None = None
        self.flush_s = flush_s
        self.seq = 0

    def publish(self, event: Event) -> None:
        """Stamp ``event`` with a sequence number and time; append it for every reader, without waiting."""
        self.seq += 1
        self.log.append({"seq": self.seq, "at": time.time(), **event})
        if self._flush is None:  # readers wake once per flush_s, not once per event
            self._flush = asyncio.get_running_loop().call_later(self.flush_s, self._wake)

    def _wake(self) -> None:
        self._flush = None
        self._ready.set()

    async def published(self) -> None:
        """Wait until something is published (or the hub closes)."""
        self._ready.clear()
        await self._ready.wait()

    def subscribe(self, accept: Callable[[Event], bool] | None = None, owner: str | None = None) -> Subscription:
        """A new subscription to events published from now on that ``accept`` keeps."""
        sub = Subscription(self, accept, owner)
        self._subscriptions.add(sub)
        self._owners[owner] += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Drop a subscription (a no-op when already gone)."""
        if sub in self._subscriptions:
            self._subscriptions.discard(sub)
            self._owners[sub.owner] -= 1

    def close_all(self) -> None:
        """End every subscription (daemon shutdown): each waiting consumer wakes and stops."""
        for sub in list(self._subscriptions):
            sub.close()
        self._ready.set()

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def subscribers_of(self, owner: str | None) -> int:
        """How many subscriptions ``owner`` has open."""
        return self._owners[owner]


def publish_state(sink: EventSink, task_id: int, old: str | None, new: str, reason: str,
                  message: str | None = None, result: Any = None, node: str | None = None) -> None:
    """Tell ``sink`` about a committed state change of a task (and log it, one line)."""
    where = f" on {node}" if node else ""
    log.info("task %d: %s -> %s (%s)%s%s", task_id, old and str(old), str(new), reason, where,
             f": {message}" if message else "", extra={"task": task_id, "node": node})
    event = {"type": "state", "task_id": task_id, "old": old and str(old), "new": str(new),
             "reason": str(reason), "message": message}
    if result is not None:
        event["result"] = result
    sink.publish(event)
