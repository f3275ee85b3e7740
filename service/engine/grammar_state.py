"""One request's grammar state: what it may write next, and the text it has written.

The grammar runs in llguidance (the grammar engine llama.cpp, vLLM and SGLang offer as an
option): it computes the set of allowed tokens over the whole vocabulary in well under a
millisecond, even gemma's 262k, and reports the tokens the grammar forces next, tokenized the way
the model would (jump-forward). This module adds what the service needs around it: exact
temperature sampling over the allowed tokens, and the UTF-8 decoder that holds half a character
back. The decode loop only asks it to ``pick`` a token, ``accept`` one, and ``accept_forced``
the tokens the grammar leaves no choice about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import llguidance
import numpy as np

from service.engine.base import GenerationFailed
from service.engine.text import IncompleteText, Utf8PieceDecoder


class Vocabulary(Protocol):
    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for."""
        ...


@dataclass(frozen=True)
class CompiledGrammar:
    """What every request on one grammar starts from (compiled once at load)."""

    tokenizer: llguidance.LLTokenizer
    definition: str  # the GBNF in llguidance's own form
    n_vocab: int

    @classmethod
    def from_gbnf(cls, text: str, tokenizer: llguidance.LLTokenizer, n_vocab: int) -> CompiledGrammar:
        definition = llguidance.grammar_from("gbnf", text)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(definition, tokenizer)
        if is_error:
            raise ValueError(f"llguidance rejects the grammar: {'; '.join(messages)}")
        return cls(tokenizer, definition, n_vocab)

    def start(self, vocabulary: Vocabulary, jump_forward: bool) -> GrammarState:
        return GrammarState(self, vocabulary, jump_forward)


class GrammarState:
    def __init__(self, grammar: CompiledGrammar, vocabulary: Vocabulary, jump_forward: bool) -> None:
        self._vocabulary = vocabulary
        self._jump_forward = jump_forward
        self._n_vocab = grammar.n_vocab
        self._matcher = llguidance.LLMatcher(grammar.tokenizer, grammar.definition)
        # One bit per token of llguidance's vocabulary, filled in place every step.
        self._mask = np.zeros((grammar.tokenizer.vocab_size + 31) // 32, dtype=np.uint32)
        self._decoder = Utf8PieceDecoder()

    @property
    def complete(self) -> bool:
        """The grammar allows only the end now, and no half character is held back."""
        return self._matcher.is_stopped() and not self._decoder.pending

    def allowed(self) -> np.ndarray:
        """The token ids the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self._n_vocab]
        allowed: np.ndarray = np.flatnonzero(bits)
        return allowed

    def pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        """A token drawn from softmax(logits / temperature) renormalised over the allowed
        tokens (Gumbel-max: the noisy argmax over them is exactly that draw), or the most
        likely allowed token at temperature 0."""
        allowed = self.allowed()
        if not len(allowed):
            raise GenerationFailed(f"the grammar allows no token at all ({self._matcher.get_error()})")
        scores = logits[allowed]
        if temperature > 0:
            scores = scores / temperature + rng.gumbel(size=len(allowed))
        return int(allowed[int(np.argmax(scores))])

    def accept(self, token: int) -> str:
        """Advance the grammar by ``token``; the whole characters that completes ("" if none)."""
        if not self._matcher.consume_token(token):
            raise GenerationFailed(f"the grammar refused token {token} ({self._matcher.get_error()})")
        try:
            return self._decoder.feed(self._vocabulary.piece(token))
        except IncompleteText as exc:
            raise GenerationFailed(str(exc)) from exc

    def accept_forced(self, room: int) -> tuple[list[int], str]:
        """Accept the tokens the grammar forces now (at most ``room``), and return them with
        their text; they are decoded with the token before them, in one step."""
        if not self._jump_forward or room <= 0:
            return [], ""
        tokens = self._matcher.compute_ff_tokens()[:room]
        return tokens, "".join([self.accept(token) for token in tokens])

    def finish(self) -> None:
        """The answer ended: a character still half written is a failure."""
        try:
            self._decoder.finish()
        except IncompleteText as exc:
            raise GenerationFailed(str(exc)) from exc
