"""Before serving (issue #23: out of the serving hub): the context must hold the longest prompt
and the longest answer; a warm-up loads the instructions into the KV cache and measures this
machine's decode speed; the generation deadline and the shutdown grace follow that speed (the
arithmetic is service.recommend.deadline, unit-tested without an engine)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from dataclasses import dataclass
from time import perf_counter

from service.engine import Engine, Generation, GenerationRequest, GenerationStats
from service.engine.text import hangul_syllables
from service.recommend import answer
from service.recommend.catalog import CATEGORIES, LOCATIONS, WORK_TYPES
from service.recommend.deadline import AUTO_GRACE_UNMEASURED_S, AUTO_MAX_S, plan_deadline
from service.recommend.prompts import EXAMPLE_ANSWER, base_info_messages, free_text_messages, free_text_request
from service.settings import AUTO_PARALLEL_MIN, STREAM_FLOOR_TOKENS_S, Settings
from service.startup import StartupError

logger = logging.getLogger(__name__)

# The costliest characters a message may hold: a rare syllable (three byte tokens on byte-level
# tokenizers) and an emoji (four bytes, so up to four tokens); the start-up check takes the worse.
COSTLIEST_CHARACTERS = ("뷁", "\U0001f977")
# Tokens the warm-up generates: enough to time the decode loop (see measured_timings).
WARM_UP_TOKENS = 16
# A Korean answer is 300-400 syllables (issue #11); the grammar's longest is all syllables,
# three bytes each. Their cost in tokens is this model's tokens per syllable of the example.
TYPICAL_ANSWER_SYLLABLES = 350


@dataclass(frozen=True)
class Timings:
    """How long a generation may run, and how long a draining replica lets accepted ones finish."""

    generation_deadline_s: float
    shutdown_grace_s: float


def initial_timings(settings: Settings) -> Timings:
    """Before the warm-up has measured anything: generous automatic values."""
    timeout, grace = settings.generation_timeout_s, settings.shutdown_grace_s
    return Timings(
        generation_deadline_s=min(AUTO_MAX_S, settings.auto_deadline_ceiling_s) if timeout == "auto" else timeout,
        shutdown_grace_s=AUTO_GRACE_UNMEASURED_S if grace == "auto" else grace,
    )


def check_context_fits(engine: Engine, max_message_chars: int, max_tokens: int) -> None:
    """Fail at start-up, not on some request later, if the longest base-info prompt or the
    longest free-text message (with no history) plus the longest answer does not fit."""
    places, works = sorted(set(LOCATIONS.values())), sorted(set(WORK_TYPES.values()))
    longest_base = max(
        engine.count_tokens(base_info_messages(place, work, category))
        for place, work, category in itertools.product(places, works, CATEGORIES)
    )
    longest_free = max(
        engine.count_tokens(
            free_text_messages((), free_text_request("바닷가", "재택근무", category, char * max_message_chars))
        )
        for category in CATEGORIES
        for char in COSTLIEST_CHARACTERS
    )
    longest = max(longest_base, longest_free)
    needed = longest + max_tokens
    if needed > engine.info.context_size:
        raise StartupError(
            f"LEAFRESH_CONTEXT_SIZE={engine.info.context_size}가 너무 작습니다: 가장 긴 프롬프트 {longest} 토큰"
            f"(LEAFRESH_MAX_MESSAGE_CHARS={max_message_chars} 포함)과 가장 긴 답 {max_tokens} 토큰을 "
            f"합쳐 {needed} 토큰이 필요합니다 — LEAFRESH_CONTEXT_SIZE를 {needed} 이상으로 지정하세요"
        )


def _warm_up_request(prompt: list[int]) -> GenerationRequest:
    return GenerationRequest(
        prompt=tuple(prompt), grammar=answer.GRAMMAR_NAME, max_tokens=WARM_UP_TOKENS, temperature=0.0
    )


async def _warm_up_prompt(engine: Engine) -> list[int]:
    messages = base_info_messages("도시", "사무직", CATEGORIES[0])
    return await asyncio.to_thread(engine.prompt_tokens, messages)


async def warm_up(engine: Engine) -> GenerationStats:
    """The start of a real base-info answer: loads the instructions into the KV cache; its
    statistics give this machine's decode speed."""
    generation = engine.submit(_warm_up_request(await _warm_up_prompt(engine)))
    async for _ in generation:
        pass
    return generation.stats


def initial_parallel(settings: Settings) -> int:
    """Generations at once until the warm-up has measured this machine (``choose_parallel``)."""
    if isinstance(settings.parallel, int):
        return settings.parallel
    return min(AUTO_PARALLEL_MIN, settings.max_parallel)


@dataclass(frozen=True)
class ParallelChoice:
    """How many generations run at once, and the decode speed each then gets (tokens/s)."""

    parallel: int
    stream_tokens_per_s: float


