"""Framing contract events as Server-Sent Events: sse-starlette does the encoding, the
keep-alive pings and the disconnect handling; this module only sets what the contract asks."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from sse_starlette import EventSourceResponse, ServerSentEvent

from service.contract import Body

# Plain LF line ends: what curl users expect to read, and every SSE parser accepts.
SEP = "\n"
MEDIA_TYPE = "text/event-stream; charset=utf-8"
# no-cache and no proxy buffering, so every piece reaches the browser as it is written.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _ping() -> ServerSentEvent:
    # A comment line (": ping"): EventSource ignores it and the Spring relay drops it as an
    # event with empty data, while idle-timeout proxies see traffic.
    return ServerSentEvent(comment="ping", sep=SEP)


async def _encode(events: AsyncGenerator[tuple[str, Body], None]) -> AsyncGenerator[ServerSentEvent, None]:
    async with aclosing(events):
        async for name, body in events:
            # Every event has a name and one line of JSON as data: never empty (bug: event:null).
            yield ServerSentEvent(data=body.to_json(), event=name, sep=SEP)


def event_stream(events: AsyncGenerator[tuple[str, Body], None], ping_interval_s: float) -> EventSourceResponse:
    return EventSourceResponse(
        _encode(events),
        media_type=MEDIA_TYPE,
        headers=HEADERS,
        ping=ping_interval_s,
        ping_message_factory=_ping,
        sep=SEP,
    )
