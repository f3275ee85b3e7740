"""Framing contract events as Server-Sent Events: sse-starlette does the encoding, the
keep-alive pings and the disconnect handling; this module only sets what the contract asks, and
ends a stream with error + close (503) when a draining server's grace is over (``drain.cut``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from service.recommend.contract import Body, ShuttingDown, error_then_close
from service.settings import Settings

# Plain LF line ends: what curl users expect to read, and every SSE parser accepts.
SEP = "\n"
MEDIA_TYPE = "text/event-stream; charset=utf-8"
# no-cache and no proxy buffering, so every piece reaches the browser as it is written.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _ping() -> ServerSentEvent:
    # A comment line (": ping"): EventSource ignores it and the Spring relay drops it as an
    # event with empty data, while idle-timeout proxies see traffic.
    return ServerSentEvent(comment="ping", sep=SEP)


def _frame(name: str, body: Body) -> ServerSentEvent:
    # Every event has a name and one line of JSON as data: never empty (bug: event:null).
    return ServerSentEvent(data=body.to_json(), event=name, sep=SEP)


async def _encode(
    events: AsyncGenerator[tuple[str, Body], None], cut: asyncio.Event
) -> AsyncGenerator[ServerSentEvent, None]:
    """The events as frames, until a draining server cuts what is left: then the generation is
    stopped and the reader gets error + close (503), so the relay ends the browser's stream cleanly.

    Each next event is awaited in its own task so that the cut can interrupt the wait. That
    task must be finished before the events are closed: closing a generator that another task
    is still running raises, and the engine slot it holds would never be given back (found by
    the schemathesis run when a reader left mid-stream).
    """
    stop = asyncio.ensure_future(cut.wait())
    pending: asyncio.Future[tuple[str, Body]] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(events))
            await asyncio.wait((pending, stop), return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                await _finish(pending)
                pending = None
                for name, body in error_then_close(ShuttingDown()):
                    yield _frame(name, body)
                return
            done, pending = pending, None
            try:
                name, body = done.result()
            except StopAsyncIteration:
                return
            yield _frame(name, body)
    finally:
        if pending is not None:
            await _finish(pending)
        await _finish(stop)
        await events.aclose()


async def _finish(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has really stopped."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await task


def event_stream(
    events: AsyncGenerator[tuple[str, Body], None], settings: Settings, cut: asyncio.Event
) -> EventSourceResponse:
    return EventSourceResponse(
        _encode(events, cut),
        media_type=MEDIA_TYPE,
        headers=HEADERS,
        ping=settings.ping_interval_s,
        ping_message_factory=_ping,
        sep=SEP,
        # A reader that stops reading is dropped instead of making us buffer without bound.
        send_timeout=settings.send_timeout_s,
    )
