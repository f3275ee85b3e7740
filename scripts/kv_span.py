"""What one shared KV pool costs a step when a request's cells are not the only ones in it
(issue #22's closing note).

llama.cpp attends, for every token of a step, across the pool up to its highest used cell; the
cells of other sequences are masked, not skipped wholesale, wherever their cells lie among the
sequence's own. This times the same prompt chunks and decode steps of one sequence (our
runner, our context settings) with the pool otherwise empty, and again with one other
sequence's 512 cells kept past cell 5,000, as a busy service leaves them.

Then a busy pool's mixed step: 15 sequences decoding (600 shared cells and 400 of their own
each) beside a 256-token prompt chunk, as one llama_decode call and as the runner splits it on
a CPU (the decoding tokens, then the chunk).

    .venv/bin/python -m scripts.kv_span [--model embedded|gemma|PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable

from scripts.bench import resolve_model
from service.engine.llama import LlamaConfig, LlamaCppEngine
from service.engine.runner import Chunk, ModelRunner
from service.recommend import answer

SEQUENCE, OTHER = 5, 7
CHUNK = 512  # the context's batch size
FAR_CELLS = 10 * CHUNK  # how far the other sequence's last cells lie
# The mixed step: sequences 1..DECODING decode, the next one evaluates a prompt chunk.
DECODING, SHARED_CELLS, OWN_CELLS, PROMPT_CHUNK = 15, 600, 400, 256


def timed(step: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``step`` over ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(runner: ModelRunner, repeats: int) -> dict[str, float]:
    tokens = list(range(1000, 1000 + CHUNK))

    def prompt_from_start() -> None:
        runner.forget(SEQUENCE)
        runner.decode([Chunk(SEQUENCE, 0, tokens, True)])

    def chunk_after_prompt() -> None:
        runner.forget(SEQUENCE, CHUNK)
        runner.decode([Chunk(SEQUENCE, CHUNK, tokens[: CHUNK // 2], True)])

    def decode_step() -> None:
        runner.forget(SEQUENCE, CHUNK + CHUNK // 2)
        runner.decode([Chunk(SEQUENCE, CHUNK + CHUNK // 2, tokens[:1], True)])

    return {
        "prompt_512_tokens_per_s": CHUNK / timed(prompt_from_start, repeats),
        "chunk_256_at_512_tokens_per_s": (CHUNK // 2) / timed(chunk_after_prompt, repeats),
        "decode_step_ms": 1000 * timed(decode_step, repeats * 10),
    }


def fill(runner: ModelRunner, seq_id: int, start: int, count: int) -> None:
    """``count`` cells of ``seq_id`` from ``start``, a batch at a time."""
    for offset in range(0, count, CHUNK):
        size = min(CHUNK, count - offset)
        runner.decode([Chunk(seq_id, start + offset, list(range(2000, 2000 + size)), True, prompt=True)])


def occupy_far_cells(runner: ModelRunner) -> None:
    """Fill the pool past FAR_CELLS with another sequence, then free all of it but its last
    chunk: what finished requests leave behind while one of them still runs."""
    runner.forget(SEQUENCE)
    fill(runner, OTHER, 0, FAR_CELLS + CHUNK)
    runner.forget(OTHER, 0, FAR_CELLS)


def measure_mixed_step(runner: ModelRunner, repeats: int) -> dict[str, float]:
    """Milliseconds of the mixed step as one call and as two (the pool cleared first)."""
    runner.clear()
    fill(runner, 0, 0, SHARED_CELLS)
    for seq_id in range(1, DECODING + 1):
        runner.copy(0, seq_id, 0, SHARED_CELLS)
        fill(runner, seq_id, SHARED_CELLS, OWN_CELLS)
    prompt_seq, end = DECODING + 1, SHARED_CELLS + OWN_CELLS
    runner.copy(0, prompt_seq, 0, SHARED_CELLS)
    chunks = [Chunk(seq_id, end, [4000 + seq_id], True) for seq_id in range(1, DECODING + 1)]
    chunks.append(Chunk(prompt_seq, SHARED_CELLS, list(range(5000, 5000 + PROMPT_CHUNK)), True, prompt=True))

    def step(split: bool) -> Callable[[], object]:
        def run() -> None:
            for seq_id in range(1, DECODING + 1):
                runner.forget(seq_id, end)
            runner.forget(prompt_seq, SHARED_CELLS)
            runner.split_prompt_steps = split
            runner.decode(chunks)

        return run

    one, two = [], []
    for _ in range(repeats):  # taking turns, so that the machine's drift falls on both
        one.append(timed(step(False), 1))
        two.append(timed(step(True), 1))
    return {"one_call_ms": 1000 * statistics.median(one), "two_calls_ms": 1000 * statistics.median(two)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = LlamaCppEngine(LlamaConfig(resolve_model(args.model), parallel=16, context_size=8192), answer.grammars())
    try:
        runner = ModelRunner(engine.ctx, CHUNK, engine.tokens.n_vocab, engine.threads)
        alone = measure(runner, args.repeats)
        occupy_far_cells(runner)
        beside = measure(runner, args.repeats)
        mixed = measure_mixed_step(runner, args.repeats)
    finally:
        asyncio.run(engine.aclose())
    sys.stdout.write(f"{'':32} {'pool otherwise empty':>22} {'other cells past 5,120':>24} {'×':>6}\n")
    for name, value in alone.items():
        sys.stdout.write(f"{name:32} {value:22.1f} {beside[name]:24.1f} {beside[name] / value:6.2f}\n")
    sys.stdout.write(
        f"\n{DECODING} decoding beside a {PROMPT_CHUNK}-token prompt chunk: one call {mixed['one_call_ms']:.0f} ms, "
        f"two calls {mixed['two_calls_ms']:.0f} ms ({mixed['one_call_ms'] / mixed['two_calls_ms']:.2f}×)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
