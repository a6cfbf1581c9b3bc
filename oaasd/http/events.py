"""Server-Sent Events: the daemon's state changes, metrics and results as they happen.

``GET /v1/events`` streams every event the caller may see (``?task=ID``,
``?types=state,metric,tuning`` narrow it); ``GET /v1/tasks/{id}/events``
replays one task's stored history first, then follows it live and ends after
its final state. Each event is ``id:`` (the hub's sequence number),
``event:`` (its type) and one ``data:`` line of JSON; a comment line keeps
idle streams alive. A stream ends when the client leaves (seen at the next
write), when it falls too far behind (``event: overflow``), when one write
waits longer than ``server.event_write_timeout_s`` (a client that stopped
reading) or when the daemon stops. Streams are capped per user
(``server.max_subscribers_per_user``, 429) and in all
(``server.max_subscribers``, 503). Everything queued for a stream is
written in one go, and an event's owner is read once however many streams
ask (non-admin streams only), so fan-out costs the intake path nothing but
a list append per subscriber.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from oaasd.errors import InvalidRequestError, OverloadedError, RateLimitedError
from oaasd.http import auth
from oaasd.http.common import SERVICES, int_param
from oaasd.service.events import Event, Subscription
from oaasd.states import is_final
from oaasd.store.db import Store
from oaasd.store.owners import OWNER_OF, owner_of

routes = web.RouteTableDef()

KEEPALIVE_S = 15.0
TYPES = ("state", "metric", "tuning")
OWNERS_CACHED = 4096


class Owners:
    """Who owns the task or tuning an event is about, cached (asked for non-admin streams only).

    The cache holds futures: the many streams that see a new task's first
    event at once share one read instead of one read each.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], asyncio.Future] = {}

    async def of(self, store: Store, event: Event) -> str | None:
        """The owning user of ``event``'s task or tuning; None when it names neither."""
        for key in OWNER_OF:  # the keys of an event that name an owned object
            if key in event:
                ident = (key, event[key])
                found = self._cache.get(ident)
                if found is None and "user" in event:  # a new task's first event names its owner
                    found = self._cache[ident] = asyncio.get_running_loop().create_future()
                    found.set_result(event["user"])
                if found is None:
                    if len(self._cache) >= OWNERS_CACHED:
                        self._cache.clear()
                    found = self._cache[ident] = asyncio.ensure_future(owner_of(store, key, event[key]))
                    found.add_done_callback(lambda f, ident=ident: self._forget_failed(ident, f))
                if found.done():  # the common case: no await, no new future per stream and event
                    return found.result()
                return await asyncio.shield(found)
        return None

    def _forget_failed(self, ident: tuple[str, int], found: asyncio.Future) -> None:
        if found.cancelled() or found.exception() is not None:  # the next event asks again
            self._cache.pop(ident, None)


OWNERS: web.AppKey[Owners] = web.AppKey("event_owners", Owners)


def setup(app: web.Application) -> None:
    """Add the event routes and their owner cache to the app; shutdown ends every stream."""
    app[OWNERS] = Owners()
    app.add_routes(routes)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    app[SERVICES].events.close_all()


def subscribe(request: web.Request, accept: Callable[[Event], bool]) -> Subscription:
    """A subscription for the caller, refused past the per-user (429) or total (503) cap."""
    s = request.app[SERVICES]
    cfg, events = s.settings.server, s.events
    who = auth.caller(request).name
    if events.subscribers >= cfg.max_subscribers:
        raise OverloadedError(f"{events.subscribers} event streams are open; retry later",
                              [{"field": "server.max_subscribers", "problem": f"at most {cfg.max_subscribers}"}])
    if events.subscribers_of(who) >= cfg.max_subscribers_per_user:
        raise RateLimitedError(f"user {who} has {events.subscribers_of(who)} event streams open", 5.0,
                               [{"field": "server.max_subscribers_per_user",
                                 "problem": f"at most {cfg.max_subscribers_per_user} per user"}])
    return events.subscribe(accept, owner=who)


_FORMATTED: dict[int, bytes] = {}  # live events by seq: formatted once, however many streams send them


def format_event(event: Event) -> bytes:
    """One SSE message: ``id:`` when the event has a sequence number, ``event:``, ``data:``."""
    live = "seq" in event and event["type"] != "overflow" and not event.get("replay")
    if live and (done := _FORMATTED.get(event["seq"])) is not None:
        return done
    head = f"id: {event['seq']}\n" if "seq" in event else ""
    text = f"{head}event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
    if live:
        if len(_FORMATTED) >= 4096:
            _FORMATTED.clear()
        _FORMATTED[event["seq"]] = text
    return text


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Start a ``text/event-stream`` response."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    return resp


