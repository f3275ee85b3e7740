"""Recommendations: from a checked request to contract events or one JSON answer.

Routes hand requests here; this module asks the engine for text, renders it, validates the
answer and decides what the consumers see. It never imports llama_cpp.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from time import perf_counter

from service.answer import Answer, check_schema_loads, parse_model_output, render
from service.catalog import CATEGORIES, LOCATIONS, WORK_TYPES, Category
from service.contract import (
    EVENT_CHALLENGE,
    EVENT_CLOSE,
    EVENT_ERROR,
    MSG_BASE_INFO_ANSWER,
    Body,
    ModelFailure,
    ServiceError,
    close_body,
    token_body,
)
from service.engine import ChatMessage, Engine, GenerationRequest
from service.grammar import load_challenge_grammar
from service.prompts import base_info_messages
from service.protocol import BaseInfoRequest
from service.rendering import AnswerRenderer
from service.settings import Settings

logger = logging.getLogger(__name__)

CHALLENGE_GRAMMAR = "challenge"

Event = tuple[str, Body]


class StartupError(Exception):
    """The service cannot run as configured; ``str()`` is the one line for the operator."""


def answer_token_budget() -> int:
    """max_tokens that always fits a complete answer: every token adds at least one byte, so
    the grammar's longest answer in bytes, plus the end-of-generation token."""
    return load_challenge_grammar().max_bytes() + 1


class _AnswerRun:
    """One generation: readable pieces as they come, then the checked answer."""

    def __init__(self, engine: Engine, request: GenerationRequest, category: Category) -> None:
        self._engine = engine
        self._request = request
        self._category = category
        self.answer: Answer | None = None
        self.first_piece_seconds: float | None = None
        self.generated_tokens = 0
        self.tokens_per_second = 0.0

    async def pieces(self) -> AsyncGenerator[str, None]:
        started = perf_counter()
        generation = self._engine.submit(self._request)
        raw: list[str] = []
        renderer = AnswerRenderer()
        try:
            async for piece in generation:
                raw.append(piece)
                readable = renderer.feed(piece)
                if readable:
                    if self.first_piece_seconds is None:
                        self.first_piece_seconds = perf_counter() - started
                    yield readable
        finally:
            # A no-op when finished; stops the model when the reader went away.
            await generation.cancel()
            self.generated_tokens = generation.stats.generated_tokens
            self.tokens_per_second = generation.stats.tokens_per_second
        answer = parse_model_output("".join(raw), self._category)
        if render(answer) != renderer.text:
            raise ModelFailure(detail="streamed pieces differ from the rendered answer")
        self.answer = answer


class RecommendationService:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.max_tokens = answer_token_budget()
        check_schema_loads()

    def check_context_fits(self) -> None:
        """Fail at start-up if the longest base-info prompt plus the longest answer does not
        fit the context, rather than failing some requests later."""
        longest = max(
            self.engine.count_tokens(base_info_messages(location, work_type, category))
            for location, work_type, category in itertools.product(
                set(LOCATIONS.values()), set(WORK_TYPES.values()), CATEGORIES
            )
        )
        needed = longest + self.max_tokens
        if needed > self.engine.info.context_size:
            raise StartupError(
                f"LEAFRESH_CONTEXT_SIZE={self.engine.info.context_size}가 너무 작습니다: 가장 긴 프롬프트 {longest} 토큰과 "
                f"가장 긴 답 {self.max_tokens} 토큰을 합쳐 {needed} 토큰이 필요합니다 — LEAFRESH_CONTEXT_SIZE를 {needed} 이상으로 지정하세요"
            )

    def _generation_request(self, messages: tuple[ChatMessage, ...]) -> GenerationRequest:
        return GenerationRequest(
            messages=messages,
            grammar=CHALLENGE_GRAMMAR,
            max_tokens=self.max_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
        )

    def _base_info_run(self, request: BaseInfoRequest) -> _AnswerRun:
        messages = base_info_messages(request.location, request.work_type, request.category)
        return _AnswerRun(self.engine, self._generation_request(messages), request.category)

    def stream_base_info(self, request: BaseInfoRequest) -> AsyncGenerator[Event, None]:
        return self._stream(self._base_info_run(request), "base-info")

    async def answer_base_info(self, request: BaseInfoRequest) -> Body:
        run = self._base_info_run(request)
        async with aclosing(run.pieces()) as pieces:
            async for _ in pieces:
                pass
        assert run.answer is not None
        self._log_done("base-info", run)
        return Body(status=200, message=MSG_BASE_INFO_ANSWER, data=run.answer.to_data())

    async def _stream(self, run: _AnswerRun, route: str) -> AsyncGenerator[Event, None]:
        """Challenge pieces, then exactly one close; an error event before it on failure.
        Nothing is sent after close. A reader that goes away cancels the generation."""
        try:
            # aclosing: when the reader leaves, closing this stream closes the generation too.
            async with aclosing(run.pieces()) as pieces:
                async for piece in pieces:
                    yield EVENT_CHALLENGE, token_body(piece)
            assert run.answer is not None
            final = close_body(run.answer.to_data())
            self._log_done(route, run)
        except ServiceError as exc:
            logger.error("%s failed: status=%d %s", route, exc.status, exc.detail or exc.message)
            final = exc.body()
            yield EVENT_ERROR, final
        except Exception:
            logger.exception("%s failed unexpectedly", route)
            final = ModelFailure().body()
            yield EVENT_ERROR, final
        yield EVENT_CLOSE, final

    def _log_done(self, route: str, run: _AnswerRun) -> None:
        first = f"{run.first_piece_seconds:.2f}s" if run.first_piece_seconds is not None else "-"
        logger.info(
            "%s answered: tokens=%d tokens_per_s=%.1f first_piece=%s",
            route,
            run.generated_tokens,
            run.tokens_per_second,
            first,
        )
