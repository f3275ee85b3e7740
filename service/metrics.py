"""Prometheus metrics, one registry per app (tests build many apps; a global registry would
refuse the second). Names follow Prometheus conventions; /metrics serves them."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes and friends: memory must stay flat under load.
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "leafresh_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.queue_depth = Gauge("leafresh_queue_depth", "Requests waiting for the engine", registry=r)
        self.active = Gauge("leafresh_generations_active", "Generations running now", registry=r)
        self.parallel = Gauge(
            "leafresh_parallel_slots", "Generations that may run at once (LEAFRESH_PARALLEL, auto settled)", registry=r
        )
        self.queue_wait = Histogram(
            "leafresh_queue_wait_seconds", "Time a request waited for the engine", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.first_token = Histogram(
            "leafresh_time_to_first_token_seconds",
            "From engine start to the first readable piece",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("leafresh_generated_tokens", "Tokens generated", registry=r)
        self.forced_tokens = Counter(
            "leafresh_forced_tokens", "Tokens appended without sampling: the grammar allowed only them", registry=r
        )
        self.preemptions = Counter(
            "leafresh_preemptions", "Generations evicted from a full KV cache and evaluated again", registry=r
        )
        self.prompt_cache = Counter(
            "leafresh_prompt_cache_lookups",
            "Generations whose prompt found cells to restore in host RAM's prompt cache (hit) or none (miss)",
            ["result"],
            registry=r,
        )
        self.restored_tokens = Counter(
            "leafresh_prompt_cache_restored_tokens",
            "Prompt tokens restored from the prompt cache instead of evaluated",
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "leafresh_tokens_per_second",
            "Decode speed of each generation",
            buckets=(1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400),
            registry=r,
        )
        self.generations = Counter("leafresh_generations", "Generations by how they ended", ["finish"], registry=r)
        self.cancelled = Counter(
            "leafresh_generations_cancelled", "Generations stopped because the reader left", registry=r
        )
        self.deadline_hits = Counter(
            "leafresh_deadline_exceeded", "Requests ended by a deadline", ["stage"], registry=r
        )
        self.rejected = Counter(
            "leafresh_rejected", "Requests refused because the queue, or the client's share of it, was full", registry=r
        )
        self.over_budget = Counter(
            "leafresh_over_budget",
            "Free-text requests refused with 429: the client's message tokens per minute",
            registry=r,
        )
        self.session_save_failures = Counter(
            "leafresh_session_save_failures",
            "Answers delivered whose turn could not be written to the session store",
            registry=r,
        )
        self.sessions_reset = Counter(
            "leafresh_sessions_reset",
            "Stored sessions this release could not read, started again",
            registry=r,
        )
        self.turns_refused = Counter(
            "leafresh_turns_refused",
            "Turns refused with 409 because another turn of the same conversation was running",
            registry=r,
        )
        self.validation_failures = Counter(
            "leafresh_validation_failures", "Requests refused by validation", ["status"], registry=r
        )
        self.schema_failures = Counter(
            "leafresh_answer_schema_failures", "Model answers that failed the schema (must stay 0)", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