async def write(request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
    """One write, bounded in time: a client that stopped reading is cut off (ConnectionError).

    A write that leaves the transport's buffer under its high-water mark cannot
    block, so only the others pay for a timer.
    """
    transport = request.transport
    if transport is not None and transport.get_write_buffer_size() + len(data) < _high_water(transport):
        await resp.write(data)
        return
    try:
        async with asyncio.timeout(request.app[SERVICES].settings.server.event_write_timeout_s):
            await resp.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # its unsent buffer is dropped, not kept for ever
        raise ConnectionResetError("event stream client stopped reading") from None


def _high_water(transport: asyncio.BaseTransport) -> int:
    try:
        return transport.get_write_buffer_limits()[1]  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return 0  # unknown: always bounded


async def pump(request: web.Request, resp: web.StreamResponse, sub: Subscription,
               send: Callable[[Event], Awaitable[bool]], last: Callable[[Event], bool]) -> None:
    """Write the events ``send`` keeps until ``last`` says so, an overflow, or the hub closes.

    Every event queued meanwhile goes out in one write. A client that left
    raises ConnectionError at the next write (an event or the keep-alive comment).
    """
    while True:
        events = sub.take()
        if not events and not sub.closed:
            try:  # a timer only when the stream has to wait
                async with asyncio.timeout(KEEPALIVE_S):
                    events = await sub.batch()
            except TimeoutError:
                await write(request, resp, b": keep-alive\n\n")
                continue
        if not events:
            return  # closed: the daemon is stopping
        out, done = [], False
        for event in events:
            done = event["type"] == "overflow"
            if done or await send(event):
                out.append(format_event(event))
                done = done or last(event)
            if done:
                break
        if out:
            await write(request, resp, b"".join(out))
        if done:
            return


def parse_types(request: web.Request) -> frozenset[str]:
    """The ``types`` query parameter: a comma list of event types (default: all)."""
    raw = request.query.get("types")
    if raw is None:
        return frozenset(TYPES)
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = sorted(types - set(TYPES))
    if unknown or not types:
        raise InvalidRequestError(f"types must be a comma list of {', '.join(TYPES)}",
                                  [{"field": "types", "problem": f"unknown event types {unknown[:5]}"
                                    if unknown else "empty"}])
    return types


async def finish(resp: web.StreamResponse) -> web.StreamResponse:
    """End a stream, quietly when the client has already gone."""
    try:
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


@routes.get("/v1/events")
async def all_events(request: web.Request) -> web.StreamResponse:
    """Every event the caller may see, live; ``?task=ID`` and ``?types=`` narrow it."""
    store = request.app[SERVICES].store
    types = parse_types(request)
    task_id = int_param(request, "task", None, lo=1)
    if task_id is not None:
        auth.require_owner(request, (await store.get_task(task_id))["user"], f"task {task_id}")
    who = auth.caller(request)
    owners = request.app[OWNERS]

    async def visible(event: Event) -> bool:
        return who.admin or await owners.of(store, event) == who.name

    def accept(event: Event) -> bool:
        return event["type"] in types and (task_id is None or event.get("task_id") == task_id)

    with subscribe(request, accept) as sub:
        resp = await open_stream(request)
        try:
            await pump(request, resp, sub, visible, lambda event: False)
        except ConnectionError:
            return resp
    return await finish(resp)


@routes.get("/v1/tasks/{id}/events")
async def task_events(request: web.Request) -> web.StreamResponse:
    """One task's stored history, then its live events; ends after its final state."""
    store = request.app[SERVICES].store
    task_id = int_param(request, "id", lo=1)
    auth.require_owner(request, (await store.get_task(task_id))["user"], f"task {task_id}")
    # Subscribe before reading the history: nothing committed in between is missed.
    with subscribe(request, lambda event: event.get("task_id") == task_id) as sub:
        history = await store.task_events(task_id)
        row = await store.get_task(task_id)  # read after the history: its result is at least as new
        resp = await open_stream(request)
        try:
            for event in replay(task_id, history, row):
                await write(request, resp, format_event(event))
            if not is_final(history[-1]["new"]):
                await pump(request, resp, sub, live_after(history[-1]["new"]), is_final_state)
        except ConnectionError:
            return resp
    return await finish(resp)


def replay(task_id: int, history: list[dict[str, Any]], row: dict[str, Any]) -> list[Event]:
    """A task's stored state events as stream events; the final one carries the result."""
    events = [{"type": "state", "task_id": task_id, "replay": True, **h} for h in history]
    if is_final(events[-1]["new"]) and row["result"] is not None:
        events[-1]["result"] = json.loads(row["result"])
    return events


def live_after(current: str) -> Callable[[Event], Awaitable[bool]]:
    """Keep live events that follow a replay ending in state ``current``.

    A state change published after the subscription but committed before
    the history was read is in both; it is recognised because it does not
    start from the state the stream has reached.
    """
    async def send(event: Event) -> bool:
        nonlocal current
        if event["type"] != "state":
            return True
        if event["old"] != current:
            return False
        current = event["new"]
        return True
    return send


def is_final_state(event: Event) -> bool:
    """True for the event that ends a task's stream."""
    return event["type"] == "state" and is_final(event["new"])
