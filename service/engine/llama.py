"""The engine on llama.cpp, through llama-cpp-python's low-level API.

Why the low-level API and not ``Llama.create_chat_completion``: that path applies the grammar
to the whole vocabulary on every token with llama.cpp's own grammar sampler and adds Python
bookkeeping; we measured it at 0.39x the speed of a free generation (issue #6). Here each
request's grammar runs in llguidance (``grammar_state``), which masks the vocabulary in well
under a millisecond and hands over the tokens the grammar forces without sampling them, and
every running request is decoded together in one batch (``decode_loop``: the ``scheduler``
decides, the ``runner`` calls llama.cpp), sharing the KV cache of the prompt prefix they have in
common.

This module loads the model, the context and the grammars (tokens are ``tokens.Tokenizer``'s);
the asyncio side reads each request's text from a queue, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from service.engine.base import (
    ChatMessage,
    EngineCannotStart,
    EngineInfo,
    EngineStopped,
    GenerationFailed,
    GenerationRequest,
    GenerationStats,
    GrammarDoesNotCompile,
    NoWordInTime,
)
from service.engine.cpu_share import ThreadGovernor, allowed_cores, read_cpu_sample
from service.engine.decode_loop import DecodeLoop, new_work
from service.engine.grammar_state import CompiledGrammar
from service.engine.memory_plan import KV_TYPE_GGML, MIB
from service.engine.model_files import ModelFileError, check_model_file
from service.engine.prompt_cache import PromptCache
from service.engine.request_state import END, LoadedModel
from service.engine.runner import CPointer, ModelRunner
from service.engine.tokens import Tokenizer
from service.settings import Settings

logger = logging.getLogger(__name__)
llama_logger = logging.getLogger("llama_cpp")

# llama.cpp's own log levels (ggml_log_level) mapped to ours. Its INFO is chatty load detail.
# The decode thread enforces each generation's deadline between steps; the event loop gives up
# this much later, so only a stuck or dead thread ever reaches it.
BACKSTOP_SLACK_S = 30.0
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_last_llama_error: list[str] = []
_capture_errors = threading.local()


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_bridge(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", "replace").rstrip()
    if not message:
        return
    if level == 4:
        _last_llama_error[:] = [message]
        if getattr(_capture_errors, "active", False):
            # While loading, errors become part of our one-line ModelFileError instead.
            llama_logger.debug(message)
            return
    llama_logger.log(_LOG_LEVELS.get(level, logging.DEBUG), message)


_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_log_set(_log_bridge, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class LlamaConfig:
    """What the engine is built with. Defaults are Settings' own (one source), so an engine
    built in a test or a benchmark runs as the service would."""

    model_path: Path
    context_size: int = _default("context_size")
    batch_size: int = _default("batch_size")
    threads: int | None = _default("threads")
    # adaptive: fewer threads while other processes use the cores (see cpu_share); fixed: never.
    thread_policy: str = _default("thread_policy")
    gpu_layers: int = 0  # Settings' may be "auto", which the loader turns into a number
    kv_cache_type: str = _default("kv_cache_type")
    flash_attn: str = _default("flash_attn")
    # Requests decoded together, each its own sequence (one more holds the shared prompt).
    # Settings' may be "auto": the service's ceiling for it is Settings.max_parallel.
    parallel: int = Settings.model_construct().max_parallel  # the defaults, never the environment
    # Prompt tokens a step carries while others decode (LEAFRESH_PREFILL_TOKENS).
    prefill_tokens: int = _default("prefill_tokens")
    # Append the tokens of text the grammar forces instead of sampling them one by one.
    jump_forward: bool = _default("jump_forward")
    # Host RAM for finished requests' cells (LEAFRESH_PROMPT_CACHE_MIB; 0: none).
    prompt_cache_mib: int = _default("prompt_cache_mib")


def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build can put layers on a GPU (a CUDA/Metal/... build)."""
    _init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaCppEngine:
    """Loads one GGUF model and generates up to ``config.parallel`` answers at once."""

    def __init__(self, config: LlamaConfig, grammars: Mapping[str, str]) -> None:
        check_model_file(config.model_path)
        _init_backend()
        self.config = config
        self._cores = allowed_cores()
        self.threads = config.threads or len(self._cores)
        self._model: CPointer = self._load_model(config)
        self.ctx: CPointer = None
        try:
            self.ctx = self._create_context(config)
            self.tokens = Tokenizer(self._model)
            self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
            self.grammars = self._compile_grammars(grammars)
        except BaseException:
            self._free()
            raise
        self._closed = False
        cores = self._cores
        self._decode_loop = DecodeLoop(
            LoadedModel(
                vocabulary=self.tokens,
                grammars=self.grammars,
                is_end=self.tokens.is_end,
                context_size=self.n_ctx,
                jump_forward=config.jump_forward,
            ),
            ModelRunner(
                self.ctx,
                config.batch_size,
                self.tokens.n_vocab,
                self.threads,
                # Measured on the CPU's flash attention only; a GPU keeps one call a step.
                split_prompt_steps=not self._offloads(config),
            ),
            max_sequences=config.parallel,
            step_tokens=config.batch_size,
            governor=ThreadGovernor(
                self.threads, len(cores), config.thread_policy, read=lambda: read_cpu_sample(cores)
            ),
            prefill_tokens=config.prefill_tokens,
            prompt_cache=PromptCache(config.prompt_cache_mib * MIB) if config.prompt_cache_mib else None,
        )
        self.info = EngineInfo(
            model_path=str(config.model_path),
            chat_template="gguf" if self.tokens.formatter.uses_model_template else "fallback",
            system_role=self.tokens.formatter.supports_system_role,
            context_size=self.n_ctx,
            extra={
                "n_vocab": str(self.tokens.n_vocab),
                "parallel": str(config.parallel),
                "threads": str(self.threads),
                "thread_policy": config.thread_policy,
                "prompt_cache_mib": str(config.prompt_cache_mib),
            },
        )
        logger.info(
            "model loaded: %s (context %d shared by %d sequences, vocabulary %d, chat template: %s, system role: %s, "
            "gpu layers: %d, threads: %d %s)",
            config.model_path,
            self.n_ctx,
            config.parallel,
            self.tokens.n_vocab,
            self.info.chat_template,
            self.info.system_role,
            config.gpu_layers,
            self.threads,
            config.thread_policy,
        )

    # -- loading -----------------------------------------------------------------------------

    @staticmethod
    def _offloads(config: LlamaConfig) -> bool:
        """Whether layers go to a GPU: asked for, and this build can."""
        return config.gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())

    def _load_model(self, config: LlamaConfig) -> CPointer:
        params = llama_cpp.llama_model_default_params()
        # The loader already chose 0 (with a warning) where this build cannot offload.
        params.n_gpu_layers = config.gpu_layers if self._offloads(config) else 0
        _last_llama_error.clear()
        _capture_errors.active = True
        try:
            model = llama_cpp.llama_model_load_from_file(str(config.model_path).encode("utf-8"), params)
        finally:
            _capture_errors.active = False
        if not model:
            reason = _last_llama_error[0] if _last_llama_error else "llama.cpp가 파일을 읽지 못했습니다"
            raise ModelFileError(
                f"모델을 불러오지 못했습니다: {config.model_path} ({reason}) — "
                "손상되었거나 이 llama.cpp가 지원하지 않는 GGUF입니다. 파일을 다시 받거나 LEAFRESH_MODEL_PATH를 확인하세요"
            )
        return model

    def _create_context(self, config: LlamaConfig) -> CPointer:
        params = llama_cpp.llama_context_default_params()
        threads = self.threads
        params.n_ctx = config.context_size
        params.n_batch = config.batch_size
        params.n_ubatch = config.batch_size
        # One sequence per request decoded together, plus the holder of the shared prompt.
        # Unified: all sequences share one pool of cells, so a shared prefix is stored once
        # and copying it to a new sequence only tags cells (see scheduler).
        params.n_seq_max = config.parallel + 1
        params.kv_unified = True
        params.n_threads = threads
        params.n_threads_batch = threads
        params.type_k = KV_TYPE_GGML[config.kv_cache_type]
        params.type_v = KV_TYPE_GGML[config.kv_cache_type]
        flash = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED}
        # A quantized V cache only works with flash attention, so it turns it on.
        quantized = config.kv_cache_type != "f16"
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if quantized
            else flash.get(config.flash_attn, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        )
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            reason = _last_llama_error[0] if _last_llama_error else "unknown"
            raise EngineCannotStart(
                f"모델 컨텍스트를 만들지 못했습니다 (LEAFRESH_CONTEXT_SIZE={config.context_size}: {reason}) — "
                "메모리가 부족하면 LEAFRESH_CONTEXT_SIZE를 줄이세요"
            )
        return ctx

    def _compile_grammars(self, grammars: Mapping[str, str]) -> dict[str, CompiledGrammar]:
        """Every grammar against this vocabulary, at start-up: a broken grammar stops the
        service here, not a request later."""
        if not grammars:
            return {}
        tokenizer = self.tokens.guidance()
        compiled = {}
        for name, text in grammars.items():
            try:
                compiled[name] = CompiledGrammar.from_gbnf(text, tokenizer, self.tokens.n_vocab)
            except ValueError as exc:
                raise GrammarDoesNotCompile(f"문법 {name}을(를) 컴파일하지 못했습니다: {exc}") from exc
        return compiled

    def _free(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # -- tokens (service.engine.tokens) -------------------------------------------------------

    def prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        return self.tokens.prompt(messages)

    def count_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return len(self.tokens.prompt(messages))

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokens.tokenize(text, parse_special=False))

    # -- the async interface -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._decode_loop.stopped is None

    def submit(self, request: GenerationRequest) -> _LlamaGeneration:
        if self._closed:
            raise GenerationFailed("engine is closed")
        if self._decode_loop.stopped is not None:
            raise EngineStopped(self._decode_loop.stopped)
        return _LlamaGeneration(self, request, asyncio.get_running_loop())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Cancels what still runs (the app has ended its streams by now) and stops the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._decode_loop.close)
        self._free()


class _LlamaGeneration:
    def __init__(self, engine: LlamaCppEngine, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = GenerationStats()
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        # The event loop's own deadline, in case the decode thread never answers (issue #21).
        self._backstop = None if request.deadline_s is None else loop.time() + request.deadline_s + BACKSTOP_SLACK_S
        engine._decode_loop.submit(new_work(request, self._put, self.stats, self._cancelled))

    def _put(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            # The event loop is gone (shutdown); nobody is reading any more.
            self._cancelled.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._text()

    async def _text(self) -> AsyncIterator[str]:
        while True:
            try:
                async with asyncio.timeout_at(self._backstop):
                    item = await self._queue.get()
            except TimeoutError:
                self._cancelled.set()
                raise NoWordInTime(
                    f"nothing from the decode thread {BACKSTOP_SLACK_S:.0f} s past the deadline"
                ) from None
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, str)
            yield item

    async def cancel(self) -> None:
        # A request still waiting is dropped when its turn comes; a running one leaves the batch
        # at the next step. Nothing here waits for the decode thread, so a reader that leaves
        # is never held up.
        self._cancelled.set()
        self._engine._decode_loop.wake()
