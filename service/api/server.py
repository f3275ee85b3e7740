"""uvicorn, with SIGTERM turned into a drain (``service.api.drain``) instead of a cut.

uvicorn on its own stops listening at SIGTERM and lets requests finish; sse-starlette, left to
itself, ends every stream at that moment. Here the first SIGTERM starts the app's drain while the
server keeps listening (so health checks read ``/ready``'s 503), and only once the drain is over
does uvicorn close the listener and stop. A second SIGTERM, or SIGINT, cuts at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from time import perf_counter
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.drain import Drain

logger = logging.getLogger(__name__)

# After the drain, uvicorn waits at most this long for connections still open (cut streams
# writing their error + close, idle keep-alive connections).
AFTER_DRAIN_S = 10


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: Callable[[], float]) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # The drain ends streams itself (error + close at the grace's end); sse-starlette's own
        # shutdown would cancel them at the first signal, before their close is written.
        AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if loop is None:  # not serving yet: nothing to drain
            super().handle_exit(sig, frame)
            return
        if sig == signal.SIGTERM and self._drain_task is None and not self.should_exit:
            loop.call_soon_threadsafe(self._start_drain)
            return
        logger.warning("%s: cutting what is still running now", signal.Signals(sig).name)
        loop.call_soon_threadsafe(self.drain.cut_now)
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        grace = self.grace_s()
        started = perf_counter()
        logger.warning(
            "SIGTERM: draining: /ready answers 503, new requests are refused; %d in flight get up to %.0f s",
            self.drain.in_flight,
            grace,
        )
        cut = await self.drain.run(grace)
        if self.drain.cut.is_set():
            # The grace ran out, or a second signal cut at once while the drain waited.
            logger.warning("after %.1f s, %d still running were cut with 503", perf_counter() - started, cut)
        else:
            logger.info("drained in %.1f s: every accepted request ended on its own", perf_counter() - started)
        self.should_exit = True


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers (issue #21).

    uvicorn times out idle keep-alive connections, but not a connection that sends nothing, or
    trickles its headers a byte at a time: 530 such connections once held every file descriptor
    and /health timed out. Each request's headers must now arrive within ``header_timeout_s``
    of its first byte (or of the connection's opening); otherwise the connection is closed."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_deadline()  # the first bytes of the next request on this connection
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm_header_deadline()  # its headers are complete: the app has the request

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            logger.debug("closed a connection whose request headers took over %.0f s", self.header_timeout_s)
            self.transport.close()


def build_server(
    app: object, host: str, port: int, drain: Drain, grace_s: Callable[[], float], request_timeout_s: float
) -> DrainingServer:
    # uvicorn builds one protocol object per connection from the class it is given, with its own
    # arguments: a subclass carrying the setting is the way to hand the deadline in.
    protocol = type("Protocol", (HeaderDeadlineProtocol,), {"header_timeout_s": request_timeout_s})
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        http=protocol,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=AFTER_DRAIN_S,
    )
    return DrainingServer(config, drain, grace_s)


def serve(
    app: object, host: str, port: int, drain: Drain, grace_s: Callable[[], float], request_timeout_s: float
) -> None:
    build_server(app, host, port, drain, grace_s, request_timeout_s).run()