async def choose_parallel(engine: Engine, alone: GenerationStats, most: int) -> ParallelChoice:
    """LEAFRESH_PARALLEL=auto (issue #22): as many generations at once as each still streams
    STREAM_FLOOR_TOKENS_S, at least AUTO_PARALLEL_MIN and at most ``most`` (Settings.max_parallel:
    the context's room). Where one stream alone is too slow for more than the least, that is
    all; otherwise ``most`` warm-up generations run at once, and their aggregate speed, shared
    by the streams, decides. One stream alone says little about many: on 2 cores the embedded
    model's 16 streams wrote 5-7 tokens/s each while its first warm-up measured 58 alone."""
    least = min(AUTO_PARALLEL_MIN, most)
    # Tokens, forced ones included: a reader sees them all.
    speed, streams = alone.tokens_per_second, 1
    if speed // STREAM_FLOOR_TOKENS_S > least:
        speed, streams = await _speed_together(engine, most), most
    chosen = max(least, min(most, int(speed // STREAM_FLOOR_TOKENS_S)))
    logger.info(
        "parallel generations: %d (auto: %.1f tokens/s with %d at once at warm-up ÷ %.0f tokens/s per stream, "
        "at least %d, context room for %d)",
        chosen,
        speed,
        streams,
        STREAM_FLOOR_TOKENS_S,
        least,
        most,
    )
    # Without a measurement together, the cautious guess: streams share one stream's speed.
    return ParallelChoice(chosen, min(alone.tokens_per_second, speed / chosen))


async def _speed_together(engine: Engine, streams: int) -> float:
    """Aggregate tokens/s of ``streams`` warm-up generations at once (the prompt is cached)."""
    request = _warm_up_request(await _warm_up_prompt(engine))
    started = perf_counter()
    generations = [engine.submit(request) for _ in range(streams)]

    async def drain(generation: Generation) -> int:
        async for _ in generation:
            pass
        return generation.stats.generated_tokens

    tokens = sum(await asyncio.gather(*(drain(g) for g in generations)))
    return tokens / (perf_counter() - started)


def _sampled_steps_per_s(stats: GenerationStats) -> float:
    # Sampled steps, not tokens: the forced ones come in bulk and would flatter the speed.
    return stats.decode_steps / stats.decode_seconds if stats.decode_seconds > 0 else 0.0


def measured_timings(
    engine: Engine,
    settings: Settings,
    stats: GenerationStats,
    before: Timings,
    stream_tokens_per_s: float | None = None,
) -> Timings:
    """The automatic deadline and shutdown grace from the speed the warm-up showed; a value the
    operator set stays. ``stream_tokens_per_s``: each stream's speed with as many at once as
    LEAFRESH_PARALLEL=auto chose. The deadline follows that one, since a full engine is when
    answers are slowest: auto picks as many streams as still get 5 tokens/s each (11-16 on 2
    cores), and at that speed any answer over 600 tokens would pass the 120 s sized for one
    stream alone. The shutdown grace keeps the speed alone, as the deployments' termination
    periods were sized to it (README "Replicas"), and so does the too-slow warning: it is about
    the machine, not the load."""
    speed = _sampled_steps_per_s(stats)
    per_syllable = engine.count_text_tokens(EXAMPLE_ANSWER) / hangul_syllables(EXAMPLE_ANSWER)
    longest = min(answer.max_tokens(), math.ceil(answer.grammar().max_bytes() / 3 * per_syllable))
    typical = round(TYPICAL_ANSWER_SYLLABLES * per_syllable)
    plan = plan_deadline(speed, typical, longest, settings.auto_deadline_ceiling_s)
    loaded = plan
    if stream_tokens_per_s is not None and 0 < stream_tokens_per_s < stats.tokens_per_second:
        loaded_speed = speed * stream_tokens_per_s / stats.tokens_per_second
        loaded = plan_deadline(loaded_speed, typical, longest, settings.auto_deadline_ceiling_s)
    deadline, grace = before.generation_deadline_s, before.shutdown_grace_s
    if settings.generation_timeout_s == "auto":
        deadline = loaded.deadline_s
        described = plan.describe() if loaded is plan else loaded.describe_with_the_engine_full(plan)
        logger.info("generation deadline: %s", described)
        if plan.typical_answer_s > deadline:
            logger.warning(
                "on this machine a typical answer takes about %.0f s, past the %.0f s deadline and the Spring relay's "
                "300 s: most requests will end with 504. Offload layers to a GPU (LEAFRESH_GPU_LAYERS) or serve a "
                "smaller model",
                plan.typical_answer_s,
                deadline,
            )
    if settings.shutdown_grace_s == "auto":
        grace = min(plan.drain_grace_s, deadline)
        logger.info(
            "shutdown grace: %.0f s (auto: twice a typical answer of about %.0f s, at most the deadline)",
            grace,
            plan.typical_answer_s,
        )
    return Timings(deadline, grace)
