"""The model runner: builds a step's batch, calls llama_decode, hands back logits, and moves KV
cells between sequences as the scheduler decides. It decides nothing itself.

Only the decode thread calls it: llama.cpp's OpenMP thread team belongs to the thread that
calls llama_decode, and decoding from a second thread halved the speed (issue #6).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from service.engine.base import GenerationFailed

# llama.cpp handles (model, context): opaque ctypes pointers.
CPointer = Any


@dataclass(frozen=True)
class Chunk:
    """Tokens of one sequence for the next step, from position ``start``; ``logits``: whether
    the last one's logits are wanted (it ends what the sequence had pending); ``prompt``: part
    of a prompt still being evaluated, not a decoding sequence's next token (or forced run)."""

    seq_id: int
    start: int
    tokens: list[int]
    logits: bool
    prompt: bool = False


class CacheFull(Exception):
    """llama_decode found no room for the step and changed nothing."""


class ModelRunner:
    """``split_prompt_steps``: a step that carries prompt chunks beside decoding sequences'
    tokens is two llama_decode calls, the decoding tokens first (see ``decode``)."""

    def __init__(
        self, ctx: CPointer, step_tokens: int, n_vocab: int, threads: int, split_prompt_steps: bool = False
    ) -> None:
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_vocab = n_vocab
        self._batch = llama_cpp.llama_batch_init(step_tokens, 0, 1)
        self.threads = threads
        self.split_prompt_steps = split_prompt_steps

    def decode(self, chunks: list[Chunk]) -> list[np.ndarray | None]:
        """Evaluate ``chunks``; per chunk, its last token's logits (valid until the next step)
        or None. Raises CacheFull when they did not fit, with nothing of them left in the cache.

        With ``split_prompt_steps``, prompt chunks go in a call of their own after the decoding
        tokens. llama.cpp's CPU flash attention computes a batch's query rows in tiles of 64 and
        skips only the cells masked for every row of a tile: one row from each of 15 decoding
        sequences beside a 256-token prompt chunk made that tile attend across the whole pool.
        Measured on SmolLM2, 15 sequences of 1,130 cells sharing 600 (issue #22): 1.78 s as one
        call, 1.34 s as two; 1.12 / 0.88 s with 8 decoding, 1.04 / 0.75 s on gemma-3-270m."""
        decoding = [chunk for chunk in chunks if not chunk.prompt]
        prompts = [chunk for chunk in chunks if chunk.prompt]
        if not (self.split_prompt_steps and decoding and prompts):
            return self._decode_once(chunks)
        # The next call overwrites llama.cpp's logits: the decoding rows are copied out first.
        rows = iter([None if row is None else row.copy() for row in self._decode_once(decoding)])
        try:
            prompt_rows = iter(self._decode_once(prompts))
        except CacheFull:
            for chunk in decoding:
                self.forget(chunk.seq_id, chunk.start)
            raise
        return [next(prompt_rows) if chunk.prompt else next(rows) for chunk in chunks]

    def _decode_once(self, chunks: list[Chunk]) -> list[np.ndarray | None]:
        """``chunks`` in one llama_decode; llama.cpp leaves nothing of them when it finds no room."""
        outputs = self._fill(chunks)
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status == 1:
            raise CacheFull()
        if status != 0:
            raise GenerationFailed(f"llama_decode returned {status}")
        return [
            None
            if index is None
            else np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
            for index in outputs
        ]

    def _fill(self, chunks: list[Chunk]) -> list[int | None]:
        batch = self._batch
        index = 0
        outputs: list[int | None] = []
        for chunk in chunks:
            for offset, token in enumerate(chunk.tokens):
                batch.token[index] = token
                batch.pos[index] = chunk.start + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = chunk.seq_id
                batch.logits[index] = 0
                index += 1
            if chunk.logits:
                batch.logits[index - 1] = 1
            outputs.append(index - 1 if chunk.logits else None)
        batch.n_tokens = index
        return outputs

    def use_threads(self, threads: int) -> None:
        if threads != self.threads:
            llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
            self.threads = threads

    # -- KV cells ----------------------------------------------------------------------------

    def copy(self, source: int, target: int, start: int, end: int) -> None:
        """Tag ``source``'s cells for positions [start, end) as ``target``'s too."""
        if end > start:
            llama_cpp.llama_memory_seq_cp(self._memory, source, target, start, end)

    def forget(self, seq_id: int, start: int = 0, end: int = -1) -> None:
        """Drop ``seq_id``'s cells for positions [start, end) (-1: to its end)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, start, end)

    def save(self, seq_id: int, start: int) -> bytearray:
        """``seq_id``'s cells from position ``start`` on, as llama.cpp writes a sequence's
        state; the cells before ``start`` are dropped (the sequence is ending anyway)."""
        if start > 0:
            self.forget(seq_id, 0, start)
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq_id)
        data = bytearray(size)
        buffer = (ctypes.c_uint8 * size).from_buffer(data)
        written = llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, seq_id)
        del buffer  # a bytearray cannot be resized while a ctypes view is exported
        del data[written:]
        return data

    def restore(self, seq_id: int, data: bytearray) -> bool:
        """Put cells ``save`` wrote into ``seq_id`` (its own cells are dropped first); False when
        the cache has no room for them."""
        buffer = (ctypes.c_uint8 * len(data)).from_buffer(data)
        return bool(llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(data), seq_id))

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, True)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
