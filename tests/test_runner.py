"""What the model runner promises the decode loop, on the real embedded model: a step that
carries a prompt chunk beside decoding sequences gives the same next tokens whether it is one
llama_decode call or two (the CPU's, issue #22), and a step that does not fit leaves nothing of
itself in the cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.engine.llama import LlamaConfig, LlamaCppEngine
from service.engine.runner import CacheFull, Chunk, ModelRunner
from service.recommend import answer

FIRST, SECOND = 1, 2


@pytest.fixture(scope="module")
def engine(smollm_path: Path) -> Iterator[LlamaCppEngine]:
    # Its decode loop stays idle: the tests drive its context through runners of their own.
    loaded = LlamaCppEngine(LlamaConfig(smollm_path, parallel=2, context_size=512), answer.grammars())
    yield loaded
    asyncio.run(loaded.aclose())


def runner(engine: LlamaCppEngine, split: bool) -> ModelRunner:
    made = ModelRunner(engine.ctx, 512, engine.tokens.n_vocab, engine.threads, split_prompt_steps=split)
    made.clear()
    return made


def text_tokens(engine: LlamaCppEngine, text: str, count: int) -> list[int]:
    tokens = engine.tokens.tokenize(text * count, parse_special=False)
    assert len(tokens) >= count
    return tokens[:count]


def mixed_step(engine: LlamaCppEngine, split: bool) -> list[int]:
    """One sequence decoding beside another's prompt chunk: the next token of each."""
    run = runner(engine, split)
    try:
        first = text_tokens(engine, "친환경 챌린지를 추천해 주세요. ", 120)
        second = text_tokens(engine, "플라스틱을 줄이는 방법. ", 100)
        run.decode([Chunk(FIRST, 0, first[:-1], logits=False, prompt=True)])
        rows = run.decode(
            [Chunk(FIRST, 119, first[-1:], logits=True), Chunk(SECOND, 0, second, logits=True, prompt=True)]
        )
        return [int(np.argmax(row)) for row in rows if row is not None]
    finally:
        run.close()


def test_a_step_split_in_two_calls_gives_the_same_next_tokens_as_one_call(engine: LlamaCppEngine) -> None:
    assert mixed_step(engine, split=True) == mixed_step(engine, split=False)


@pytest.mark.parametrize("split", [False, True])
def test_a_step_that_does_not_fit_leaves_nothing_of_itself(engine: LlamaCppEngine, split: bool) -> None:
    """The decoding token fits and the prompt chunk does not: after CacheFull the decoding
    sequence takes the same token again at the same position, as the loop retries it."""
    run = runner(engine, split)
    try:
        first = text_tokens(engine, "친환경 챌린지를 추천해 주세요. ", 300)
        run.decode([Chunk(FIRST, 0, first[:-1], logits=False, prompt=True)])
        too_long = text_tokens(engine, "플라스틱을 줄이는 방법. ", 300)
        with pytest.raises(CacheFull):
            run.decode([Chunk(FIRST, 299, first[-1:], logits=True), Chunk(SECOND, 0, too_long, True, prompt=True)])
        (row,) = run.decode([Chunk(FIRST, 299, first[-1:], logits=True)])
        assert row is not None and np.isfinite(row).all()
    finally:
        run.close()
