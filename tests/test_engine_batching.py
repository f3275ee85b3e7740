"""The real engine with several requests at once: every answer valid, whatever else happens
in the batch (requests joining, leaving, being evicted from a full cache)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.engine import ChatMessage, Generation, GenerationRequest
from service.engine.base import (
    EngineError,
    EngineStopped,
    FinishReason,
    GrammarDoesNotCompile,
    NoWordInTime,
    PromptDoesNotFit,
)
from service.engine.llama import LlamaConfig, LlamaCppEngine
from service.recommend import answer
from service.recommend.answer import parse_model_output, render
from service.recommend.catalog import CATEGORIES
from service.recommend.prompts import base_info_messages
from service.recommend.rendering import AnswerRenderer

GRAMMARS = answer.grammars()


def make_engine(path: Path, **config: object) -> LlamaCppEngine:
    return LlamaCppEngine(LlamaConfig(path, **config), GRAMMARS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(smollm_path: Path) -> Iterator[LlamaCppEngine]:
    loaded = make_engine(smollm_path, parallel=4)
    yield loaded
    asyncio.run(loaded.aclose())


def prompt(engine: LlamaCppEngine, index: int) -> tuple[int, ...]:
    category = CATEGORIES[index % len(CATEGORIES)]
    return tuple(engine.prompt_tokens(base_info_messages("도시", "사무직", category)))


def request(engine: LlamaCppEngine, index: int, max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt(engine, index),
        grammar=answer.GRAMMAR_NAME,
        max_tokens=max_tokens or answer.max_tokens(),
        temperature=0.7,
        seed=index,
    )


async def read(generation: Generation, index: int) -> str:
    """Reads the whole answer and checks what a consumer relies on."""
    renderer = AnswerRenderer()
    raw = []
    async for piece in generation:
        raw.append(piece)
        renderer.feed(piece)
    text = "".join(raw)
    answer = parse_model_output(text, CATEGORIES[index % len(CATEGORIES)])
    assert generation.stats.finish_reason is FinishReason.STOP
    assert renderer.text == render(answer)
    return text


def test_four_requests_at_once_all_get_valid_answers_with_forced_text_jumped(engine: LlamaCppEngine) -> None:
    async def run() -> list[Generation]:
        generations: list[Generation] = [engine.submit(request(engine, i)) for i in range(4)]
        await asyncio.gather(*(read(g, i) for i, g in enumerate(generations)))
        return generations

    generations = asyncio.run(run())
    for generation in generations:
        stats = generation.stats
        # The keys, the numbers and the punctuation between strings are never sampled.
        assert stats.forced_tokens >= 10
        assert stats.decode_steps < stats.generated_tokens
    # The instructions were evaluated once and shared: later requests found them cached.
    assert max(g.stats.cached_prompt_tokens for g in generations) > 0


def test_a_request_that_leaves_the_batch_does_not_disturb_the_others(engine: LlamaCppEngine) -> None:
    async def run() -> tuple[Generation, Generation]:
        leaving = engine.submit(request(engine, 10))
        staying = engine.submit(request(engine, 11))
        reader = asyncio.create_task(read(staying, 11))
        async for _ in leaving:
            break  # one piece, then the reader goes away
        await leaving.cancel()
        await reader
        return leaving, staying

    leaving, staying = asyncio.run(run())
    assert leaving.stats.finish_reason is FinishReason.CANCELLED
    assert staying.stats.finish_reason is FinishReason.STOP


@pytest.mark.parametrize(
    ("prompt_cache_mib", "comes_back"), [(0, "to be evaluated again"), (64, "its cells kept in host RAM")]
)
def test_a_full_cache_preempts_without_losing_an_answer(
    smollm_path: Path, prompt_cache_mib: int, comes_back: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A context that holds one request but not four: the youngest are evicted, their cells kept
    in host RAM (or, without a prompt cache, evaluated again), and every reader still gets a
    whole, valid answer."""
    small = make_engine(smollm_path, parallel=4, context_size=2048, prompt_cache_mib=prompt_cache_mib)
    try:

        async def run() -> list[Generation]:
            generations: list[Generation] = [small.submit(request(small, 30 + i, max_tokens=1000)) for i in range(4)]
            await asyncio.gather(*(read(g, 30 + i) for i, g in enumerate(generations)))
            return generations

        generations = asyncio.run(run())
    finally:
        asyncio.run(small.aclose())
    assert sum(g.stats.preemptions for g in generations) >= 1
    assert f"request preempted, {comes_back}" in caplog.text


def test_a_repeat_restores_the_first_requests_cells_and_answers_as_the_repeat_after_it(smollm_path: Path) -> None:
    """The first request's cells are kept with the instructions (nothing shared them yet); once
    the holder shares them, a repeat restores only what lies beyond, and a later repeat (after
    another request took the holder) restores the same cells: with the same seed, the same
    answer."""
    fresh = make_engine(smollm_path, parallel=4)
    try:

        async def run() -> list[tuple[Generation, str]]:
            done: list[tuple[Generation, str]] = []
            for index in (60, 61, 60, 61, 60):
                generation = fresh.submit(request(fresh, index))
                done.append((generation, await read(generation, index)))
            return done

        first, _, repeat, _, again = asyncio.run(run())
    finally:
        asyncio.run(fresh.aclose())
    assert first[0].stats.prompt_cache_hit is False
    assert repeat[0].stats.prompt_cache_hit and again[0].stats.prompt_cache_hit
    assert repeat[0].stats.restored_prompt_tokens == again[0].stats.restored_prompt_tokens > 0
    assert repeat[1] == again[1]


