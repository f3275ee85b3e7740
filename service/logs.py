"""Logging: one format, a request id on every line, one line per request.

The request id comes from the caller's ``X-Request-ID`` (so the Spring relay's id follows the
request here) or is made, and is echoed back in the response header.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Filled by the serving layer (tokens, first piece), written in the request's one access line.
_request_stats_var: ContextVar[dict[str, object] | None] = ContextVar("request_stats", default=None)


def request_stats() -> dict[str, object]:
    stats = _request_stats_var.get()
    return stats if stats is not None else {}


_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Query parameters that carry a secret in a connection URL (redis-py reads ?password=).
_SECRET_PARAMS = re.compile(r"(?i)([?&](?:password|pass|pwd|token|secret)=)[^&#]*")
_LONGEST_LOGGED_PATH = 200


def redact_url(url: str) -> str:
    """A connection URL without its credentials, in every form: everything between ``//`` and
    the *last* ``@`` (a password may hold ``/`` or ``@``), and secret query parameters."""
    scheme, sep, rest = url.partition("//")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return _SECRET_PARAMS.sub(r"\1***", scheme + sep + rest)


def printable(text: str, limit: int = _LONGEST_LOGGED_PATH) -> str:
    """Text from a request (a path) as one log-safe line: control and invisible characters
    escaped, so a percent-decoded %0A cannot start a forged log line; cut at ``limit``."""
    escaped = "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text[:limit])
    return escaped + ("…" if len(text) > limit else "")


access_logger = logging.getLogger("service.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # llama.cpp's load chatter is useful only when debugging.
    logging.getLogger("llama_cpp").setLevel(max(logging.getLevelName(level), logging.INFO))


class RequestIdMiddleware:
    """Sets the request id and writes the request's one access line when its body is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id_var.set(request_id)
        stats: dict[str, object] = {}
        stats_token = _request_stats_var.set(stats)
        started = perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            extra = "".join(f" {key}={_short(value)}" for key, value in stats.items() if value is not None)
            access_logger.info(
                "%s %s route=%s status=%d duration_s=%.3f%s",
                scope["method"],
                printable(scope["path"]),
                route,
                status,
                perf_counter() - started,
                extra,
            )
            metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
            if metrics is not None:
                metrics.requests.labels(route=route, status=str(status)).inc()
            _request_stats_var.reset(stats_token)
            request_id_var.reset(token)


def _short(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
