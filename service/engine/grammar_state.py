"""One request's grammar state: what it may write next, and the text it has written.

It owns the request's copy of llama.cpp's grammar sampler, the tiered sampler over the tokens
the grammar can ever allow, the forced-text tracker (jump-forward) and the UTF-8 decoder that
holds half a character back. The decode loop only asks it to ``pick`` a token, ``accept``
one, and ``accept_forced`` the tokens of text the grammar leaves no choice about.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import llama_cpp
import numpy as np

from service.engine.base import GenerationFailed
from service.engine.forced_text import ForcedTextTracker, GrammarAutomaton
from service.engine.sampling import CPointer, GrammarSampler
from service.engine.text import IncompleteText, Utf8PieceDecoder

logger = logging.getLogger(__name__)


class Vocabulary(Protocol):
    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for."""
        ...

    def forced_tokens(self, text: str) -> list[int]:
        """The model's own tokens for ``text``, or none where no tokenization spells it."""
        ...


@dataclass(frozen=True)
class CompiledGrammar:
    """What every request on one grammar starts from (compiled once at load)."""

    sampler: CPointer  # llama.cpp's grammar sampler, cloned per request
    automaton: GrammarAutomaton
    possible: np.ndarray  # TOKEN_DATA of the tokens the grammar can ever allow
    everything: np.ndarray  # TOKEN_DATA of every token: the last resort


class GrammarState:
    def __init__(self, grammar: CompiledGrammar, vocabulary: Vocabulary, jump_forward: bool) -> None:
        self._vocabulary = vocabulary
        self._jump_forward = jump_forward
        self._sampler = llama_cpp.llama_sampler_clone(grammar.sampler)
        self._picker = GrammarSampler(self._sampler, grammar.possible, grammar.everything)
        self._tracker = ForcedTextTracker(grammar.automaton)
        self._decoder = Utf8PieceDecoder()

    @property
    def full_vocab_checks(self) -> int:
        return self._picker.full_vocab_checks

    @property
    def complete(self) -> bool:
        """The grammar allows only the end now, and no half character is held back."""
        return self._tracker.complete and not self._decoder.pending

    def pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        return self._picker.pick(logits, temperature, rng)

    def accept(self, token: int) -> str:
        """Advance the grammar by ``token``; the whole characters that completes ("" if none)."""
        llama_cpp.llama_sampler_accept(self._sampler, token)
        try:
            text = self._decoder.feed(self._vocabulary.piece(token))
            self._tracker.feed(text)
        except (IncompleteText, ValueError) as exc:
            raise GenerationFailed(str(exc)) from exc
        return text

    def accept_forced(self, room: int) -> tuple[list[int], str]:
        """Accept the tokens of the text the grammar forces now (at most ``room``), and return
        them with their text; they are decoded with the token before them, in one step."""
        # Text is tracked in whole characters: after half a character nothing is forced.
        if not self._jump_forward or self._decoder.pending:
            return [], ""
        accepted: list[int] = []
        text: list[str] = []
        for token in self._vocabulary.forced_tokens(self._tracker.forced())[: max(room, 0)]:
            if not self._picker.allows(token):
                # Our automaton and llama.cpp's grammar disagree: never accept a token the
                # grammar rejects (llama.cpp aborts the process on that).
                logger.warning("jump-forward token %d refused by the grammar; sampling instead", token)
                break
            text.append(self.accept(token))
            accepted.append(token)
        return accepted, "".join(text)

    def finish(self) -> None:
        """The answer ended: a character still half written is a failure."""
        try:
            self._decoder.finish()
        except IncompleteText as exc:
            raise GenerationFailed(str(exc)) from exc

    def close(self) -> None:
        if self._sampler is not None:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None
