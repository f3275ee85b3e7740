"""GrammarState.pick: draws exactly from the softmax renormalised over what the grammar allows,
whether the whole vocabulary's draw is mostly allowed (the fast path) or mostly refused (the
draw again over the allowed tokens). llguidance's byte tokenizer stands in for a model's."""

from __future__ import annotations

from collections.abc import Callable

import llguidance
import numpy as np
import pytest

from service.engine import grammar_state
from service.engine.grammar_state import CompiledGrammar, GrammarState, softmax_draw

TOKENIZER = llguidance.LLTokenizer("byte")
LETTERS = [ord(letter) for letter in "abcde"]
# chi-square with 4 degrees of freedom (five letters), exceeded with probability 0.001.
CHI_SQUARE_4_AT_0_001 = 18.47
DRAWS = 20_000


class ByteVocabulary:
    def piece(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""


def letters_state() -> GrammarState:
    grammar = CompiledGrammar.from_gbnf('root ::= [a-e]+ "."', TOKENIZER, TOKENIZER.vocab_size)
    return grammar.start(ByteVocabulary(), jump_forward=True)


def logits_with(letter_logits: list[float], others: float) -> np.ndarray:
    logits = np.full(TOKENIZER.vocab_size, others, dtype=np.float32)
    logits[LETTERS] = letter_logits
    return logits


def chi_square(picks: list[int], logits: np.ndarray, temperature: float) -> float:
    scaled = logits[LETTERS] / temperature
    expected = np.exp(scaled - scaled.max())
    expected = expected / expected.sum() * len(picks)
    observed = np.array([picks.count(letter) for letter in LETTERS])
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    "others",
    [
        pytest.param(-20.0, id="whole-vocabulary-draw-mostly-allowed"),
        pytest.param(4.0, id="whole-vocabulary-draw-mostly-refused"),
    ],
)
def test_pick_draws_from_the_softmax_over_the_allowed_tokens_only(others: float) -> None:
    state = letters_state()
    logits = logits_with([1.0, 0.5, 0.0, -0.5, -1.5], others)
    rng = np.random.default_rng(22)
    picks = [state.pick(logits, 0.7, rng) for _ in range(DRAWS)]
    assert set(picks) <= set(LETTERS)
    assert chi_square(picks, logits, 0.7) < CHI_SQUARE_4_AT_0_001


def test_pick_at_temperature_zero_takes_the_most_likely_allowed_token() -> None:
    state = letters_state()
    logits = logits_with([0.0, 2.0, 1.0, -1.0, 0.5], others=-5.0)
    logits[ord("x")] = 9.0  # the most likely of all, which the grammar refuses
    assert state.pick(logits, 0.0, np.random.default_rng(0)) == ord("b")
    logits[ord("x")] = -9.0
    assert state.pick(logits, 0.0, np.random.default_rng(0)) == ord("b")


def test_pick_after_the_letters_allows_the_end_only_where_the_grammar_does() -> None:
    state = letters_state()
    state.accept(ord("a"))
    logits = logits_with([0.0] * 5, others=-30.0)
    logits[ord(".")] = 3.0
    rng = np.random.default_rng(1)
    picks = {state.pick(logits, 0.7, rng) for _ in range(200)}
    assert ord(".") in picks and picks <= {*LETTERS, ord(".")}


def mostly_tail() -> np.ndarray:
    logits = np.random.default_rng(5).normal(size=300).astype(np.float32)
    logits[[3, 150, 299]] += 2.0
    return logits


def mostly_head() -> np.ndarray:
    # 280 equal entries and 20 lower ones, which carry about 1% of the weight together.
    logits: np.ndarray = np.concatenate([np.zeros(280), np.full(20, -1.5)]).astype(np.float32)
    return logits


@pytest.mark.parametrize("tail_nats", [1.0, 3.0, grammar_state.TAIL_NATS])
@pytest.mark.parametrize("make_logits", [mostly_tail, mostly_head])
def test_softmax_draw_follows_the_softmax_in_its_head_and_its_tail(
    tail_nats: float, make_logits: Callable[[], np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small TAIL_NATS puts much of the weight in the tail, which only the rejection step
    # reaches: the whole distribution must still come out.
    monkeypatch.setattr(grammar_state, "TAIL_NATS", tail_nats)
    logits = make_logits()
    scaled = logits / 0.7
    expected = np.exp(scaled - scaled.max())
    expected = expected / expected.sum() * DRAWS * 5
    rng = np.random.default_rng(7)
    counts = np.bincount([softmax_draw(logits, 0.7, rng) for _ in range(DRAWS * 5)], minlength=len(logits))
    frequent = expected >= 20
    chi = float(((counts[frequent] - expected[frequent]) ** 2 / expected[frequent]).sum())
    degrees = int(frequent.sum()) - 1
    # Far inside: the chi-square's mean is its degrees of freedom, its deviation sqrt(2 df).
    assert chi < degrees + 5 * (2 * degrees) ** 0.5
    assert counts[~frequent].sum() < 2 * expected[~frequent].sum() + 20


def test_softmax_draw_at_temperature_zero_is_the_largest() -> None:
    logits = np.zeros(1000, dtype=np.float32)
    logits[517] = 1.0
    assert softmax_draw(logits, 0.0, np.random.default_rng(0)) == 517
