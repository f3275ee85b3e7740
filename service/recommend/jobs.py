"""What each route asks of the model: the prompt it builds, the session it reads, and what it
writes back when the answer is complete (issue #23: out of the serving hub)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pydantic import ValidationError

from service.engine import Engine
from service.metrics import Metrics
from service.recommend.answer import Answer
from service.recommend.catalog import Category
from service.recommend.contract import PromptTooLong, StoreUnavailable, TurnInProgress
from service.recommend.conversation import steer
from service.recommend.prompts import base_info_messages, base_info_request, free_text_messages, free_text_request
from service.recommend.protocol import BaseInfoRequest, FreeTextRequest
from service.recommend.sessions import Session, SessionBusy, SessionStore, SessionUpdate, Turn, unreadable_fields

logger = logging.getLogger(__name__)

OnAnswer = Callable[[Answer], Awaitable[None]]


@dataclass
class Job:
    """One answer to produce: the prompt, what to do with the answer, and how it went."""

    prompt: list[int]  # token ids (Engine.prompt_tokens), made off the event loop
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
    # Of those, restored from host RAM's prompt cache.
    restored_prompt_tokens: int = 0

    def log_answered(self) -> None:
        first = f"{self.first_piece_seconds:.2f}s" if self.first_piece_seconds is not None else "-"
        logger.info(
            "%s answered: category=%s tokens=%d tokens_per_s=%.1f queued=%.2fs first_piece=%s history_turns=%d/%d "
            "prompt_tokens=%d cached_prompt_tokens=%d restored_prompt_tokens=%d",
            self.route,
            self.category.code,
            self.generated_tokens,
            self.tokens_per_second,
            self.queued_seconds,
            first,
            self.history_used,
            self.history_total,
            self.prompt_tokens,
            self.cached_prompt_tokens,
            self.restored_prompt_tokens,
        )


class JobBuilder:
    """Builds the job of each route, and holds its conversation for one turn. ``prompt_budget``:
    the prompt tokens that fit beside the longest answer."""

    def __init__(
        self, engine: Engine, sessions: SessionStore, metrics: Metrics, prompt_budget: int, retry_after_s: int
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.metrics = metrics
        self.prompt_budget = prompt_budget
        self.retry_after_s = retry_after_s

    async def base_info(self, request: BaseInfoRequest) -> Job:
        messages = base_info_messages(request.location, request.work_type, request.category)
        asked = base_info_request(request.location, request.work_type, request.category)
        # Tokenized here, off the event loop: the engine takes token ids.
        prompt = await asyncio.to_thread(self.engine.prompt_tokens, messages)
        on_answer = None
        if request.session_id is not None:
            session_id = request.session_id
            summary = f"장소: {request.location}, 직업 유형: {request.work_type}, 카테고리: {request.category.label}"

            async def on_answer(answer: Answer) -> None:
                # base-info starts (or restarts) the conversation with its choices.
                await self._record(
                    session_id,
                    SessionUpdate(
                        turn=_turn(summary, asked, answer, request.category),
                        category=request.category.code,
                        location=request.location,
                        work_type=request.work_type,
                        reset=True,
                        base_category=request.category.code,
                    ),
                )

        return Job(prompt, request.category, "base-info", request.client, on_answer)

    @asynccontextmanager
    async def one_turn(self, session_id: str | None, longest_s: float) -> AsyncIterator[None]:
        """Holds the conversation while its turn is written, on every replica (issue #20): a
        second turn meanwhile is refused at once with 409 rather than queued, so a double
        click or a relay's retry never writes two answers from one history, and never holds a
        second engine slot and queue place for an answer nobody waits for any more."""
        if session_id is None:
            yield
            return
        try:
            hold = await self.sessions.hold(session_id, longest_s)
        except SessionBusy as exc:
            self.metrics.turns_refused.inc()
            retry_after = {"Retry-After": str(self.retry_after_s)}
            raise TurnInProgress(headers=retry_after, detail="another turn of this session is running") from exc
        except Exception as exc:
            raise StoreUnavailable(detail=f"session lock failed: {type(exc).__name__}: {exc}") from exc
        try:
            yield
        finally:
            await hold.release()

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

    async def free_text(self, request: FreeTextRequest) -> Job:
        session = await self._load_session(request.session_id)
        steering = steer(request.message, session.category, session.base_category, session.location, session.work_type)
        # Rendering and tokenizing a long conversation takes milliseconds per try: off the
        # event loop, so a burst of them never stalls other streams, pings or /ready.
        asked = free_text_request(steering.location, steering.work_type, steering.category, request.message)
        prompt, used = await asyncio.to_thread(self.fit_history, session.turns, asked)
        on_answer = None
        if request.session_id is not None:
            session_id = request.session_id

            async def on_answer(answer: Answer) -> None:
                await self._record(
                    session_id,
                    SessionUpdate(
                        turn=_turn(request.message, asked, answer, steering.category),
                        category=steering.category.code,
                        location=steering.location,
                        work_type=steering.work_type,
                    ),
                )

        return Job(prompt, steering.category, "free-text", request.client, on_answer, used, len(session.turns))

    def fit_history(self, turns: Sequence[Turn], request: str) -> tuple[list[int], int]:
        """The prompt's tokens with as many of the newest turns as fit beside the longest
        answer, and how many. Usually all of them do: one render and one tokenization.
        Otherwise a binary search over how many to keep: at most log2(turns) + 2 of each,
        never one per turn."""

        def with_newest(keep: int) -> list[int]:
            messages = free_text_messages(turns[len(turns) - keep :], request)
            return self.engine.prompt_tokens(messages)

        def fits(prompt: list[int]) -> bool:
            return len(prompt) <= self.prompt_budget

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

    async def _record(self, session_id: str, update: SessionUpdate) -> None:
        try:
            await self.sessions.apply(session_id, update)
        except Exception as exc:  # noqa: BLE001 - the answer is still good: deliver it, say so in the log
            self.metrics.session_save_failures.inc()
            logger.error("session %s not saved: %s: %s", session_id[:8], type(exc).__name__, exc)


def _turn(message: str, request: str, answer: Answer, category: Category) -> Turn:
    return Turn(
        message=message,
        request=request,
        recommend=answer.recommend,
        titles=[challenge.title for challenge in answer.challenges],
        category=category.code,
    )
