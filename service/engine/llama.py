"""The engine on llama.cpp, through llama-cpp-python's low-level API.

Why the low-level API and not ``Llama.create_chat_completion``: that path applies the grammar
to the whole vocabulary on every token and adds Python bookkeeping; we measured it at 0.39x the
speed of a free generation (issue #6). Here each step draws the token first and asks the
grammar only about the few best candidates (see ``_GrammarSampler``), decodes one token per
llama_decode call, and reuses the KV cache of the prompt prefix shared with the last request.

One generation runs at a time, on one worker thread, so the event loop never blocks; the
asyncio side reads pieces from a queue. Cancelling sets a flag the loop checks every token.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import llama_cpp
import numpy as np

from service.contract import ModelFailure, PromptTooLong, ServiceError
from service.engine.base import (
    ChatMessage,
    EngineInfo,
    FinishReason,
    GenerationRequest,
    GenerationStats,
)
from service.engine.chat_template import ChatFormatter
from service.engine.text import IncompleteText, Utf8PieceDecoder
from service.memory_plan import KV_TYPE_GGML
from service.model_files import ModelFileError, check_model_file

logger = logging.getLogger(__name__)
# llama.cpp handles (model, context, sampler): opaque ctypes pointers.
CPointer = Any
llama_logger = logging.getLogger("llama_cpp")

# llama.cpp's own log levels (ggml_log_level) mapped to ours. Its INFO is chatty load detail.
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


# The layout of llama_token_data, so candidate arrays can be numpy arrays handed to C as is.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


@dataclass(frozen=True)
class LlamaConfig:
    model_path: Path
    context_size: int = 4096
    batch_size: int = 512
    threads: int | None = None
    gpu_layers: int = 0
    kv_cache_type: str = "f16"
    flash_attn: str = "auto"


def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build can put layers on a GPU (a CUDA/Metal/... build)."""
    _init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())


class _GrammarSampler:
    """Exact grammar-constrained sampling that rarely touches the whole vocabulary.

    Gumbel-max: adding independent Gumbel noise to logits/T and taking the argmax draws from
    softmax(logits/T); the argmax over the *allowed* tokens draws from the distribution the
    grammar leaves, renormalised. So candidates are checked against the grammar in order of
    their noisy score, and the first allowed one is exactly the sample that "apply the grammar
    to every token, then sample" would give. The grammar sees 16 tokens on most steps, 512 on
    some, and the whole vocabulary only when none of those 512 is allowed.
    """

    TIERS = (16, 512)

    def __init__(self, grammar: CPointer, n_vocab: int, everything: np.ndarray) -> None:
        self._grammar = grammar
        self._n_vocab = n_vocab
        self._everything = everything  # TOKEN_DATA for every token id, reused across steps
        self.full_vocab_checks = 0

    def allowed(self, candidates: np.ndarray) -> np.ndarray:
        """Which of ``candidates`` (TOKEN_DATA, logits zeroed) the grammar allows now."""
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        allowed: np.ndarray = np.isfinite(candidates["logit"])
        return allowed

    def pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        if temperature <= 0:
            scores = logits.astype(np.float64)
        else:
            scores = logits / temperature + rng.gumbel(size=self._n_vocab)
        # A vocabulary smaller than the widest tier (a tiny test model) is checked whole.
        widest = min(self.TIERS[-1], self._n_vocab)
        top = np.argpartition(scores, -widest)[-widest:]
        top = top[np.argsort(scores[top])[::-1]]
        start = 0
        for size in (min(tier, widest) for tier in self.TIERS):
            if size <= start:
                continue
            window = np.zeros(size - start, dtype=TOKEN_DATA)
            window["id"] = top[start:size]
            ok = self.allowed(window)
            if ok.any():
                return int(window["id"][int(np.argmax(ok))])
            start = size
        self.full_vocab_checks += 1
        self._everything["logit"] = 0.0
        ok = self.allowed(self._everything)
        if not ok.any():
            raise ModelFailure(detail="the grammar allows no token at all")
        return int(np.argmax(np.where(ok, scores, -np.inf)))


