"""What one shared KV pool costs a step when a request's cells are not the only ones in it
(issue #22's closing note).

llama.cpp attends, for every token of a step, across the pool up to its highest used cell; the
cells of other sequences are masked, not skipped wholesale, wherever their cells lie among the
sequence's own. This times the same prompt chunks and decode steps of one sequence (our
runner, our context settings) with the pool otherwise empty, and again with one other
sequence's 512 cells kept past cell 5,000, as a busy service leaves them.

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


def occupy_far_cells(runner: ModelRunner) -> None:
    """Fill the pool past FAR_CELLS with another sequence, then free all of it but its last
    chunk: what finished requests leave behind while one of them still runs."""
    runner.forget(SEQUENCE)
    tokens = list(range(2000, 2000 + CHUNK))
    for start in range(0, FAR_CELLS + CHUNK, CHUNK):
        runner.decode([Chunk(OTHER, start, tokens, True)])
    runner.forget(OTHER, 0, FAR_CELLS)


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
    finally:
        asyncio.run(engine.aclose())
    sys.stdout.write(f"{'':32} {'pool otherwise empty':>22} {'other cells past 5,120':>24} {'×':>6}\n")
    for name, value in alone.items():
        sys.stdout.write(f"{name:32} {value:22.1f} {beside[name]:24.1f} {beside[name] / value:6.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
