"""HTTP routes: parse and check, hand over to the service, stream back. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from service.api.drain import Drain
from service.api.page import render_page
from service.api.sse import event_stream
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.recommend.contract import (
    MSG_DRAINING,
    Body,
    EngineDown,
    NotReady,
    ServiceError,
    ShuttingDown,
    error_then_close,
)
from service.recommend.protocol import (
    BaseInfoBody,
    BaseInfoRequest,
    FreeTextBody,
    FreeTextRequest,
    decode_twice_encoded,
    parse_base_info,
    parse_free_text,
    single_values,
)
from service.recommend.serving import RecommendationService

RECOMMENDATION_PREFIX = "/ai/chatbot/recommendation"


def get_service(request: Request) -> RecommendationService:
    service: RecommendationService = request.app.state.service
    return service


def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


ServiceDep = Annotated[RecommendationService, Depends(get_service)]
DrainDep = Annotated[Drain, Depends(get_drain)]


def refuse_while_draining(request: Request, drain: DrainDep) -> None:
    """A replica that is leaving takes no new work: 503 with Retry-After, at once (issue #20)."""
    if drain.draining:
        retry_after = str(request.app.state.settings.retry_after_s)
        raise ShuttingDown(headers={"Retry-After": retry_after}, detail="draining: a new request was refused")


router = APIRouter(prefix=RECOMMENDATION_PREFIX, tags=["recommendation"], dependencies=[Depends(refuse_while_draining)])
health_router = APIRouter(tags=["health"])
page_router = APIRouter(tags=["page"])


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "").lower()


async def _error_events(error: ServiceError) -> AsyncGenerator[tuple[str, Body], None]:
    for event in error_then_close(error):
        yield event


def error_response(request: Request, error: ServiceError) -> Response:
    """In-band (200, error + close) for stream readers, so the relay ends the browser's
    stream and the user sees the Korean message; the HTTP status for everyone else."""
    if 400 <= error.status < 500:
        request.app.state.metrics.validation_failures.labels(status=str(error.status)).inc()
    if wants_event_stream(request):
        response: Response = _stream(request, _error_events(error))
    else:
        response = JSONResponse(error.body().model_dump(mode="json"), status_code=error.status)
    response.headers.update(error.headers)
    return response


# What the access log shows for a JSON client that left before its answer (nginx's code).
CLIENT_CLOSED_REQUEST = 499


async def _client_left(request: Request) -> None:
    # The body has been read: the next message is the client leaving.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _stream(request: Request, events: AsyncGenerator[tuple[str, Body], None]) -> Response:
    return event_stream(events, request.app.state.settings, get_drain(request).cut)


