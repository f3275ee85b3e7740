"""The engine interface: submit a request, read an async stream of text pieces, cancel.

A scheduler that batches many requests (issue #6) replaces the implementation, not this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from service.startup import StartupError


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    # The prompt's token ids (Engine.prompt_tokens renders and tokenizes the chat): tokenized on
    # the caller's side of the queue, so the decode thread never renders a template.
    prompt: tuple[int, ...]
    # Name of a grammar the engine compiled at start-up; the output is forced to match it.
    grammar: str
    # Upper bound on generated tokens; derive it from the grammar so an answer always fits.
    max_tokens: int
    temperature: float = 0.7
    # Same seed, same prompt, same model: the same answer. None draws a fresh seed.
    seed: int | None = None
    # Seconds the generation may run, from when the engine starts it; then it stops (DEADLINE).
    deadline_s: float | None = None


class FinishReason(StrEnum):
    STOP = "stop"  # the grammar was complete and the model ended
    LENGTH = "length"  # max_tokens ran out first
    CANCELLED = "cancelled"
    DEADLINE = "deadline"  # deadline_s ran out first


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    # Prompt tokens found already evaluated in the KV cache from an earlier request.
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: FinishReason | None = None
    seed: int | None = None
    # Tokens appended without sampling because the grammar allowed only them (jump-forward).
    forced_tokens: int = 0
    # llama_decode steps this sequence took part in after its prompt (sampled tokens).
    decode_steps: int = 0
    # Times the sequence was evicted from a full KV cache and evaluated again.
    preemptions: int = 0
    # Whether host RAM's prompt cache had cells for it (None: no prompt cache), and how many of
    # the cached prompt tokens came from there.
    prompt_cache_hit: bool | None = None
    restored_prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


class EngineCannotStart(StartupError):
    """The engine cannot start as configured: a context that does not fit in memory (a model
    file that cannot be read is ModelFileError)."""


class GrammarDoesNotCompile(EngineCannotStart):
    """A grammar handed to the engine does not compile against the model's vocabulary."""


class EngineError(Exception):
    """A generation the engine could not carry out; the message is for the log, not a user."""


class GenerationFailed(EngineError):
    """The model or the decode loop failed (never expected: the grammar forbids bad output)."""


class PromptDoesNotFit(EngineError):
    """The prompt and the answer's token bound do not fit the context."""


class EngineStopped(EngineError):
    """The decode thread has died: nothing more will be generated until the process restarts."""


class NoWordInTime(EngineError):
    """The decode thread sent nothing for a generation long after its deadline (stuck or gone):
    the event loop's own deadline ended it."""


class Generation(Protocol):
    """One request's output. Iterate it for text pieces: each is whole characters, never half
    a UTF-8 sequence. Errors surface from the iteration as EngineError."""

    stats: GenerationStats

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def cancel(self) -> None:
        """Stop generating (if still running) and release the engine for the next request."""
        ...


@dataclass
class EngineInfo:
    model_path: str
    chat_template: str  # "gguf" or "fallback"
    system_role: bool
    context_size: int
    extra: dict[str, str] = field(default_factory=dict)


class Engine(Protocol):
    info: EngineInfo

    @property
    def alive(self) -> bool:
        """False once the engine can generate nothing more (its decode thread died)."""
        ...

    def submit(self, request: GenerationRequest) -> Generation: ...

    def prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        """The prompt for ``messages`` in the model's own tokens, as a GenerationRequest takes
        it (its chat template, one BOS). Milliseconds on a long conversation: call it off the
        event loop."""
        ...

    def count_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        """len(prompt_tokens(messages))."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """Tokens the model spends writing ``text`` (no template, no BOS)."""
        ...

    async def aclose(self) -> None: ...
