"""Recommendations: from a checked request to contract events or one JSON answer.

Routes hand requests here. A route's job (its prompt, the session it reads and writes) comes
from service.recommend.jobs; what runs before serving is service.recommend.preflight. This
module runs a job: a turn at a time per conversation, a fair place in the queue, the engine's
text rendered as it comes, the answer checked, and the events the consumers see. It never
imports llama_cpp.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, aclosing
from time import perf_counter

from service.engine import Engine, FinishReason, GenerationRequest
from service.engine.base import EngineError, EngineStopped, NoWordInTime, PromptDoesNotFit
from service.logs import request_stats
from service.metrics import Metrics
from service.recommend.admission import Admission, PromptBudget
from service.recommend.answer import (
    GRAMMAR_NAME,
    Answer,
    check_schema_loads,
    max_tokens,
    parse_model_output,
    render,
)
from service.recommend.contract import (
    EVENT_CHALLENGE,
    EVENT_CLOSE,
    MSG_BASE_INFO_ANSWER,
    MSG_FREE_TEXT_ANSWER,
    MSG_GUIDE,
    MSG_GUIDE_DONE,
    Body,
    DeadlineExceeded,
    EngineDown,
    ModelFailure,
    PromptBudgetSpent,
    PromptTooLong,
    ServiceError,
    ShuttingDown,
    close_body,
    error_then_close,
    token_body,
)
from service.recommend.conversation import has_blocked_word
from service.recommend.jobs import Job, JobBuilder
from service.recommend.preflight import (
    check_context_fits,
    choose_parallel,
    initial_parallel,
    initial_timings,
    measured_timings,
    warm_up,
)
from service.recommend.protocol import BaseInfoRequest, FreeTextRequest
from service.recommend.rendering import AnswerRenderer
from service.recommend.sessions import SessionStore
from service.settings import Settings

logger = logging.getLogger(__name__)

# Abusive messages get no model call: the user learns what the chatbot is for instead.
GUIDE_ANSWER = Answer(recommend=MSG_GUIDE, challenges=[])

Event = tuple[str, Body]


class RecommendationService:
    def __init__(
        self, engine: Engine, settings: Settings, sessions: SessionStore, metrics: Metrics | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics or Metrics()
        sessions.on_reset = self.metrics.sessions_reset.inc
        # As many generations at once as the engine batches; the rest wait in the queue.
        # LEAFRESH_PARALLEL=auto starts with a few and settles after the warm-up.
        parallel = initial_parallel(settings)
        self.admission = Admission(
            slots=parallel,
            max_queue=settings.max_queue,
            queue_timeout_s=settings.queue_timeout_s,
            retry_after_s=settings.retry_after_s,
            metrics=self.metrics,
            client_slots=settings.client_slots(parallel),
            client_queue=settings.client_queue_places,
        )
        self.metrics.parallel.set(parallel)
        self.message_budget = PromptBudget(settings.client_prompt_tokens_per_min)
        self.max_tokens = max_tokens()
        # Generous until the warm-up has measured this machine's speed (service.recommend.preflight).
        self.timings = initial_timings(settings)
        self.jobs = JobBuilder(
            engine, sessions, self.metrics, engine.info.context_size - self.max_tokens, settings.retry_after_s
        )
        check_schema_loads()

    @property
    def generation_deadline_s(self) -> float:
        return self.timings.generation_deadline_s

    @property
    def shutdown_grace_s(self) -> float:
        """How long a draining replica lets what it accepted finish (service.api.drain)."""
        return self.timings.shutdown_grace_s

    # -- start-up ----------------------------------------------------------------------------

    def check_context_fits(self) -> None:
        check_context_fits(self.engine, self.settings.max_message_chars, self.max_tokens)

    async def warm_up(self) -> None:
        stats = await warm_up(self.engine)
        stream_speed = None
        if self.settings.parallel == "auto":
            choice = await choose_parallel(self.engine, stats, self.settings.max_parallel)
            self.admission.resize(choice.parallel, self.settings.client_slots(choice.parallel))
            stream_speed = choice.stream_tokens_per_s
        self.timings = measured_timings(self.engine, self.settings, stats, self.timings, stream_speed)
        self.metrics.parallel.set(self.admission.slots)

    # -- base-info ---------------------------------------------------------------------------

    def stream_base_info(self, request: BaseInfoRequest) -> AsyncGenerator[Event, None]:
        self.admission.check(request.client)
        return _ending_with_close(self._base_info_events(request), "base-info")

    async def _base_info_events(self, request: BaseInfoRequest) -> AsyncGenerator[Event, None]:
        async with (
            self._one_turn(request.session_id),
            aclosing(self._stream(await self.jobs.base_info(request))) as events,
        ):
            async for event in events:
                yield event

    async def answer_base_info(self, request: BaseInfoRequest) -> Body:
        self.admission.check(request.client)
        async with self._one_turn(request.session_id):
            answer = await self._answer(await self.jobs.base_info(request))
        return Body(status=200, message=MSG_BASE_INFO_ANSWER, data=answer.to_data())

    # -- free-text ---------------------------------------------------------------------------

    def _is_blocked(self, message: str) -> bool:
        return has_blocked_word(message, self.settings.blocked_word_list)

    def stream_free_text(self, request: FreeTextRequest) -> AsyncGenerator[Event, None]:
        if not self._is_blocked(request.message):
            self._admit_free_text(request)
        return _ending_with_close(self._free_text_events(request), "free-text")

    async def _free_text_events(self, request: FreeTextRequest) -> AsyncGenerator[Event, None]:
        if self._is_blocked(request.message):
            logger.info("free-text: blocked words, answered with the guide")
            answer = GUIDE_ANSWER
            yield EVENT_CHALLENGE, token_body(render(answer))
            yield EVENT_CLOSE, close_body(answer.to_data(), MSG_GUIDE_DONE)
            return
        async with self._one_turn(request.session_id):
            job = await self.jobs.free_text(request)
            async with aclosing(self._stream(job)) as events:
                async for event in events:
                    yield event

    async def answer_free_text(self, request: FreeTextRequest) -> Body:
        if self._is_blocked(request.message):
            return Body(status=200, message=MSG_GUIDE_DONE, data=GUIDE_ANSWER.to_data())
        self._admit_free_text(request)
        async with self._one_turn(request.session_id):
            answer = await self._answer(await self.jobs.free_text(request))
        return Body(status=200, message=MSG_FREE_TEXT_ANSWER, data=answer.to_data())

    def _admit_free_text(self, request: FreeTextRequest) -> None:
        """Room in the queue for this client, then the message's tokens out of its budget per
        minute; both before the response starts, so JSON clients get a real 503 or 429."""
        self.admission.check(request.client)
        wait_s = self.message_budget.spend(request.client, self.engine.count_text_tokens(request.message))
        if wait_s > 0:
            self.metrics.over_budget.inc()
            raise PromptBudgetSpent(
                headers={"Retry-After": str(math.ceil(wait_s))}, detail=f"message tokens over budget for {wait_s:.0f}s"
            )

    def _one_turn(self, session_id: str | None) -> AbstractAsyncContextManager[None]:
        """The conversation held for this turn: through the queue and the whole generation."""
        return self.jobs.one_turn(session_id, self.settings.queue_timeout_s + self.generation_deadline_s)

    # -- running a job -----------------------------------------------------------------------

    def _request(self, prompt: list[int]) -> GenerationRequest:
        return GenerationRequest(
            prompt=tuple(prompt),
            grammar=GRAMMAR_NAME,
            max_tokens=self.max_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
            deadline_s=self.generation_deadline_s,
        )

    async def _readable_text(self, job: Job) -> AsyncGenerator[str, None]:
        """Readable pieces as the model writes; then the answer is checked, the session
        written, and ``job.answer`` set. Waits its turn for the engine first (bounded); a
        reader that leaves cancels the generation."""
        async with self.admission.ticket(job.client) as ticket, aclosing(self._generate(job)) as pieces:
            job.queued_seconds = ticket.waited_s
            async for piece in pieces:
                yield piece

    async def _generate(self, job: Job) -> AsyncGenerator[str, None]:
        metrics = self.metrics
        started = perf_counter()
        try:
            generation = self.engine.submit(self._request(job.prompt))
        except EngineError as exc:
            raise contract_error(exc) from exc
        raw: list[str] = []
        renderer = AnswerRenderer()
        reader_left = False
        metrics.active.inc()
        try:
            async for piece in generation:
                raw.append(piece)
                readable = renderer.feed(piece)
                if readable:
                    if job.first_piece_seconds is None:
                        job.first_piece_seconds = perf_counter() - started
                        metrics.first_token.observe(job.first_piece_seconds)
                    yield readable
        except EngineError as exc:
            raise contract_error(exc) from exc
        except (GeneratorExit, asyncio.CancelledError):
            reader_left = True
            metrics.cancelled.inc()
            raise
        finally:
            # A no-op when finished; stops the model when the reader went away.
            await generation.cancel()
            metrics.active.dec()
            stats = generation.stats
            job.generated_tokens = stats.generated_tokens
            job.tokens_per_second = stats.tokens_per_second
            job.prompt_tokens = stats.prompt_tokens
            job.cached_prompt_tokens = stats.cached_prompt_tokens
            job.restored_prompt_tokens = stats.restored_prompt_tokens
            metrics.tokens.inc(stats.generated_tokens)
            metrics.forced_tokens.inc(stats.forced_tokens)
            metrics.preemptions.inc(stats.preemptions)
            if stats.prompt_cache_hit is not None:
                metrics.prompt_cache.labels(result="hit" if stats.prompt_cache_hit else "miss").inc()
                metrics.restored_tokens.inc(stats.restored_prompt_tokens)
            # The reader's leaving is the real reason: the engine has not noticed it yet, and
            # what it noted so far is a placeholder (issue #21: 38 such were counted as length).
            finish = FinishReason.CANCELLED if reader_left else stats.finish_reason or FinishReason.CANCELLED
            metrics.generations.labels(finish=str(finish)).inc()
            if stats.tokens_per_second:
                metrics.tokens_per_second.observe(stats.tokens_per_second)
            request_stats().update(tokens=stats.generated_tokens, first_piece_s=job.first_piece_seconds)
        if generation.stats.finish_reason is FinishReason.DEADLINE:
            metrics.deadline_hits.labels(stage="generation").inc()
            raise DeadlineExceeded(detail=f"generation ran past {self.generation_deadline_s:.0f}s")
        if generation.stats.finish_reason is FinishReason.CANCELLED:
            # Not by this reader (that path raised above): the engine is shutting down.
            raise ShuttingDown(detail="the engine cancelled the generation")
        try:
            answer = parse_model_output("".join(raw), job.category)
        except ModelFailure:
            metrics.schema_failures.inc()
            raise
        if render(answer) != renderer.text:
            raise ModelFailure(detail="streamed pieces differ from the rendered answer")
        if job.on_answer is not None:
            await job.on_answer(answer)
        job.answer = answer

    async def _answer(self, job: Job) -> Answer:
        async with aclosing(self._readable_text(job)) as pieces:
            async for _ in pieces:
                pass
        assert job.answer is not None
        job.log_answered()
        return job.answer

    async def _stream(self, job: Job) -> AsyncGenerator[Event, None]:
        """Challenge pieces, then the close with the checked answer; failures propagate to
        ``_ending_with_close``."""
        # aclosing: when the reader leaves, closing this stream closes the generation too.
        async with aclosing(self._readable_text(job)) as pieces:
            async for piece in pieces:
                yield EVENT_CHALLENGE, token_body(piece)
        assert job.answer is not None
        job.log_answered()
        yield EVENT_CLOSE, close_body(job.answer.to_data())


def contract_error(exc: EngineError) -> ServiceError:
    """The one place where what the engine could not do becomes the contract's error."""
    if isinstance(exc, PromptDoesNotFit):
        return PromptTooLong(detail=str(exc))
    if isinstance(exc, EngineStopped):
        return EngineDown(detail=str(exc))
    if isinstance(exc, NoWordInTime):
        return DeadlineExceeded(detail=str(exc))
    return ModelFailure(detail=str(exc))


async def _ending_with_close(events: AsyncGenerator[Event, None], route: str) -> AsyncGenerator[Event, None]:
    """Every stream ends with exactly one close, whatever is raised and wherever (issue #13):
    the Spring relay holds a stream without close for five minutes. Nothing follows close."""
    error: ServiceError
    try:
        async with aclosing(events):
            async for event in events:
                yield event
                if event[0] == EVENT_CLOSE:
                    return
        error = ModelFailure(detail="the stream ended without close")
        logger.error("%s failed: %s", route, error.detail)
    except ServiceError as exc:
        _log_failure(route, exc)
        error = exc
    except Exception:
        logger.exception("%s failed unexpectedly", route)
        error = ModelFailure()
    for event in error_then_close(error):
        yield event


def _log_failure(route: str, error: ServiceError) -> None:
    # Overload is the service working as designed (a warning); a broken answer is an error.
    level = logging.WARNING if error.status == 503 or error.status < 500 else logging.ERROR
    logger.log(level, "%s failed: status=%d %s", route, error.status, error.detail or error.message)
