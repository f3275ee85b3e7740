"""Recommendations: from a checked request to contract events or one JSON answer.

Routes hand requests here; this module asks the engine for text, renders it, validates the
answer, keeps the conversation and decides what the consumers see. It never imports llama_cpp.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from time import perf_counter

from pydantic import ValidationError

from service.engine import ChatMessage, Engine, FinishReason, GenerationRequest, GenerationStats
from service.engine.base import EngineError, EngineStopped, NoWordInTime, PromptDoesNotFit
from service.engine.text import hangul_syllables
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
from service.recommend.answer import grammar as answer_grammar
from service.recommend.catalog import CATEGORIES, LOCATIONS, WORK_TYPES, Category
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
    StoreUnavailable,
    TurnInProgress,
    close_body,
    error_then_close,
    token_body,
)
from service.recommend.conversation import has_blocked_word, steer
from service.recommend.deadline import AUTO_GRACE_UNMEASURED_S, AUTO_MAX_S, plan_deadline
from service.recommend.prompts import EXAMPLE_ANSWER, base_info_messages, free_text_messages
from service.recommend.protocol import BaseInfoRequest, FreeTextRequest
from service.recommend.rendering import AnswerRenderer
from service.recommend.sessions import Session, SessionBusy, SessionStore, SessionUpdate, Turn, unreadable_fields
from service.settings import Settings
from service.startup import StartupError

logger = logging.getLogger(__name__)

# The costliest characters a message may hold: a rare syllable (three byte tokens on byte-level
# tokenizers) and an emoji (four bytes, so up to four tokens); the start-up check takes the worse.
_COSTLIEST_CHARACTERS = ("뷁", "\U0001f977")
# Tokens the warm-up generates: enough to time the decode loop (see _plan_deadline).
WARM_UP_TOKENS = 16
# A Korean answer is 300-400 syllables (issue #11); the grammar's longest is all syllables,
# three bytes each. Their cost in tokens is this model's tokens per syllable of the example.
TYPICAL_ANSWER_SYLLABLES = 350

# Abusive messages get no model call: the user learns what the chatbot is for instead.
GUIDE_ANSWER = Answer(recommend=MSG_GUIDE, challenges=[])

Event = tuple[str, Body]
OnAnswer = Callable[[Answer], Awaitable[None]]


@dataclass
class _Job:
    """One answer to produce: the prompt, what to do with the answer, and how it went."""

    messages: tuple[ChatMessage, ...]
    category: Category
    route: str
    client: str
    on_answer: OnAnswer | None = None
    history_used: int = 0
    history_total: int = 0
    answer: Answer | None = None
    queued_seconds: float = 0.0  # waiting for a slot, before the engine saw it
    first_piece_seconds: float | None = None
    generated_tokens: int = 0
    tokens_per_second: float = 0.0
    prompt_tokens: int = 0
    # Prompt tokens whose KV cache was shared with an earlier prompt instead of evaluated.
    cached_prompt_tokens: int = 0


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
        self.admission = Admission(
            slots=settings.parallel,
            max_queue=settings.max_queue,
            queue_timeout_s=settings.queue_timeout_s,
            retry_after_s=settings.retry_after_s,
            metrics=self.metrics,
            client_slots=settings.client_slots,
            client_queue=settings.client_queue_places,
        )
        self.message_budget = PromptBudget(settings.client_prompt_tokens_per_min)
        self.max_tokens = max_tokens()
        timeout = settings.generation_timeout_s
        # auto: generous until warm-up has measured this machine's speed (see service.recommend.deadline).
        self.generation_deadline_s = min(AUTO_MAX_S, settings.auto_deadline_ceiling_s) if timeout == "auto" else timeout
        grace = settings.shutdown_grace_s
        # How long a draining replica lets what it accepted finish (service.api.drain).
        self.shutdown_grace_s = AUTO_GRACE_UNMEASURED_S if grace == "auto" else grace
        self._prompt_budget = engine.info.context_size - self.max_tokens
        check_schema_loads()

    # -- start-up checks ---------------------------------------------------------------------

    def check_context_fits(self) -> None:
        """Fail at start-up, not on some request later, if the longest base-info prompt or the
        longest free-text message (with no history) plus the longest answer does not fit."""
        places, works = sorted(set(LOCATIONS.values())), sorted(set(WORK_TYPES.values()))
        longest_base = max(
            self.engine.count_tokens(base_info_messages(place, work, category))
            for place, work, category in itertools.product(places, works, CATEGORIES)
        )
        limit = self.settings.max_message_chars
        longest_free = max(
            self.engine.count_tokens(free_text_messages((), "바닷가", "재택근무", category, char * limit))
            for category in CATEGORIES
            for char in _COSTLIEST_CHARACTERS
        )
        longest = max(longest_base, longest_free)
        needed = longest + self.max_tokens
        if needed > self.engine.info.context_size:
            raise StartupError(
                f"LEAFRESH_CONTEXT_SIZE={self.engine.info.context_size}가 너무 작습니다: 가장 긴 프롬프트 {longest} 토큰"
                f"(LEAFRESH_MAX_MESSAGE_CHARS={self.settings.max_message_chars} 포함)과 가장 긴 답 {self.max_tokens} 토큰을 "
                f"합쳐 {needed} 토큰이 필요합니다 — LEAFRESH_CONTEXT_SIZE를 {needed} 이상으로 지정하세요"
            )

    async def warm_up(self) -> None:
        """The start of a real base-info answer: loads the instructions into the KV cache, and
        measures this machine's decode speed, which the auto generation deadline follows."""
        category = CATEGORIES[0]
        messages = base_info_messages("도시", "사무직", category)
        request = GenerationRequest(messages=messages, grammar=GRAMMAR_NAME, max_tokens=WARM_UP_TOKENS, temperature=0.0)
        generation = self.engine.submit(request)
        async for _ in generation:
            pass
        self._plan_deadline(generation.stats)

    def _plan_deadline(self, stats: GenerationStats) -> None:
        """The auto generation deadline and shutdown grace, from the speed the warm-up showed."""
        # Sampled steps, not tokens: the forced ones come in bulk and would flatter the speed.
        speed = stats.decode_steps / stats.decode_seconds if stats.decode_seconds > 0 else 0.0
        per_syllable = self.engine.count_text_tokens(EXAMPLE_ANSWER) / hangul_syllables(EXAMPLE_ANSWER)
        longest = min(self.max_tokens, math.ceil(answer_grammar().max_bytes() / 3 * per_syllable))
        plan = plan_deadline(
            speed, round(TYPICAL_ANSWER_SYLLABLES * per_syllable), longest, self.settings.auto_deadline_ceiling_s
        )
        if self.settings.generation_timeout_s == "auto":
            self.generation_deadline_s = plan.deadline_s
            logger.info("generation deadline: %s", plan.describe())
            if plan.too_slow:
                logger.warning(
                    "on this machine a typical answer takes about %.0f s, past the %.0f s deadline and the Spring relay's "
                    "300 s: most requests will end with 504. Offload layers to a GPU (LEAFRESH_GPU_LAYERS) or serve a "
                    "smaller model",
                    plan.typical_answer_s,
                    plan.deadline_s,
                )
        if self.settings.shutdown_grace_s == "auto":
            self.shutdown_grace_s = min(plan.drain_grace_s, self.generation_deadline_s)
            logger.info(
                "shutdown grace: %.0f s (auto: twice a typical answer of about %.0f s, at most the deadline)",
                self.shutdown_grace_s,
                plan.typical_answer_s,
            )

    # -- base-info ---------------------------------------------------------------------------

    def _base_info_job(self, request: BaseInfoRequest) -> _Job:
        messages = base_info_messages(request.location, request.work_type, request.category)
        on_answer = None
        if request.session_id is not None:
            session_id = request.session_id
            summary = f"장소: {request.location}, 직업 유형: {request.work_type}, 카테고리: {request.category.label}"

            async def on_answer(answer: Answer) -> None:
                # base-info starts (or restarts) the conversation with its choices.
                await self._record(
                    session_id,
                    SessionUpdate(
                        turn=_turn(summary, answer, request.category),
                        category=request.category.code,
                        location=request.location,
                        work_type=request.work_type,
                        reset=True,
                        base_category=request.category.code,
                    ),
                )

        return _Job(messages, request.category, "base-info", request.client, on_answer)

    def stream_base_info(self, request: BaseInfoRequest) -> AsyncGenerator[Event, None]:
        self.admission.check(request.client)
        return _ending_with_close(self._base_info_events(request), "base-info")

    async def _base_info_events(self, request: BaseInfoRequest) -> AsyncGenerator[Event, None]:
        async with self._one_turn(request.session_id), aclosing(self._stream(self._base_info_job(request))) as events:
            async for event in events:
                yield event

    async def answer_base_info(self, request: BaseInfoRequest) -> Body:
        self.admission.check(request.client)
        async with self._one_turn(request.session_id):
            answer = await self._answer(self._base_info_job(request))
        return Body(status=200, message=MSG_BASE_INFO_ANSWER, data=answer.to_data())

    # -- free-text ---------------------------------------------------------------------------

    def _is_blocked(self, message: str) -> bool:
        return has_blocked_word(message, self.settings.blocked_word_list)

    async def _load_session(self, session_id: str | None) -> Session:
        if session_id is None:
            return Session()
        try:
            return await self.sessions.load(session_id)
        except ValidationError as exc:
            # A store that does not repair what it cannot read (the Redis store does).
            detail = f"session load failed: unreadable stored fields {unreadable_fields(exc)}"
            raise StoreUnavailable(detail=detail) from exc
        except Exception as exc:
            raise StoreUnavailable(detail=f"session load failed: {type(exc).__name__}: {exc}") from exc

    async def _free_text_job(self, request: FreeTextRequest) -> _Job:
        session = await self._load_session(request.session_id)
        steering = steer(request.message, session.category, session.base_category, session.location, session.work_type)
        # Rendering and tokenizing a long conversation takes milliseconds per try: off the
        # event loop, so a burst of them never stalls other streams, pings or /ready.
        messages, used = await asyncio.to_thread(
            self._fit_history, session.turns, steering.location, steering.work_type, steering.category, request.message
        )
        on_answer = None
        if request.session_id is not None:
            session_id = request.session_id

            async def on_answer(answer: Answer) -> None:
                await self._record(
                    session_id,
                    SessionUpdate(
                        turn=_turn(request.message, answer, steering.category),
                        category=steering.category.code,
                        location=steering.location,
                        work_type=steering.work_type,
                    ),
                )

        return _Job(messages, steering.category, "free-text", request.client, on_answer, used, len(session.turns))

    def _fit_history(
        self, turns: Sequence[Turn], location: str | None, work_type: str | None, category: Category, message: str
    ) -> tuple[tuple[ChatMessage, ...], int]:
        """The prompt with as many of the newest turns as fit beside the longest answer. Usually
        all of them do: one render and one tokenization. Otherwise a binary search over how
        many to keep: at most log2(turns) + 2 of each, never one per turn."""

        def with_newest(keep: int) -> tuple[ChatMessage, ...]:
            return free_text_messages(turns[len(turns) - keep :], location, work_type, category, message)

        def fits(messages: tuple[ChatMessage, ...]) -> bool:
            return self.engine.count_tokens(messages) <= self._prompt_budget

        everything = with_newest(len(turns))
        if fits(everything):
            return everything, len(turns)
        best = with_newest(0)
        if not fits(best):
            raise PromptTooLong(detail="the message alone does not fit the context")
        low, high = 0, len(turns) - 1  # keeping `low` fits; keeping more than `high` does not
        while low < high:
            middle = (low + high + 1) // 2
            candidate = with_newest(middle)
            if fits(candidate):
                low, best = middle, candidate
            else:
                high = middle - 1
        return best, low

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
            job = await self._free_text_job(request)
            async with aclosing(self._stream(job)) as events:
                async for event in events:
                    yield event

    async def answer_free_text(self, request: FreeTextRequest) -> Body:
        if self._is_blocked(request.message):
            return Body(status=200, message=MSG_GUIDE_DONE, data=GUIDE_ANSWER.to_data())
        self._admit_free_text(request)
        async with self._one_turn(request.session_id):
            answer = await self._answer(await self._free_text_job(request))
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

    # -- one turn at a time per conversation -------------------------------------------------

    @asynccontextmanager
    async def _one_turn(self, session_id: str | None) -> AsyncIterator[None]:
        """Holds the conversation while its turn is written, on every replica (issue #20): a
        second turn meanwhile is refused at once with 409 rather than queued, so a double
        click or a relay's retry never writes two answers from one history, and never holds a
        second engine slot and queue place for an answer nobody waits for any more."""
        if session_id is None:
            yield
            return
        longest = self.settings.queue_timeout_s + self.generation_deadline_s
        try:
            hold = await self.sessions.hold(session_id, longest)
        except SessionBusy as exc:
            self.metrics.turns_refused.inc()
            retry_after = {"Retry-After": str(self.settings.retry_after_s)}
            raise TurnInProgress(headers=retry_after, detail="another turn of this session is running") from exc
        except Exception as exc:
            raise StoreUnavailable(detail=f"session lock failed: {type(exc).__name__}: {exc}") from exc
        try:
            yield
        finally:
            await hold.release()

    # -- running a job -----------------------------------------------------------------------

    async def _record(self, session_id: str, update: SessionUpdate) -> None:
        try:
            await self.sessions.apply(session_id, update)
        except Exception as exc:  # noqa: BLE001 - the answer is still good: deliver it, say so in the log
            self.metrics.session_save_failures.inc()
            logger.error("session %s not saved: %s: %s", session_id[:8], type(exc).__name__, exc)

    def _request(self, messages: tuple[ChatMessage, ...]) -> GenerationRequest:
        return GenerationRequest(
            messages=messages,
            grammar=GRAMMAR_NAME,
            max_tokens=self.max_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
            deadline_s=self.generation_deadline_s,
        )

    async def _pieces(self, job: _Job) -> AsyncGenerator[str, None]:
        """Readable pieces as the model writes; then the answer is checked, the session
        written, and ``job.answer`` set. Waits its turn for the engine first (bounded); a
        reader that leaves cancels the generation."""
        async with self.admission.ticket(job.client) as ticket, aclosing(self._generate(job)) as pieces:
            job.queued_seconds = ticket.waited_s
            async for piece in pieces:
                yield piece

    async def _generate(self, job: _Job) -> AsyncGenerator[str, None]:
        metrics = self.metrics
        started = perf_counter()
        try:
            generation = self.engine.submit(self._request(job.messages))
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
            metrics.tokens.inc(stats.generated_tokens)
            metrics.forced_tokens.inc(stats.forced_tokens)
            metrics.preemptions.inc(stats.preemptions)
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

    async def _answer(self, job: _Job) -> Answer:
        async with aclosing(self._pieces(job)) as pieces:
            async for _ in pieces:
                pass
        assert job.answer is not None
        self._log_done(job)
        return job.answer

    async def _stream(self, job: _Job) -> AsyncGenerator[Event, None]:
        """Challenge pieces, then the close with the checked answer; failures propagate to
        ``_ending_with_close``."""
        # aclosing: when the reader leaves, closing this stream closes the generation too.
        async with aclosing(self._pieces(job)) as pieces:
            async for piece in pieces:
                yield EVENT_CHALLENGE, token_body(piece)
        assert job.answer is not None
        self._log_done(job)
        yield EVENT_CLOSE, close_body(job.answer.to_data())

    def _log_done(self, job: _Job) -> None:
        first = f"{job.first_piece_seconds:.2f}s" if job.first_piece_seconds is not None else "-"
        logger.info(
            "%s answered: category=%s tokens=%d tokens_per_s=%.1f queued=%.2fs first_piece=%s history_turns=%d/%d "
            "prompt_tokens=%d cached_prompt_tokens=%d",
            job.route,
            job.category.code,
            job.generated_tokens,
            job.tokens_per_second,
            job.queued_seconds,
            first,
            job.history_used,
            job.history_total,
            job.prompt_tokens,
            job.cached_prompt_tokens,
        )


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


def _turn(message: str, answer: Answer, category: Category) -> Turn:
    return Turn(
        message=message,
        recommend=answer.recommend,
        titles=[challenge.title for challenge in answer.challenges],
        category=category.code,
    )
