"""The generation deadline: fixed, or following the decode speed measured at warm-up."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.engine import GenerationStats
from service.recommend.deadline import AUTO_MAX_S, AUTO_MIN_S, plan_deadline
from service.recommend.preflight import initial_timings, measured_timings
from service.recommend.serving import RecommendationService
from service.recommend.sessions import MemorySessionStore
from service.settings import Settings
from tests.fakes import ScriptedEngine


def test_a_fast_machine_keeps_the_floor() -> None:
    plan = plan_deadline(tokens_per_s=80.0, typical_answer_tokens=400, longest_answer_tokens=1974)
    assert plan.deadline_s == AUTO_MIN_S and not plan.too_slow


def test_a_slow_machine_gets_time_for_the_longest_answer() -> None:
    plan = plan_deadline(tokens_per_s=12.0, typical_answer_tokens=400, longest_answer_tokens=1974)
    assert plan.deadline_s == pytest.approx(1.25 * 1974 / 12.0)
    assert AUTO_MIN_S < plan.deadline_s < AUTO_MAX_S


def test_the_production_model_on_two_cores_stops_short_of_the_relay_and_says_so() -> None:
    # Mistral-7B Q4_K_M on 2 CPU cores: about 3.6 tokens/s (issue #11).
    plan = plan_deadline(tokens_per_s=3.6, typical_answer_tokens=1100, longest_answer_tokens=1974)
    assert plan.deadline_s == AUTO_MAX_S < 300
    assert plan.too_slow and "generation deadline 280 s" in plan.describe()


def service_after_warm_up(settings: Settings, step_s: float) -> RecommendationService:
    """Warmed up on a machine that takes ``step_s`` per decode step (one token per character
    on the scripted engine: a typical answer is about 890 tokens, the longest about 1,680)."""
    engine = ScriptedEngine(simulated_step_s=step_s)
    service = RecommendationService(engine, settings, MemorySessionStore(10, 5, 60))
    asyncio.run(service.warm_up())
    return service


def test_auto_follows_the_warm_up_and_a_number_stays_fixed(caplog: pytest.LogCaptureFixture) -> None:
    assert Settings(_env_file=None).generation_timeout_s == "auto"
    with caplog.at_level(logging.INFO, logger="service.recommend.preflight"):
        fast = service_after_warm_up(Settings(_env_file=None), step_s=0.001)
    assert fast.generation_deadline_s == AUTO_MIN_S
    assert "generation deadline:" in caplog.text
    slow = service_after_warm_up(Settings(_env_file=None), step_s=0.1)
    assert AUTO_MIN_S < slow.generation_deadline_s < AUTO_MAX_S
    fixed = service_after_warm_up(Settings(_env_file=None, generation_timeout_s=30), step_s=0.1)
    assert fixed.generation_deadline_s == 30


def test_a_machine_too_slow_for_a_typical_answer_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.recommend.preflight"):
        service_after_warm_up(Settings(_env_file=None), step_s=2.0)
    assert "most requests will end with 504" in caplog.text


def test_auto_parallel_follows_the_warm_up_within_the_context_and_a_number_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue #22: a fast small model starts a whole burst at once, a slow machine keeps 4, and
    the context's room caps both."""
    settings = Settings(_env_file=None)
    assert settings.parallel == "auto" and settings.max_parallel == settings.context_size // 512
    with caplog.at_level(logging.INFO, logger="service.recommend.preflight"):
        fast = service_after_warm_up(settings, step_s=0.001)
    assert fast.admission.slots == settings.max_parallel
    assert "parallel generations: 16" in caplog.text
    assert "16 at once" in caplog.text  # its aggregate with as many streams as the context holds decided
    assert service_after_warm_up(settings, step_s=0.3).admission.slots == 4  # a 7B model on a CPU
    small_context = Settings(_env_file=None, context_size=2048)
    assert service_after_warm_up(small_context, step_s=0.001).admission.slots == 4
    assert service_after_warm_up(Settings(_env_file=None, parallel=2), step_s=0.001).admission.slots == 2


def test_with_auto_parallelism_the_deadline_follows_each_streams_speed_with_the_engine_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At 30 tokens/s alone the longest answer fits the 120 s floor; with 16 at once at 5
    tokens/s each, an answer over 600 tokens would not. The grace stays with the speed alone."""
    engine, settings = ScriptedEngine(), Settings(_env_file=None)
    alone = GenerationStats(generated_tokens=300, decode_seconds=10.0, decode_steps=300)  # 30 tokens/s
    before = initial_timings(settings)
    single = measured_timings(engine, settings, alone, before)
    with caplog.at_level(logging.INFO, logger="service.recommend.preflight"):
        full = measured_timings(engine, settings, alone, before, stream_tokens_per_s=5.0)
    assert single.generation_deadline_s == AUTO_MIN_S
    assert full.generation_deadline_s == settings.auto_deadline_ceiling_s  # 230 s: 1,680 tokens at 5/s
    assert full.shutdown_grace_s == single.shutdown_grace_s
    assert "decode 30.0 tokens/s alone at warm-up, 5.0 each with the engine full" in caplog.text
    assert "generation deadline 230 s" in caplog.text and "504" not in caplog.text
