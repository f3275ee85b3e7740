"""Who may talk to the service: an optional shared token and the Host names it answers to
(issue #21).

Behind the Spring relay the service trusts its caller: it reads ``sessionId`` as given, so
whoever can reach the port can read and steer anyone's conversation, and read ``/metrics``.
That is acceptable only if nothing but the relay can reach it. ``LEAFRESH_API_TOKEN`` lets an
operator make sure of that: every request then needs ``Authorization: Bearer <token>``, compared
in constant time, except the probes (``/health``, ``/ready``), which orchestrators and load
balancers send without credentials and which say nothing private. ``LEAFRESH_ALLOWED_HOSTS``
refuses a ``Host`` header that is not ours, which closes DNS rebinding (a web page whose name
suddenly points at this service's address, calling it from a browser).

Refusals have the contract's shape (in-band for stream readers), like every other error.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.routes import error_response
from service.recommend.contract import InvalidInput, ServiceError, Unauthorized

# What orchestrators and load balancers probe, without credentials and by address.
PROBES = frozenset({"/health", "/ready"})


class ExposureMiddleware:
    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        error: ServiceError
        if self.allowed_hosts and not _host_allowed(headers.get(b"host", b""), self.allowed_hosts):
            error = InvalidInput(detail="Host header not in LEAFRESH_ALLOWED_HOSTS")
        elif self.token is not None and not _token_matches(headers.get(b"authorization", b""), self.token):
            error = Unauthorized(headers={"WWW-Authenticate": "Bearer"}, detail="missing or wrong API token")
        else:
            await self.app(scope, receive, send)
            return
        await error_response(Request(scope, receive), error)(scope, receive, send)


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``[::1]``."""
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.partition(":")[0]


def _host_allowed(raw: bytes, allowed: tuple[str, ...]) -> bool:
    host = _host_name(raw.decode("latin-1").strip().lower())
    return any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in allowed)


def _token_matches(raw: bytes, token: bytes) -> bool:
    scheme, _, given = raw.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)