async def _json_answer(request: Request, work: Awaitable[Body]) -> Response:
    """One JSON answer, unless the client leaves first: then its generation is cancelled, as a
    stream reader's is, instead of holding an engine slot to the end (issue #13). A draining
    server's cut ends the wait with the contract's JSON 503."""
    answer = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_client_left(request))
    cut = asyncio.ensure_future(get_drain(request).cut.wait())
    try:
        await asyncio.wait((answer, left, cut), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (answer, left, cut):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if answer.cancelled() and cut.done():
        raise ShuttingDown(detail="the shutdown grace ran out before the answer")
    if answer.cancelled():
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(answer.result().model_dump(mode="json"))


def _query(value: str | None) -> str | None:
    return decode_twice_encoded(value) if value is not None else None


def client_key(request: Request, session_id: str | None) -> str:
    """Who is asking, for the fair share of the engine: the end user the relay names in
    LEAFRESH_CLIENT_HEADER, else the conversation, else the peer address (issue #21)."""
    named = request.headers.get(request.app.state.settings.client_header, "").strip()
    if named and len(named) <= 200 and named.isprintable():
        return f"user:{named}"
    if session_id is not None:
        return f"session:{session_id}"
    return f"peer:{request.client.host if request.client else 'unknown'}"


Checked = TypeVar("Checked", BaseInfoRequest, FreeTextRequest)


def _of_client(request: Request, checked: Checked) -> Checked:
    """The checked request, with who is asking."""
    return replace(checked, client=client_key(request, checked.session_id))


def _one_of_each(request: Request, *names: str) -> None:
    query = {name: request.query_params.getlist(name) for name in names}
    single_values(query, names)


@router.get("/base-info", summary="Stream three challenges for a place, a kind of work and a category")
async def base_info_stream(
    request: Request,
    service: ServiceDep,
    sessionId: str | None = None,
    location: str | None = None,
    workType: str | None = None,
    category: str | None = None,
) -> Response:
    _one_of_each(request, "sessionId", "location", "workType", "category")
    values = {
        "sessionId": _query(sessionId),
        "location": _query(location),
        "workType": _query(workType),
        "category": _query(category),
    }
    checked = _of_client(request, parse_base_info(values))
    return _stream(request, service.stream_base_info(checked))


@router.post("/base-info", summary="Three challenges as a stream (Accept: text/event-stream) or one JSON answer")
async def base_info(request: Request, service: ServiceDep, body: BaseInfoBody) -> Response:
    checked = _of_client(request, parse_base_info(body.model_dump()))
    if wants_event_stream(request):
        return _stream(request, service.stream_base_info(checked))
    return await _json_answer(request, service.answer_base_info(checked))


@router.get("/free-text", summary="Stream three challenges for a free-text message, continuing the session")
async def free_text_stream(
    request: Request,
    service: ServiceDep,
    sessionId: str | None = None,
    message: str | None = None,
) -> Response:
    _one_of_each(request, "sessionId", "message")
    values = {"sessionId": _query(sessionId), "message": _query(message)}
    checked = _of_client(request, parse_free_text(values, service.settings.max_message_chars))
    return _stream(request, service.stream_free_text(checked))


@router.post("/free-text", summary="Free-text challenges as a stream (Accept: text/event-stream) or one JSON answer")
async def free_text(request: Request, service: ServiceDep, body: FreeTextBody) -> Response:
    checked = _of_client(request, parse_free_text(body.model_dump(), service.settings.max_message_chars))
    if wants_event_stream(request):
        return _stream(request, service.stream_free_text(checked))
    return await _json_answer(request, service.answer_free_text(checked))


def _engine_down(service: RecommendationService) -> JSONResponse | None:
    """503 once the engine can generate nothing more, so that the orchestrator restarts us."""
    if service.engine.alive:
        return None
    return JSONResponse(EngineDown().body().model_dump(mode="json"), status_code=503)


@health_router.get("/health", summary="Alive: 200 while the process can serve; 503 once its engine has stopped")
async def health(service: ServiceDep) -> Response:
    if (down := _engine_down(service)) is not None:
        return down
    info = service.engine.info
    # The model file's name, not its path: nothing here tells a caller about the host's layout.
    body = Body(
        status=200,
        message="ok",
        data={
            "model": Path(info.model_path).name,
            "chatTemplate": info.chat_template,
            "contextSize": info.context_size,
        },
    )
    return JSONResponse(body.model_dump(mode="json"))


@health_router.get("/ready", summary="Ready: 503 until the model is loaded and warm, and again once draining")
async def ready(request: Request, service: ServiceDep, drain: DrainDep) -> JSONResponse:
    if (down := _engine_down(service)) is not None:
        return down
    if drain.draining:
        body = Body(status=503, message=MSG_DRAINING, data={"draining": True, "inFlight": drain.in_flight})
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    if not request.app.state.ready.is_set():
        return JSONResponse(NotReady().body().model_dump(mode="json"), status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(Body(status=200, message="ready").model_dump(mode="json"))


@health_router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@page_router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """A page to try the service in a browser (LEAFRESH_PAGE_ENABLED=false turns it off)."""
    html, policy = render_page()
    return HTMLResponse(
        html,
        headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )
