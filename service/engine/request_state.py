"""One request as the decode loop moves it on (issue #23: out of the loop): its reader, its
statistics, its grammar state and random generator, and what one step's logits make of it: a
next token (with the tokens the grammar forces after it) or the end. The scheduler keeps its
tokens; the loop decides nothing here."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from service.engine.base import FinishReason, GenerationFailed, GenerationRequest, GenerationStats, PromptDoesNotFit
from service.engine.grammar_state import CompiledGrammar, GrammarState, Vocabulary

# What a request hands its reader: a piece of text, an EngineError, or END.
END = object()
Emit = Callable[[object], None]


@dataclass(frozen=True)
class LoadedModel:
    """What a request needs of the loaded model, and nothing else of the engine."""

    vocabulary: Vocabulary
    grammars: Mapping[str, CompiledGrammar]
    is_end: Callable[[int], bool]
    context_size: int
    jump_forward: bool


@dataclass(eq=False)
class RequestState:
    """What the loop keeps with each request besides its tokens (the scheduler keeps those):
    its reader, statistics, grammar state and random generator."""

    request: GenerationRequest
    emit: Emit
    stats: GenerationStats
    started: float = 0.0  # perf_counter() when it first started; 0.0 before
    grammar: GrammarState | None = None
    rng: np.random.Generator | None = None

    def start(self, prompt_tokens: int, model: LoadedModel) -> list[int]:
        """Set up on its first start; the tokens of its forced opening, whose text is sent."""
        request, stats = self.request, self.stats
        self.started = perf_counter()
        stats.prompt_tokens = prompt_tokens
        if prompt_tokens + request.max_tokens > model.context_size:
            raise PromptDoesNotFit(
                f"prompt {prompt_tokens} + max_tokens {request.max_tokens} > context {model.context_size}"
            )
        grammar = model.grammars.get(request.grammar)
        if grammar is None:
            raise GenerationFailed(f"unknown grammar {request.grammar!r}")
        stats.seed = request.seed if request.seed is not None else secrets.randbits(32)
        self.rng = np.random.default_rng(stats.seed)
        self.grammar = grammar.start(model.vocabulary, model.jump_forward)
        stats.finish_reason = FinishReason.LENGTH
        # The answer's opening is forced: it goes in with the prompt, not a token a step.
        opening, text = self._accept_forced()
        if text:
            self.emit(text)
        return opening

    def advance(self, logits: np.ndarray, is_end: Callable[[int], bool]) -> list[int] | FinishReason:
        """Choose the next token from ``logits`` and send its text: the tokens to evaluate next
        (it and any the grammar forces after it), or why the generation ends."""
        request, stats, grammar = self.request, self.stats, self.grammar
        assert grammar is not None and self.rng is not None
        token = grammar.pick(logits, request.temperature, self.rng)
        if is_end(token):
            return FinishReason.STOP
        if stats.generated_tokens >= request.max_tokens:
            return FinishReason.LENGTH
        text = grammar.accept(token)
        stats.generated_tokens += 1
        forced, forced_text = self._accept_forced()
        stats.decode_steps += 1
        if text or forced_text:
            self.emit(text + forced_text)
        if grammar.complete:
            # The grammar allows only the end now: no need to decode and sample it.
            return FinishReason.STOP
        return [token, *forced]

    def _accept_forced(self) -> tuple[list[int], str]:
        assert self.grammar is not None
        stats = self.stats
        tokens, text = self.grammar.accept_forced(self.request.max_tokens - stats.generated_tokens)
        stats.generated_tokens += len(tokens)
        stats.forced_tokens += len(tokens)
        return tokens, text

    def end(self, reason: FinishReason) -> None:
        """Its statistics' last figures; the grammar state is let go. A STOP checks that the
        answer ended on a whole character first (GenerationFailed otherwise)."""
        if reason is FinishReason.STOP and self.grammar is not None:
            self.grammar.finish()
        self.stats.finish_reason = reason

    def release(self) -> None:
        self.grammar = None
        stats = self.stats
        if self.started:
            stats.decode_seconds = max(perf_counter() - self.started - stats.prompt_seconds, 0.0)
