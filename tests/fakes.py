"""A scripted engine behind the real interface, for route and serving tests.

It stands in for the model only where the test is about what the service does with text
(rendering, errors, framing); end-to-end tests use the real engine and a real model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from service.engine import ChatMessage, GenerationRequest, GenerationStats
from service.engine.base import EngineInfo, FinishReason, GenerationFailed

GOOD_OUTPUT = (
    '{"recommend":"오늘 하루 비건 챌린지!","challenges":['
    '{"title":"1. 채식 도시락","description":"점심에 채식 도시락을 싸 가요."},'
    '{"title":"2. 두유 라떼","description":"우유 대신 두유를 골라요."},'
    '{"title":"3. 고기 없는 날","description":"일주일에 하루 고기 없이 지내요."}]}'
)


class ScriptedGeneration:
    def __init__(self, engine: ScriptedEngine, request: GenerationRequest) -> None:
        self.stats = GenerationStats()
        self._engine = engine
        self._request = request
        self.pieces_sent = 0
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._text()

    async def _text(self) -> AsyncIterator[str]:
        output = self._engine.output
        step = self._engine.piece_size
        started = time.monotonic()
        for index, start in enumerate(range(0, len(output), step)):
            if self.cancelled:
                self.stats.finish_reason = FinishReason.CANCELLED
                return
            if self._engine.fail_after is not None and index == self._engine.fail_after:
                raise GenerationFailed("scripted failure")
            await asyncio.sleep(self._engine.delay_s)
            deadline = self._request.deadline_s
            if deadline is not None and time.monotonic() - started > deadline:
                self.stats.finish_reason = FinishReason.DEADLINE
                return
            self.stats.generated_tokens += 1
            self.stats.decode_steps += 1
            simulated = self._engine.simulated_step_s
            self.stats.decode_seconds = (
                self.stats.decode_steps * simulated if simulated is not None else time.monotonic() - started
            )
            self.pieces_sent += 1
            yield output[start : start + step]
            if self.stats.generated_tokens >= self._request.max_tokens:
                self.stats.finish_reason = FinishReason.LENGTH
                return
        self.stats.finish_reason = FinishReason.STOP

    async def cancel(self) -> None:
        """Like the real engine: no piece after this one, and a no-op once finished."""
        self._engine.cancel_calls += 1
        self.cancelled = True


class ScriptedEngine:
    def __init__(
        self,
        output: str = GOOD_OUTPUT,
        piece_size: int = 3,
        fail_after: int | None = None,
        delay_s: float = 0.0,
        simulated_step_s: float | None = None,
    ) -> None:
        self.output = output
        # Reported as each step's decode time without sleeping: a slow machine, simulated.
        self.simulated_step_s = simulated_step_s
        self.piece_size = piece_size
        self.fail_after = fail_after
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self.generations: list[ScriptedGeneration] = []
        self._messages: dict[tuple[int, ...], tuple[ChatMessage, ...]] = {}
        self.cancel_calls = 0
        self.closed = False
        self.alive = True
        self.info = EngineInfo(model_path="scripted", chat_template="fallback", system_role=True, context_size=8192)

    def submit(self, request: GenerationRequest) -> ScriptedGeneration:
        self.requests.append(request)
        generation = ScriptedGeneration(self, request)
        self.generations.append(generation)
        return generation

    def prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        """One token per character: its code point."""
        tokens = [ord(char) for message in messages for char in message.content]
        self._messages[tuple(tokens)] = messages
        return tokens

    def messages_of(self, request: GenerationRequest) -> tuple[ChatMessage, ...]:
        """The chat whose prompt ``request`` carries: what a test checks the model was told."""
        return self._messages[request.prompt]

    def count_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return len(self.prompt_tokens(messages))

    def count_text_tokens(self, text: str) -> int:
        return len(text)

    async def aclose(self) -> None:
        self.closed = True
