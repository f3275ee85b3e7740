"""One request's grammar state: what it may write next, and the text it has written.

The grammar runs in llguidance (the grammar engine llama.cpp, vLLM and SGLang offer as an
option): it computes the set of allowed tokens over the whole vocabulary in well under a
millisecond, even gemma's 262k, and reports the tokens the grammar forces next, tokenized the way
the model would (jump-forward). This module adds what the service needs around it: exact
temperature sampling over the allowed tokens, and the UTF-8 decoder that holds half a character
back. The decode loop only asks it to ``pick`` a token, ``accept`` one, and ``accept_forced``
the tokens the grammar leaves no choice about.

``pick`` asks the grammar about one token before it builds the mask, as llama.cpp's own sampler
does: inside a JSON string nearly every token is allowed, and drawing noise for each of them,
with the mask unpacked into their ids, took 0.65 ms of a 36 ms step on SmolLM2 (issue #22),
once per stream per step, with llama.cpp's threads idle meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import llguidance
import numpy as np

from service.engine.base import GenerationFailed
from service.engine.text import IncompleteText, Utf8PieceDecoder

# A token this many nats (after the temperature) below the most likely one weighs at most e^-20 of
# it: ``softmax_draw`` reaches such tokens through a rejection step that 49k of them enter with
# a chance of 1e-4 at most.
TAIL_NATS = 20.0


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
        tokens, or the most likely allowed token at temperature 0.

        First a draw from the whole vocabulary: where the grammar allows it, it is the answer;
        where not, a second, independent draw over the allowed tokens alone. That is exact:
        an allowed token t comes out with p(t) + (1 - p(A)) p(t) / p(A) = p(t) / p(A), p(A)
        being the allowed tokens' share. At temperature 0 the most likely token, when allowed,
        is also the most likely allowed one."""
        token = softmax_draw(logits[: self._n_vocab], temperature, rng)
        if self._matcher.validate_tokens([token]) == 1:
            return token
        allowed = self.allowed()
        if not len(allowed):
            raise GenerationFailed(f"the grammar allows no token at all ({self._matcher.get_error()})")
        return int(allowed[softmax_draw(logits[allowed], temperature, rng)])

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


def softmax_draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """The index of a draw from softmax(logits / temperature), or of the largest at 0.

    Exact without an exponential per entry: the head, the entries within TAIL_NATS of the
    largest (after the temperature), is drawn from by its running sum; each entry of the tail
    weighs at most e^-TAIL_NATS of the largest, so the tail's share is bounded by its size
    times that and reached by rejection: a tail entry chosen uniformly is kept with its weight
    over the bound, else the draw starts again. Every round gives entry i with probability
    w_i / M for the same M, so the draw is w_i / sum(w). Exponentials over all 49k entries
    took 0.12-0.16 ms of a 0.45 ms draw right after a decode step on SmolLM2 (issue #22)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    largest = float(logits.max())
    threshold = largest - TAIL_NATS * temperature
    head = np.flatnonzero(logits > threshold)
    running = np.cumsum(np.exp((logits[head].astype(np.float64) - largest) / temperature))
    tail = len(logits) - len(head)
    tail_bound = tail * math.exp(-TAIL_NATS)
    while True:
        target = rng.random() * (running[-1] + tail_bound)
        if target < running[-1] or not tail:
            return int(head[min(int(np.searchsorted(running, target, side="right")), len(head) - 1)])
        candidate = _uniform_tail_entry(logits, threshold, tail, rng)
        if rng.random() < math.exp((float(logits[candidate]) - largest) / temperature + TAIL_NATS):
            return candidate


def _uniform_tail_entry(logits: np.ndarray, threshold: float, tail: int, rng: np.random.Generator) -> int:
    """One of the ``tail`` entries at or below ``threshold``, each equally likely: by rejection
    where they are most entries (two tries expected), else among their indices."""
    if 2 * tail < len(logits):
        entries = np.flatnonzero(logits <= threshold)
        return int(entries[rng.integers(len(entries))])
    while True:
        candidate = int(rng.integers(len(logits)))
        if logits[candidate] <= threshold:
            return candidate
