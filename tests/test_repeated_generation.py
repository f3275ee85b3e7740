"""The product promises zero malformed answers: 30 hot generations per test model (the two tiny
ones and the production model's stand-in, whose tokenizer writes Korean in byte tokens), all valid.

Temperature 1.5 makes the tiny models write nearly at random, which is exactly what tests the
grammar: whatever the model wants, the output is strict JSON that the schema accepts, it never
runs out of tokens, and the streamed pieces add up to its rendering. The answers are generated
four at a time, so batching and jump-forward are under the same test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.engine import GenerationRequest
from service.engine.base import FinishReason
from service.engine.llama import LlamaConfig, LlamaCppEngine
from service.recommend import answer
from service.recommend.answer import parse_model_output, render
from service.recommend.catalog import CATEGORIES, LOCATIONS, WORK_TYPES
from service.recommend.prompts import base_info_messages
from service.recommend.rendering import AnswerRenderer

# Every test here runs a real model (chosen by parameter, so no fixture says so).
pytestmark = pytest.mark.model

RUNS = 30
TEMPERATURE = 1.5
PARALLEL = 4


@pytest.fixture(params=["smollm", "gemma", "standin"])
def engine(request: pytest.FixtureRequest) -> Iterator[LlamaCppEngine]:
    path: Path = request.getfixturevalue(f"{request.param}_path")
    loaded = LlamaCppEngine(LlamaConfig(path, parallel=PARALLEL), answer.grammars())
    yield loaded
    asyncio.run(loaded.aclose())


async def generate_one(engine: LlamaCppEngine, seed: int) -> str | None:
    """One answer at temperature 1.5; a description of what went wrong, or None."""
    places, works = sorted(set(LOCATIONS.values())), sorted(WORK_TYPES)
    category = CATEGORIES[seed % len(CATEGORIES)]
    messages = base_info_messages(places[seed % len(places)], works[seed % len(works)], category)
    request = GenerationRequest(
        prompt=tuple(engine.prompt_tokens(messages)),
        grammar=answer.GRAMMAR_NAME,
        max_tokens=answer.max_tokens(),
        temperature=TEMPERATURE,
        seed=seed,
    )
    generation = engine.submit(request)
    renderer = AnswerRenderer()
    raw = []
    async for piece in generation:
        raw.append(piece)
        renderer.feed(piece)
    try:
        parsed = parse_model_output("".join(raw), category)
        assert generation.stats.finish_reason is FinishReason.STOP
        assert renderer.text == render(parsed)
    except Exception as exc:  # noqa: BLE001 - count every kind of failure, report them all
        return f"seed {seed}: {exc!r}: {''.join(raw)[:300]}"
    return None


async def generate_all(engine: LlamaCppEngine) -> list[str]:
    """All RUNS answers, PARALLEL at a time, as simultaneous users would get them: batched,
    joining and leaving the batch at different steps, with jump-forward."""
    slots = asyncio.Semaphore(PARALLEL)

    async def limited(seed: int) -> str | None:
        async with slots:
            return await generate_one(engine, seed)

    results = await asyncio.gather(*(limited(seed) for seed in range(RUNS)))
    return [failure for failure in results if failure is not None]


@pytest.mark.slow
def test_thirty_hot_generations_are_all_valid(engine: LlamaCppEngine) -> None:
    failures = asyncio.run(generate_all(engine))
    assert failures == [], f"{len(failures)} of {RUNS} answers failed:\n" + "\n".join(failures)
