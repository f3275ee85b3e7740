"""Continuous batching (issue #6): the thread that, step after step, asks the scheduler for one
plan, has the runner carry it out, and hands each request its logits.

- Every running request is one sequence of one llama.cpp context; each step decodes one token
  (or a jump-forward run of forced tokens) of every sequence in a single llama_decode call
  (on a CPU, prompt chunks in a second one: ``runner``).
- Requests join between steps and leave the moment they finish, are cancelled or run out of
  time; each has its own grammar state and random generator.
- What joins, what is preempted and what goes into a step is the scheduler's decision
  (``scheduler``); the llama.cpp calls are the runner's (``runner``); what a step's logits
  make of a request is its own (``request_state``, through its ``grammar_state``). This module
  only wires them.
- How many CPU threads each step uses follows what other processes use (``cpu_share``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from time import perf_counter

import numpy as np

from service.engine.base import (
    EngineError,
    EngineStopped,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    GenerationStats,
)
from service.engine.cpu_share import ThreadGovernor
from service.engine.prompt_cache import PromptCache, Restore
from service.engine.request_state import END, Emit, LoadedModel, RequestState
from service.engine.runner import CacheFull, Chunk, ModelRunner
from service.engine.scheduler import PROMPT_HOLDER, DropHolder, NoRoom, Placement, ScheduledRequest, Scheduler

logger = logging.getLogger(__name__)

Work = ScheduledRequest[RequestState]


def new_work(request: GenerationRequest, emit: Emit, stats: GenerationStats, cancelled: threading.Event) -> Work:
    return ScheduledRequest(prompt=[], payload=RequestState(request, emit, stats), cancelled=cancelled)


class DecodeLoop:
    """``submit``, ``wake`` and ``close`` are safe from any thread; everything else runs on the
    loop's own thread."""

    def __init__(
        self,
        model: LoadedModel,
        runner: ModelRunner,
        max_sequences: int,
        step_tokens: int,
        governor: ThreadGovernor,
        prefill_tokens: int | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self._model = model
        self._runner = runner
        self._scheduler: Scheduler[RequestState] = Scheduler(max_sequences, step_tokens, prefill_tokens, prompt_cache)
        self._governor = governor
        self._inbox: deque[Work] = deque()
        self._wake = threading.Condition()
        self._closing = False
        # Why the thread ended unexpectedly; None while it runs (issue #21).
        self.stopped: str | None = None
        self._thread = threading.Thread(target=self._main, name="llama-decode", daemon=True)
        self._thread.start()

    # -- from any thread ---------------------------------------------------------------------

    def submit(self, work: Work) -> None:
        with self._wake:
            if self.stopped is not None:
                work.payload.emit(EngineStopped(self.stopped))
                return
            self._inbox.append(work)
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
        self._runner.close()

    # -- the loop ----------------------------------------------------------------------------

    def _main(self) -> None:
        """The loop, and what its death does: every request waiting or running ends at once with
        EngineStopped, and so does every later one; the app then answers /health with 503 so
        that the orchestrator restarts the process. Before issue #21 such a death left every
        stream with pings and no close, and /health said 200."""
        try:
            self._run()
        except BaseException as exc:
            with self._wake:
                self.stopped = f"{type(exc).__name__}: {exc}"
                orphans = [*self._inbox, *self._scheduler.running, *self._scheduler.waiting]
                self._inbox.clear()
            logger.critical(
                "the decode thread died (%s): every request now fails with 503 and /health answers 503 "
                "until the process is restarted",
                self.stopped,
                exc_info=exc,
            )
            for work in orphans:
                work.payload.emit(EngineStopped(self.stopped))

    def _run(self) -> None:
        scheduler = self._scheduler
        while True:
            with self._wake:
                while not (self._closing or self._inbox or scheduler.running or scheduler.admissible()):
                    self._wake.wait()
                if self._closing:
                    break
                arrived = list(self._inbox)
                self._inbox.clear()
            try:
                for work in arrived:
                    self._enqueue(work)
                self._step()
            except Exception as exc:  # a broken step must fail its requests, not stop the thread
                logger.exception("decode step failed")
                self._fail_all(GenerationFailed(f"{type(exc).__name__}: {exc}"))
        with self._wake:
            leftover = [*self._inbox, *scheduler.running, *scheduler.waiting]
            self._inbox.clear()
        for work in leftover:
            work.cancelled.set()
            self._finish(work, FinishReason.CANCELLED)

    def _enqueue(self, work: Work) -> None:
        """Set an arriving request up (its grammar state, deadline and forced opening) and
        queue it; one that cannot start fails alone."""
        work.prompt = list(work.payload.request.prompt)
        try:
            opening = work.payload.start(len(work.prompt), self._model)
        except Exception as exc:  # noqa: BLE001 - handed to that request's reader
            self._fail_starting(work, exc)
            return
        deadline_s = work.payload.request.deadline_s
        if deadline_s is not None:
            work.deadline = work.payload.started + deadline_s
        work.pending = [*work.prompt, *opening]
        self._scheduler.add(work)

    def _step(self) -> None:
        """One plan from the scheduler, carried out: endings, starts, one decode call, and the
        plan handed back with what came of it."""
        plan = self._scheduler.schedule(perf_counter())
        for work, cancelled, seq_id in plan.ended:
            self._finish(work, FinishReason.CANCELLED if cancelled else FinishReason.DEADLINE, seq_id)
        if not all([self._start(placement) for placement in plan.started]):
            # A preempted request waits again: what the plan had for it is not done.
            plan = dataclasses.replace(plan, chunks=[(w, take) for w, take in plan.chunks if w.seq_id >= 0])
        if not plan.chunks:
            return
        chunks = [
            Chunk(
                work.seq_id,
                len(work.cached),
                work.pending[:take],
                logits=take == len(work.pending),
                prompt=not work.prompt_evaluated,
            )
            for work, take in plan.chunks
        ]
        self._use_threads(self._governor.threads_for_next_step())
        decode_started = perf_counter()
        try:
            rows = self._runner.decode(chunks)
        except CacheFull:
            self._make_room()
            return
        # The prompts kept for sharing are copied before any request leaves and frees its cells.
        for keep in self._scheduler.update(plan, perf_counter() - decode_started):
            self._runner.forget(PROMPT_HOLDER, keep.common)
            self._runner.copy(keep.source, PROMPT_HOLDER, keep.common, len(keep.prompt))
        for (work, _), logits in zip(plan.chunks, rows, strict=True):
            if logits is None:
                continue
            stats = work.payload.stats
            if not stats.prompt_seconds:
                stats.prompt_seconds = perf_counter() - work.payload.started
            try:
                self._advance(work, logits)
            except EngineError as exc:
                self._fail(work, exc)

    def _start(self, placement: Placement[RequestState]) -> bool:
        """Set up a starting request's cells: a saved copy's restored, then what the holder
        shares. False: it waits again (its restore found no room)."""
        work, restore = placement.request, placement.restore
        restored = restore is not None and self._restore(work.seq_id, restore)
        if restore is not None and not restored and self._scheduler.restore_failed(placement):
            return False
        self._runner.copy(PROMPT_HOLDER, work.seq_id, 0, placement.shared)
        if placement.first:
            stats = work.payload.stats
            stats.cached_prompt_tokens = len(work.cached)
            if self._scheduler.prompt_cache is not None:
                stats.prompt_cache_hit = restored
                stats.restored_prompt_tokens = len(work.cached) - placement.shared if restored else 0
        return True

    def _restore(self, seq_id: int, restore: Restore) -> bool:
        """The saved cells for positions [covered, upto) in ``seq_id``; those before ``covered``
        come from the holder, shared rather than copied."""
        if not self._runner.restore(seq_id, restore.cells.data):
            logger.warning("prompt cache: no room in the KV cache to restore %d tokens", restore.upto - restore.covered)
            return False
        self._runner.forget(seq_id, 0, restore.covered)
        cache = self._scheduler.prompt_cache
        if cache is not None and restore.holds_shared_cells:
            # Kept with cells the holder now shares: those are dropped from the entry, and the
            # rest restored again into the lowest free cells (a restore leaves llama.cpp's search
            # head where it was), not left past the freed ones, which would make every later
            # step attend across them: measured on SmolLM2 alone, 62 rather than 80 tokens/s.
            narrow = self._runner.save(seq_id, restore.covered)
            cache.narrow(restore.cells, restore.covered, narrow)
            self._runner.forget(seq_id)
            if not self._runner.restore(seq_id, narrow):
                return False
        self._runner.forget(seq_id, restore.upto)
        return True

    def _keep_cells(self, work: Work) -> None:
        """A finished request's prompt cells into the prompt cache, for a repeat of its facts or
        its conversation's next turn."""
        span = self._scheduler.cells_worth_keeping(work)
        if span is not None:
            start, end = span
            self._runner.forget(work.seq_id, end)
            self._keep(work.seq_id, start, work.cached[:end])

    def _keep(self, seq_id: int, start: int, tokens: list[int]) -> bool:
        """``seq_id``'s cells of ``tokens`` from ``start`` on into the prompt cache."""
        cache = self._scheduler.prompt_cache
        return cache is not None and cache.put(tokens, start, self._runner.save(seq_id, start))

    def _use_threads(self, threads: int) -> None:
        if threads != self._runner.threads:
            governor = self._governor
            logger.info(
                "other processes use %.1f of %d cores: decoding on %d of %d threads",
                governor.others,
                governor.cores,
                threads,
                governor.most,
            )
            self._runner.use_threads(threads)

    def _advance(self, work: Work, logits: np.ndarray) -> None:
        """The request's next token from ``logits``, queued (with the tokens the grammar forces
        after it) for the next step; or its end."""
        outcome = work.payload.advance(logits, self._model.is_end)
        if isinstance(outcome, FinishReason):
            self._finish(work, outcome)
        else:
            work.pending = outcome

    def _make_room(self) -> None:
        try:
            action = self._scheduler.cache_full()
        except NoRoom as exc:
            raise GenerationFailed(str(exc)) from exc
        if isinstance(action, DropHolder):
            self._runner.forget(PROMPT_HOLDER, action.keep)
            return
        kept = action.keep is not None and self._keep(action.seq_id, *action.keep)
        self._runner.forget(action.seq_id)
        action.request.payload.stats.preemptions += 1
        logger.warning(
            "KV cache full: request preempted, %s (%d tokens)",
            "its cells kept in host RAM" if kept else "to be evaluated again",
            len(action.request.pending),
        )

    # -- endings -----------------------------------------------------------------------------

    def _release(self, work: Work, seq_id: int | None = None) -> None:
        """Free ``work``'s sequence (``seq_id``: already taken from the scheduler)."""
        if seq_id is None:
            seq_id = self._scheduler.release(work)
        if seq_id >= 0:
            self._runner.forget(seq_id)
        work.payload.release()

    def _finish(self, work: Work, reason: FinishReason, seq_id: int | None = None) -> None:
        """``work`` ends for ``reason`` (``seq_id``: its sequence, already taken from the
        scheduler)."""
        try:
            work.payload.end(reason)
        except GenerationFailed as exc:
            self._fail(work, exc, seq_id)
            return
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            self._keep_cells(work)
        self._release(work, seq_id)
        work.payload.emit(END)

    def _fail_starting(self, work: Work, exc: Exception) -> None:
        if not isinstance(exc, EngineError):
            logger.exception("starting a generation failed")
            exc = GenerationFailed(f"{type(exc).__name__}: {exc}")
        self._fail(work, exc)

    def _fail(self, work: Work, error: EngineError, seq_id: int | None = None) -> None:
        self._release(work, seq_id)
        work.payload.emit(error)

    def _fail_all(self, error: EngineError) -> None:
        for work in list(self._scheduler.running):
            self._fail(work, error)
        # The cache may hold half a step: start again from nothing.
        self._runner.clear()
        self._scheduler.reset()
