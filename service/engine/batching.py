"""Continuous batching: every running request is one sequence of one llama.cpp context, and
each step decodes one token (or a jump-forward run of forced tokens) of every sequence in a
single llama_decode call (issue #6).

- Requests join between steps and leave the moment they finish or are cancelled; each has its
  own grammar state, random generator, UTF-8 decoder and forced-text tracker.
- The KV cache is unified: sequence 0 holds the last prompt, and a new request copies the part
  of it that it shares (the instructions, or a conversation's earlier turns) into its own
  sequence. In a unified cache that copy only tags cells; nothing is recomputed or duplicated.
- A prompt longer than what is left of the step's batch is evaluated in chunks over several
  steps, so one cold prompt does not stall the streams already running for its whole length.
- When the cache is full (llama_decode returns 1, having changed nothing), the prompt holder
  is dropped first, then the youngest sequence is preempted: its cells are freed and it waits
  to be evaluated again from its tokens (recompute, as vLLM does), its sampling state intact.
  New requests wait until a sequence finishes, so the two never take turns evicting each other.
- Everything here runs on one thread: llama.cpp's OpenMP thread team belongs to the thread that
  calls llama_decode, and decoding from a second thread halved the speed (issue #6).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from service.contract import ModelFailure, PromptTooLong, ServiceError
from service.engine.base import FinishReason, GenerationRequest, GenerationStats
from service.engine.cpu_share import ThreadGovernor, allowed_cores, read_cpu_sample
from service.engine.forced_text import ForcedTextTracker
from service.engine.sampling import CPointer, GrammarSampler
from service.engine.text import IncompleteText, Utf8PieceDecoder

if TYPE_CHECKING:
    from service.engine.llama import LlamaCppEngine

logger = logging.getLogger(__name__)

PROMPT_HOLDER = 0  # the sequence id that keeps the last prompt for the next request to share

# What a sequence hands its reader: a piece of text, an error, or END.
END = object()
Emit = Callable[[object], None]


@dataclass(eq=False)
class Sequence:
    """One request being generated, from its prompt to its end."""

    request: GenerationRequest
    emit: Emit
    cancelled: threading.Event
    stats: GenerationStats
    prompt: list[int] = field(default_factory=list)
    seq_id: int = -1
    # Tokens in this sequence's KV cells (positions 0..n-1), and those still to decode: the
    # last of ``pending`` gives the logits that choose the next token.
    cached: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    prompt_done: bool = False
    started: float = 0.0
    deadline: float = float("inf")
    grammar: CPointer = None
    sampler: GrammarSampler | None = None
    rng: np.random.Generator | None = None
    decoder: Utf8PieceDecoder = field(default_factory=Utf8PieceDecoder)
    tracker: ForcedTextTracker | None = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


class Batcher:
    """The decode loop. ``submit`` and ``call`` are safe from any thread; ``run`` is the loop."""

    def __init__(self, engine: LlamaCppEngine, max_sequences: int) -> None:
        self._engine = engine
        self._ctx = engine.ctx
        self._memory = llama_cpp.llama_get_memory(engine.ctx)
        self._capacity = engine.config.batch_size
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        self._free_ids = deque(range(1, max_sequences + 1))
        self._active: list[Sequence] = []  # in admission order: the last is the youngest
        self._waiting: deque[Sequence] = deque()
        self._calls: deque[tuple[Callable[[], object], Callable[[object, BaseException | None], None]]] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._room_wanted = False  # a sequence was preempted: admit nobody until one finishes
        self.holder_tokens: list[int] = []
        cores = allowed_cores()
        self._governor = ThreadGovernor(
            engine.threads, len(cores), engine.config.thread_policy, read=lambda: read_cpu_sample(cores)
        )
        self._threads = engine.threads
        self._thread = threading.Thread(target=self.run, name="llama-decode", daemon=True)
        self._thread.start()

    # -- from any thread ---------------------------------------------------------------------

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()

    def call(self, fn: Callable[[], object], done: Callable[[object, BaseException | None], None]) -> None:
        """Run ``fn`` on the decode thread between two steps (the bench's raw loop uses it)."""
        with self._wake:
            self._calls.append((fn, done))
            self._wake.notify()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        """Cancel everything still running or waiting and stop the loop (waits for it)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)

    # -- the loop (decode thread only) -------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._wake:
                while not (self._closing or self._calls or self._active or self._admissible()):
                    self._wake.wait()
                if self._closing:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for fn, done in calls:
                self._run_call(fn, done)
            try:
                self._admit()
                self._reap()
                if self._active:
                    self._step()
            except Exception as exc:  # a broken step must fail its requests, not stop the thread
                logger.exception("decode step failed")
                self._fail_all(ModelFailure(detail=f"{type(exc).__name__}: {exc}"))
        for sequence in [*self._active, *self._waiting]:
            sequence.cancelled.set()
            self._finish(sequence, FinishReason.CANCELLED)
        self._waiting.clear()

    def _run_call(self, fn: Callable[[], object], done: Callable[[object, BaseException | None], None]) -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done(None, exc)
        else:
            done(result, None)

    def _admissible(self) -> bool:
        return bool(self._waiting) and bool(self._free_ids) and not self._room_wanted

    def _admit(self) -> None:
        while self._admissible():
            with self._wake:
                sequence = self._waiting[0]
            try:
                if not sequence.cancelled.is_set() and self._better_shared_later(sequence):
                    return
                with self._wake:
                    self._waiting.remove(sequence)
                if sequence.cancelled.is_set():
                    self._finish(sequence, FinishReason.CANCELLED)
                    continue
                self._start(sequence)
            except Exception as exc:  # noqa: BLE001 - handed to that request's reader
                # Whatever one request's start raises (its prompt cannot be rendered or
                # tokenized, ...) is that request's failure: the batch and the queue go on.
                self._fail_waiting(sequence, exc)

    def _prompt(self, sequence: Sequence) -> list[int]:
        if not sequence.prompt:
            sequence.prompt = self._engine.prompt_tokens(sequence.request.messages)
        return sequence.prompt

    def _better_shared_later(self, sequence: Sequence) -> bool:
        """Whether a prompt still being evaluated shares more with this request than the kept
        prompt does: then it waits for that prompt to finish and copies it, instead of
        evaluating the same instructions again beside it (requests arriving together, cold)."""
        tokens = sequence.cached + sequence.pending if sequence.started else self._prompt(sequence)
        kept = _common_prefix(self.holder_tokens, tokens)
        return any(not other.prompt_done and _common_prefix(other.prompt, tokens) > kept + 64 for other in self._active)

    def _start(self, sequence: Sequence) -> None:
        engine = self._engine
        request = sequence.request
        first_time = not sequence.started
        if first_time:
            self._prompt(sequence)
            sequence.started = perf_counter()
            if request.deadline_s is not None:
                sequence.deadline = sequence.started + request.deadline_s
            sequence.stats.prompt_tokens = len(sequence.prompt)
            if len(sequence.prompt) + request.max_tokens > engine.n_ctx:
                raise PromptTooLong(
                    detail=f"prompt {len(sequence.prompt)} + max_tokens {request.max_tokens} > context {engine.n_ctx}"
                )
            if request.grammar not in engine.grammars:
                raise ModelFailure(detail=f"unknown grammar {request.grammar!r}")
            seed = request.seed if request.seed is not None else secrets.randbits(32)
            sequence.stats.seed = seed
            sequence.rng = np.random.default_rng(seed)
            sequence.grammar = llama_cpp.llama_sampler_clone(engine.grammars[request.grammar])
            sequence.sampler = GrammarSampler(sequence.grammar, engine.possible[request.grammar], engine.everything)
            sequence.tracker = ForcedTextTracker(engine.automata[request.grammar])
            sequence.stats.finish_reason = FinishReason.LENGTH
            # The answer's opening is forced: it goes in with the prompt, not a token a step.
            text: list[str] = []
            opening = self._jump(sequence, text)
            if text:
                sequence.emit("".join(text))
            sequence.pending = [*sequence.prompt, *opening]
        tokens = sequence.cached + sequence.pending  # all of them again after a preemption
        sequence.seq_id = self._free_ids.popleft()
        # The last token is evaluated again even when cached: its logits choose the next one.
        common = min(_common_prefix(self.holder_tokens, tokens), len(tokens) - 1)
        if common > 0:
            llama_cpp.llama_memory_seq_cp(self._memory, PROMPT_HOLDER, sequence.seq_id, 0, common)
        sequence.cached = tokens[:common]
        sequence.pending = tokens[common:]
        if first_time:
            sequence.stats.cached_prompt_tokens = common
        self._active.append(sequence)

    def _reap(self) -> None:
        """Cancelled and overdue requests leave: running ones, and preempted ones waiting for
        room (their deadline runs from their start, not from when room is found)."""
        now = perf_counter()
        for sequence in list(self._active):
            if sequence.cancelled.is_set():
                self._finish(sequence, FinishReason.CANCELLED)
            elif now > sequence.deadline:
                self._finish(sequence, FinishReason.DEADLINE)
        with self._wake:
            leaving = [s for s in self._waiting if s.cancelled.is_set() or now > s.deadline]
            for sequence in leaving:
                self._waiting.remove(sequence)
        for sequence in leaving:
            self._finish(sequence, FinishReason.CANCELLED if sequence.cancelled.is_set() else FinishReason.DEADLINE)

    def _step(self) -> None:
        """One llama_decode over every active sequence: decoding ones first (a token, or a
        forced run), then prompt chunks in what is left of the batch."""
        budget = self._capacity
        plan: list[tuple[Sequence, int]] = []
        for sequence in sorted(self._active, key=lambda s: not s.prompt_done):
            take = min(len(sequence.pending), budget)
            if take:
                plan.append((sequence, take))
                budget -= take
        if not plan:
            return
        outputs = self._fill_batch(plan)
        self._use_threads(self._governor.threads_for_next_step())
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status == 1:
            self._make_room()
            return
        if status != 0:
            raise ModelFailure(detail=f"llama_decode returned {status}")
        for (sequence, take), output in zip(plan, outputs, strict=True):
            sequence.cached.extend(sequence.pending[:take])
            del sequence.pending[:take]
            if output is None:
                continue
            if not sequence.prompt_done:
                self._prompt_finished(sequence)
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self._ctx, output), shape=(self._engine.n_vocab,)
            )
            try:
                self._advance(sequence, logits)
            except ServiceError as exc:
                self._fail(sequence, exc)

    def _use_threads(self, threads: int) -> None:
        if threads == self._threads:
            return
        logger.info(
            "other processes use %.1f of %d cores: decoding on %d of %d threads",
            self._governor.others,
            self._governor.cores,
            threads,
            self._governor.most,
        )
        llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
        self._threads = threads

    def _fill_batch(self, plan: list[tuple[Sequence, int]]) -> list[int | None]:
        batch = self._batch
        index = 0
        outputs: list[int | None] = []
        for sequence, take in plan:
            start = len(sequence.cached)
            for offset, token in enumerate(sequence.pending[:take]):
                batch.token[index] = token
                batch.pos[index] = start + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = sequence.seq_id
                batch.logits[index] = 0
                index += 1
            if take == len(sequence.pending):
                batch.logits[index - 1] = 1
                outputs.append(index - 1)
            else:
                outputs.append(None)
        batch.n_tokens = index
        return outputs

    def _prompt_finished(self, sequence: Sequence) -> None:
        sequence.prompt_done = True
        sequence.stats.prompt_seconds = perf_counter() - sequence.started
        # Keep this prompt for the next request: usually the same instructions, or the next
        # turn of the same conversation.
        prompt = sequence.prompt
        common = _common_prefix(self.holder_tokens, prompt)
        llama_cpp.llama_memory_seq_rm(self._memory, PROMPT_HOLDER, common, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, sequence.seq_id, PROMPT_HOLDER, common, len(prompt))
        self.holder_tokens = list(prompt)

    def _advance(self, sequence: Sequence, logits: np.ndarray) -> None:
        """Choose the next token from ``logits``, send its text, and queue it (with the tokens
        of any text the grammar forces after it) for the next step."""
        request = sequence.request
        stats = sequence.stats
        assert sequence.sampler is not None and sequence.rng is not None and sequence.tracker is not None
        token = sequence.sampler.pick(logits, request.temperature, sequence.rng)
        if llama_cpp.llama_vocab_is_eog(self._engine.vocab, token):
            self._finish(sequence, FinishReason.STOP)
            return
        if stats.generated_tokens >= request.max_tokens:
            self._finish(sequence, FinishReason.LENGTH)
            return
        text: list[str] = []
        try:
            self._accept(sequence, token, text)
            stats.generated_tokens += 1
            forced = self._jump(sequence, text)
        except (IncompleteText, ValueError) as exc:
            raise ModelFailure(detail=str(exc)) from exc
        stats.decode_steps += 1
        if text:
            sequence.emit("".join(text))
        if sequence.tracker.complete and not sequence.decoder.pending:
            # The grammar allows only the end now: no need to decode and sample it.
            self._finish(sequence, FinishReason.STOP)
            return
        sequence.pending = [token, *forced]

    def _jump(self, sequence: Sequence, text: list[str]) -> list[int]:
        """Accept the tokens of the text the grammar forces now; they are decoded with the
        token before them, in one step."""
        assert sequence.sampler is not None and sequence.tracker is not None
        # Text is tracked in whole characters: after half a character nothing is forced.
        if not self._engine.jump_forward or sequence.decoder.pending:
            return []
        room = sequence.request.max_tokens - sequence.stats.generated_tokens
        accepted: list[int] = []
        for token in self._engine.forced_tokens(sequence.tracker.forced())[: max(room, 0)]:
            if not sequence.sampler.allows(token):
                # Our automaton and llama.cpp's grammar disagree: never accept a token the
                # grammar rejects (llama.cpp aborts the process on that).
                logger.warning("jump-forward token %d refused by the grammar; sampling instead", token)
                break
            self._accept(sequence, token, text)
            accepted.append(token)
        sequence.stats.generated_tokens += len(accepted)
        sequence.stats.forced_tokens += len(accepted)
        return accepted

    def _accept(self, sequence: Sequence, token: int, text: list[str]) -> None:
        assert sequence.tracker is not None
        llama_cpp.llama_sampler_accept(sequence.grammar, token)
        piece = sequence.decoder.feed(self._engine.piece(token))
        sequence.tracker.feed(piece)
        if piece:
            text.append(piece)

    def _make_room(self) -> None:
        """The cache is full. Drop the kept prompt first; then preempt the youngest sequence."""
        if self.holder_tokens:
            llama_cpp.llama_memory_seq_rm(self._memory, PROMPT_HOLDER, -1, -1)
            self.holder_tokens = []
            return
        if len(self._active) < 2:
            # One sequence alone always fits (prompt + max_tokens <= context was checked).
            raise ModelFailure(detail="the KV cache has no room for a single sequence")
        victim = self._active.pop()
        llama_cpp.llama_memory_seq_rm(self._memory, victim.seq_id, -1, -1)
        self._free_ids.append(victim.seq_id)
        victim.pending = victim.cached + victim.pending
        victim.cached = []
        victim.seq_id = -1
        victim.stats.preemptions += 1
        self._room_wanted = True
        with self._wake:
            self._waiting.appendleft(victim)
        logger.warning("KV cache full: request preempted, to be evaluated again (%d tokens)", len(victim.pending))

    # -- endings -----------------------------------------------------------------------------

    def _release(self, sequence: Sequence) -> None:
        if sequence in self._active:
            self._active.remove(sequence)
            self._room_wanted = False
        if sequence.seq_id >= 0:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._free_ids.append(sequence.seq_id)
            sequence.seq_id = -1
        if sequence.grammar is not None:
            llama_cpp.llama_sampler_free(sequence.grammar)
            sequence.grammar = None
        stats = sequence.stats
        if sequence.started:
            stats.decode_seconds = max(perf_counter() - sequence.started - stats.prompt_seconds, 0.0)
        if sequence.sampler is not None:
            stats.full_vocab_checks = sequence.sampler.full_vocab_checks

    def _finish(self, sequence: Sequence, reason: FinishReason) -> None:
        if reason is FinishReason.STOP:
            try:
                sequence.decoder.finish()
            except IncompleteText as exc:
                self._fail(sequence, ModelFailure(detail=str(exc)))
                return
        sequence.stats.finish_reason = reason
        self._release(sequence)
        sequence.emit(END)

    def _fail_waiting(self, sequence: Sequence, exc: Exception) -> None:
        with self._wake:
            if sequence in self._waiting:
                self._waiting.remove(sequence)
        if not isinstance(exc, ServiceError):
            logger.exception("starting a generation failed")
            exc = ModelFailure(detail=f"{type(exc).__name__}: {exc}")
        self._fail(sequence, exc)

    def _fail(self, sequence: Sequence, error: ServiceError) -> None:
        self._release(sequence)
        sequence.emit(error)

    def _fail_all(self, error: ServiceError) -> None:
        for sequence in list(self._active):
            self._fail(sequence, error)
        # The cache may hold half a step: start again from nothing.
        llama_cpp.llama_memory_clear(self._memory, True)
        self.holder_tokens = []
