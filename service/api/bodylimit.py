"""Request bodies have a documented bound (LEAFRESH_MAX_BODY_BYTES), enforced before they are
read: a declared Content-Length over it is refused at the first read, a chunked body the moment
it passes it. Nothing parses a 100 MB body to find out it is too large (issue #13).

The refusal is an HTTPException(413) raised from ``receive``: FastAPI re-raises it from its body
reading, so it reaches the one error mapping and the reader gets the contract's flat body
(in-band for stream readers). Starlette's own RequestBodyLimitMiddleware (FastAPI's
``max_body_size``) would replace that body with a plain-text "Content Too Large" whenever the
declared length is over the limit, so it is not used.

The body must also arrive within LEAFRESH_REQUEST_TIMEOUT_S of the headers (408 otherwise). A 408
or 413 closes the connection (``Connection: close``): the rest of the body is never read.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0
        done = False
        # The whole body must arrive within timeout_s of the headers: a body trickled a byte every
        # few seconds held its connection for as long as the client liked (issue #21).
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited() -> Message:
            nonlocal received, done
            if done:
                # Later reads are the response listening for the client leaving: let them wait.
                return await receive()
            if declared.isdigit() and int(declared) > self.max_bytes:
                done = True
                raise HTTPException(413, f"Content-Length {int(declared)} > {self.max_bytes}")
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                done = True
                raise HTTPException(408, f"body not complete within {self.timeout_s:g}s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    done = True
                    raise HTTPException(413, f"body passed {self.max_bytes} bytes")
                done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)
