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
        if cut:
            logger.warning("shutdown grace of %.0f s over: %d still running were cut with 503", grace, cut)
        else:
            logger.info("drained in %.1f s: every accepted request ended on its own", perf_counter() - started)
        self.should_exit = True


def serve(app: object, host: str, port: int, drain: Drain, grace_s: Callable[[], float]) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=AFTER_DRAIN_S,
    )
    DrainingServer(config, drain, grace_s).run()