class LlamaCppEngine:
    """Loads one GGUF model and serves generations one at a time."""

    def __init__(self, config: LlamaConfig, grammars: Mapping[str, str]) -> None:
        check_model_file(config.model_path)
        _init_backend()
        self.config = config
        self._model: CPointer = self._load_model(config)
        self._ctx: CPointer = None
        self._grammars: dict[str, CPointer] = {}
        try:
            self._ctx = self._create_context(config)
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
            self._bos = llama_cpp.llama_vocab_bos(self._vocab)
            self._pieces: dict[int, bytes] = {}
            template = llama_cpp.llama_model_chat_template(self._model, None)
            self.formatter = ChatFormatter(
                template.decode("utf-8") if template else None,
                bos_token=self._token_text(self._bos),
                eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            )
            for name, text in grammars.items():
                self._grammars[name] = self._compile_grammar(name, text)
        except BaseException:
            self._free()
            raise
        self._everything = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
        self._everything["id"] = np.arange(self.n_vocab, dtype=np.int32)
        self._kv_tokens: list[int] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-decode")
        self._closed = False
        self.info = EngineInfo(
            model_path=str(config.model_path),
            chat_template="gguf" if self.formatter.uses_model_template else "fallback",
            system_role=self.formatter.supports_system_role,
            context_size=self.n_ctx,
            extra={"n_vocab": str(self.n_vocab)},
        )
        logger.info(
            "model loaded: %s (context %d, vocabulary %d, chat template: %s, system role: %s, gpu layers: %d)",
            config.model_path,
            self.n_ctx,
            self.n_vocab,
            self.info.chat_template,
            self.info.system_role,
            config.gpu_layers,
        )

    # -- loading -----------------------------------------------------------------------------

    def _load_model(self, config: LlamaConfig) -> CPointer:
        params = llama_cpp.llama_model_default_params()
        # The loader already chose 0 (with a warning) where this build cannot offload.
        params.n_gpu_layers = config.gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
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
        threads = config.threads or os.cpu_count() or 1
        params.n_ctx = config.context_size
        params.n_batch = config.batch_size
        params.n_ubatch = config.batch_size
        params.n_seq_max = 1
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
            raise ModelFileError(
                f"모델 컨텍스트를 만들지 못했습니다 (LEAFRESH_CONTEXT_SIZE={config.context_size}: {reason}) — "
                "메모리가 부족하면 LEAFRESH_CONTEXT_SIZE를 줄이세요"
            )
        return ctx

    def _compile_grammar(self, name: str, text: str) -> CPointer:
        # llama.cpp parses the grammar here, so a broken grammar stops start-up, not a request.
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"), b"root")
        if not sampler:
            reason = _last_llama_error[0] if _last_llama_error else "parse error"
            raise ModelFileError(f"문법 {name}을(를) llama.cpp가 컴파일하지 못했습니다: {reason}")
        return sampler

    def _free(self) -> None:
        for sampler in self._grammars.values():
            llama_cpp.llama_sampler_free(sampler)
        self._grammars.clear()
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # -- tokens ------------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(size, 0)].decode("utf-8", "replace")

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if size < 0:
                buf = ctypes.create_string_buffer(-size)
                size = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:size]
            self._pieces[token] = piece
        return piece

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, True, True)
        if count < 0:
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, True, True)
        result = list(tokens[:count])
        # A template that writes the BOS text itself, plus the tokenizer adding one: keep one.
        if len(result) >= 2 and result[0] == result[1] == self._bos:
            result = result[1:]
        return result

    def count_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        return len(self.tokenize(self.formatter.format(messages)))

    # -- decoding (worker thread only) -------------------------------------------------------

    def _decode(self, tokens: list[int]) -> None:
        for start in range(0, len(tokens), self.config.batch_size):
            chunk = tokens[start : start + self.config.batch_size]
            array = (llama_cpp.llama_token * len(chunk))(*chunk)
            status = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, len(chunk)))
            if status != 0:
                raise ModelFailure(detail=f"llama_decode returned {status}")
            self._kv_tokens.extend(chunk)

    def _load_prompt(self, tokens: list[int]) -> int:
        """Evaluate the prompt, reusing the KV cache of the prefix it shares with what is
        already there (the instructions are the same for every request). Returns the number
        of tokens reused."""
        common = 0
        for cached, new in zip(self._kv_tokens, tokens, strict=False):
            if cached != new:
                break
            common += 1
        # The last prompt token is evaluated again: its logits are the first step's input.
        common = min(common, len(tokens) - 1)
        memory = llama_cpp.llama_get_memory(self._ctx)
        if not llama_cpp.llama_memory_seq_rm(memory, 0, common, -1):
            llama_cpp.llama_memory_clear(memory, True)
            common = 0
        del self._kv_tokens[common:]
        self._decode(tokens[common:])
        return common

    def _reset_cache(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        self._kv_tokens.clear()

    def _generate(
        self,
        request: GenerationRequest,
        emit: Callable[[str], None],
        cancelled: threading.Event,
        stats: GenerationStats,
    ) -> None:
        if cancelled.is_set():
            stats.finish_reason = FinishReason.CANCELLED
            return
        started = perf_counter()
        deadline = started + request.deadline_s if request.deadline_s is not None else float("inf")
        tokens = self.tokenize(self.formatter.format(request.messages))
        stats.prompt_tokens = len(tokens)
        if len(tokens) + request.max_tokens > self.n_ctx:
            raise PromptTooLong(detail=f"prompt {len(tokens)} + max_tokens {request.max_tokens} > context {self.n_ctx}")
        if request.grammar not in self._grammars:
            raise ModelFailure(detail=f"unknown grammar {request.grammar!r}")
        try:
            stats.cached_prompt_tokens = self._load_prompt(tokens)
            stats.prompt_seconds = perf_counter() - started
            seed = request.seed if request.seed is not None else secrets.randbits(32)
            stats.seed = seed
            self._sample_loop(request, np.random.default_rng(seed), emit, cancelled, stats, deadline)
        except BaseException:
            # The KV cache may hold half a step: start the next request from scratch.
            self._reset_cache()
            raise
        finally:
            stats.decode_seconds = perf_counter() - started - stats.prompt_seconds

    def _sample_loop(
        self,
        request: GenerationRequest,
        rng: np.random.Generator,
        emit: Callable[[str], None],
        cancelled: threading.Event,
        stats: GenerationStats,
        deadline: float,
    ) -> None:
        grammar = llama_cpp.llama_sampler_clone(self._grammars[request.grammar])
        try:
            sampler = _GrammarSampler(grammar, self.n_vocab, self._everything)
            decoder = Utf8PieceDecoder()
            stats.finish_reason = FinishReason.LENGTH
            for _ in range(request.max_tokens + 1):
                if cancelled.is_set():
                    stats.finish_reason = FinishReason.CANCELLED
                    return
                if perf_counter() > deadline:
                    stats.finish_reason = FinishReason.DEADLINE
                    return
                logits_ptr = llama_cpp.llama_get_logits_ith(self._ctx, -1)
                logits = np.ctypeslib.as_array(logits_ptr, shape=(self.n_vocab,))
                token = sampler.pick(logits, request.temperature, rng)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    decoder.finish()
                    stats.finish_reason = FinishReason.STOP
                    return
                if stats.generated_tokens == request.max_tokens:
                    return
                llama_cpp.llama_sampler_accept(grammar, token)
                stats.generated_tokens += 1
                text = decoder.feed(self._piece(token))
                if text:
                    emit(text)
                self._decode([token])
        except IncompleteText as exc:
            raise ModelFailure(detail=str(exc)) from exc
        finally:
            llama_cpp.llama_sampler_free(grammar)

    # -- the async interface -----------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> _LlamaGeneration:
        if self._closed:
            raise ModelFailure(detail="engine is closed")
        return _LlamaGeneration(self, request, asyncio.get_running_loop())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Waits for the generation in progress (cancelled ones stop within a token).
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._free()


_END = object()


class _LlamaGeneration:
    def __init__(self, engine: LlamaCppEngine, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = GenerationStats()
        self._engine = engine
        self._request = request
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._future = loop.run_in_executor(engine._executor, self._run)

    def _put(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            # The event loop is gone (shutdown); nobody is reading any more.
            self._cancelled.set()

    def _run(self) -> None:
        try:
            self._engine._generate(self._request, self._put, self._cancelled, self.stats)
        except ServiceError as exc:
            self._put(exc)
        except Exception as exc:
            logger.exception("generation failed")
            self._put(ModelFailure(detail=f"{type(exc).__name__}: {exc}"))
        else:
            self._put(_END)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, str)
            yield item

    async def cancel(self) -> None:
        # A request still queued for the worker is dropped; a running one stops at its next
        # token. Nothing here waits for the worker, so a reader that leaves is never held up.
        self._cancelled.set()
        self._future.cancel()