def test_a_prompt_that_cannot_fit_fails_alone(engine: LlamaCppEngine) -> None:
    async def run() -> None:
        async for _ in engine.submit(request(engine, 40, max_tokens=engine.n_ctx)):
            pass

    with pytest.raises(PromptDoesNotFit):
        asyncio.run(run())


def test_a_request_past_its_deadline_leaves_the_batch_and_the_other_finishes(engine: LlamaCppEngine) -> None:
    async def run() -> tuple[Generation, Generation]:
        hurried = engine.submit(
            GenerationRequest(
                prompt=prompt(engine, 50),
                grammar=answer.GRAMMAR_NAME,
                max_tokens=answer.max_tokens(),
                seed=50,
                deadline_s=0.3,
            )
        )
        patient = engine.submit(request(engine, 51))
        reader = asyncio.create_task(read(patient, 51))
        async for _ in hurried:
            pass
        await reader
        return hurried, patient

    hurried, patient = asyncio.run(run())
    assert hurried.stats.finish_reason is FinishReason.DEADLINE
    assert patient.stats.finish_reason is FinishReason.STOP


def test_a_prompt_that_cannot_be_made_fails_on_the_callers_side_and_the_batch_goes_on(engine: LlamaCppEngine) -> None:
    # Regression (#13): a prompt that cannot be tokenized (a lone surrogate cannot be UTF-8)
    # raised in the decode loop's admission, outside its error handling: every running
    # request failed, and again at every step while the bad one stayed first in the queue.
    # Since issue #23 prompts are tokenized before they are submitted: the decode thread never
    # sees it.
    async def run() -> None:
        steady = engine.submit(request(engine, 60))
        reader = asyncio.create_task(read(steady, 60))
        await asyncio.sleep(0.2)
        with pytest.raises(UnicodeEncodeError):
            engine.prompt_tokens((ChatMessage("user", "\ud800 깨진 글자"),))
        await reader
        await read(engine.submit(request(engine, 61)), 61)  # and the next one is served too

    asyncio.run(run())


def test_a_grammar_that_does_not_compile_stops_the_start_with_its_name(smollm_path: Path) -> None:
    # Mistyped rule name: the service must not start and serve requests that would all fail.
    with pytest.raises(GrammarDoesNotCompile, match="문법 broken"):
        LlamaCppEngine(LlamaConfig(smollm_path), {"broken": 'root ::= "{" missing-rule "}"'})


def test_when_the_decode_thread_dies_every_request_fails_at_once_and_the_engine_says_so(smollm_path: Path) -> None:
    """Issue #21: a bug that kills the decode thread left streams with pings and no close."""
    doomed = make_engine(smollm_path, parallel=2)

    async def scenario() -> tuple[list[str], float]:
        running = doomed.submit(request(doomed, 0))
        first = await anext(aiter(running))  # it is generating
        assert first and doomed.alive

        def broken() -> bool:
            raise RuntimeError("injected fault in the decode loop")

        doomed._decode_loop._scheduler.admissible = broken  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        waiting = doomed.submit(request(doomed, 1))  # wakes the loop, which dies on the injected fault
        failures = []
        for generation in (running, waiting):
            # The step that met the fault fails its requests; the thread's death fails the rest.
            with pytest.raises(EngineError) as caught:
                async for _ in generation:
                    pass
            failures.append(str(caught.value))
        elapsed = asyncio.get_running_loop().time() - started
        assert not doomed.alive
        with pytest.raises(EngineStopped):
            doomed.submit(request(doomed, 2))
        return failures, elapsed

    failures, elapsed = asyncio.run(scenario())
    assert all("injected fault" in failure for failure in failures)
    assert elapsed < 10  # at once, not at some deadline
    asyncio.run(doomed.aclose())


def test_a_generation_the_decode_thread_stops_answering_ends_by_the_event_loops_own_deadline(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode thread enforces deadlines between steps; a step that never returns would leave
    its readers waiting for ever, so the event loop keeps a deadline of its own (issue #21)."""
    monkeypatch.setattr("service.engine.llama.BACKSTOP_SLACK_S", 0.5)
    runner = engine._decode_loop._runner
    decode = runner.decode
    stalled: list[bool] = []

    def stalls_once(chunks: Any) -> Any:
        if not stalled:
            stalled.append(True)
            time.sleep(3)  # a stuck step
        return decode(chunks)

    monkeypatch.setattr(runner, "decode", stalls_once)

    async def scenario() -> float:
        generation = engine.submit(dataclasses.replace(request(engine, 3), deadline_s=0.5))
        started = asyncio.get_running_loop().time()
        with pytest.raises(NoWordInTime):
            async for _ in generation:
                pass
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 2.5  # the loop's deadline, not the 3 s stall
    time.sleep(3)  # the stalled step ends; the engine goes on for the next tests
