"""The application: settings and engine on ``app.state``, routes, and one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.bodylimit import BodyLimitMiddleware
from service.api.drain import Drain, InFlightMiddleware
from service.api.exposure import ExposureMiddleware
from service.api.page import render_page
from service.api.routes import RECOMMENDATION_PREFIX, error_response, health_router, page_router, router
from service.engine import Engine
from service.logs import RequestIdMiddleware, printable
from service.metrics import Metrics
from service.recommend.contract import HTTP_MESSAGES, MSG_BAD_REQUEST, MSG_INVALID_CHOICE, InvalidInput, ServiceError
from service.recommend.serving import RecommendationService
from service.recommend.sessions import SessionStore, memory_store
from service.settings import Settings

logger = logging.getLogger(__name__)


def _validation_error(exc: RequestValidationError) -> InvalidInput:
    """Framework validation failures in the contract's shape: a field of the wrong type is a
    value outside the allowed lists; a body that is not a JSON object is a bad request."""
    fields = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        if len(location) >= 2 and location[0] in {"body", "query"} and error.get("type") != "json_invalid":
            fields.append(location[1])
    if fields:
        return InvalidInput(MSG_INVALID_CHOICE, data={"invalidFields": sorted(set(fields))}, detail=_error_summary(exc))
    return InvalidInput(MSG_BAD_REQUEST, detail=_error_summary(exc))


def _error_summary(exc: RequestValidationError) -> str:
    return ", ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ()))}:{error.get('type')}" for error in exc.errors()
    )


async def _warm_up(service: RecommendationService, ready: asyncio.Event) -> None:
    """Evaluate the shared instructions once, so the first user does not pay for them; then
    /ready says 200. A warm-up failure is logged and the service still becomes ready."""
    try:
        await service.warm_up()
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("warm-up failed; serving anyway")
    ready.set()


def create_app(settings: Settings, engine: Engine, sessions: SessionStore | None = None) -> FastAPI:
    """The app around a loaded engine and a session store; the app closes both when it
    shuts down. Without a store, conversations live in this process's memory."""
    store = sessions if sessions is not None else memory_store(settings)
    metrics = Metrics()
    service = RecommendationService(engine, settings, store, metrics)
    service.check_context_fits()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm_up = asyncio.create_task(_warm_up(service, app.state.ready))
        yield
        warm_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm_up
        await engine.aclose()
        await store.aclose()

    docs = settings.docs_enabled
    app = FastAPI(
        title="Leafresh challenge recommender",
        version="0.1.0",
        lifespan=lifespan,
        description="Streams three Korean eco-friendly challenges over Server-Sent Events (see CONTRACT.md).",
        # The API's map is for developers, not for whoever reaches the port (issue #21).
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.ready = asyncio.Event()
    app.state.drain = Drain()
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.request_timeout_s)
    app.add_middleware(InFlightMiddleware, drain=app.state.drain, prefix=RECOMMENDATION_PREFIX)
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    app.add_middleware(ExposureMiddleware, token=token, allowed_hosts=settings.allowed_host_list)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    app.include_router(health_router)
    if settings.page_enabled:
        render_page()  # a broken page template stops start-up, not the first visitor
        app.include_router(page_router)

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError) -> Response:
        log = logger.warning if exc.status < 500 else logger.error
        log("%s %s -> %d %s", request.method, printable(request.url.path), exc.status, exc.detail or exc.message)
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        error = _validation_error(exc)
        # Field names and error types only: the values are user input and are never logged.
        logger.warning("%s %s -> 400 %s", request.method, printable(request.url.path), _error_summary(exc))
        return error_response(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The framework's own errors (unknown path, wrong method, unreadable body) in our shape.
        error = ServiceError(HTTP_MESSAGES.get(exc.status_code, MSG_BAD_REQUEST), detail=str(exc.detail))
        error.status = exc.status_code
        if exc.headers:
            error.headers.update(exc.headers)
        if exc.status_code in (408, 413):
            # The rest of that body is never read: the connection ends with this answer.
            error.headers["Connection"] = "close"
        logger.warning("%s %s -> %d %s", request.method, printable(request.url.path), exc.status_code, exc.detail)
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s -> 500", request.method, printable(request.url.path))
        return error_response(request, ServiceError())

    return app
