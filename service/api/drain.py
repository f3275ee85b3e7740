"""Leaving without dropping an answer: what SIGTERM starts (issue #20).

Kubernetes, compose and systemd stop a replica with SIGTERM, wait, then kill it. Until issue #20
every open stream ended at SIGTERM with error + close (503), so a rolling restart showed every user
in the middle of an answer the Korean error, once per replica per release. Now SIGTERM drains:

1. ``/ready`` answers 503 at once (its body says the replica is draining), so the load balancer
   and Kubernetes' endpoints stop sending here; ``/health`` stays 200, so nothing restarts a
   replica that is only leaving;
2. a new recommendation request that still arrives is refused at once: 503 with Retry-After
   (in-band error + close for stream readers), never accepted and never left hanging;
3. every request already accepted, generating or queued, goes on and ends as it would have;
4. only what is still running when the grace runs out (``LEAFRESH_SHUTDOWN_GRACE_S``) is cut:
   error + close (503) for stream readers, the contract's JSON 503 for JSON clients.

A second SIGTERM, or SIGINT, cuts at once. The server (``service.api.server``) stops listening
only after this, so health checks keep getting their 503 until the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Receive, Scope, Send

# How long cut streams get to write their error + close before the server stops.
CUT_FLUSH_S = 5.0


class Drain:
    """The replica's drain state, and the count of recommendation requests in flight."""

    def __init__(self) -> None:
        self.draining = False
        # Set when the grace is over: every stream and JSON wait still open ends with 503.
        self.cut = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def cut_now(self) -> None:
        self.draining = True
        self.cut.set()

    async def run(self, grace_s: float) -> int:
        """Drain: refuse new work, wait up to ``grace_s`` for what was accepted, then cut what is
        left. Returns how many requests were cut (0: everything ended on its own)."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        if self._idle.is_set() and not self.cut.is_set():
            return 0
        cut = self._in_flight
        self.cut.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=CUT_FLUSH_S)
        return cut


class InFlightMiddleware:
    """Counts the requests under ``prefix`` (the recommendation routes) from their first byte to
    their last, so the drain knows when the last accepted answer has been delivered."""

    def __init__(self, app: ASGIApp, drain: Drain, prefix: str) -> None:
        self.app = app
        self.drain = drain
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()
