"""Benchmark a base-info answer: the engine alone, then the whole service over HTTP.

    make bench                                  # the embedded model
    .venv/bin/python scripts/bench.py --model path/to/model.gguf --runs 10

Both parts run in this one process, one after the other (never at once: on 2 cores they would
slow each other), on the same prompts and seeds, so their numbers compare. Prints a table and
writes JSON to bench-results/. Timings never go in tests; this is where they live.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.catalog import category_by_code  # noqa: E402
from service.engine import GenerationRequest  # noqa: E402
from service.engine.llama import LlamaConfig, LlamaCppEngine  # noqa: E402
from service.grammar import CHALLENGE_GRAMMAR_PATH  # noqa: E402
from service.model_files import resolve_model_path  # noqa: E402
from service.prompts import base_info_messages  # noqa: E402
from service.serving import CHALLENGE_GRAMMAR, answer_token_budget  # noqa: E402

logger = logging.getLogger("bench")
QUERY = {"location": "도시", "workType": "사무직", "category": "비건"}


async def bench_engine(model: Path, runs: int, temperature: float) -> dict[str, Any]:
    engine = LlamaCppEngine(LlamaConfig(model), {CHALLENGE_GRAMMAR: CHALLENGE_GRAMMAR_PATH.read_text(encoding="utf-8")})
    messages = base_info_messages(QUERY["location"], QUERY["workType"], category_by_code("VEGAN"))
    rows = []
    try:
        for seed in range(runs):
            request = GenerationRequest(
                messages=messages,
                grammar=CHALLENGE_GRAMMAR,
                max_tokens=answer_token_budget(),
                temperature=temperature,
                seed=seed,
            )
            started = time.perf_counter()
            first: float | None = None
            generation = engine.submit(request)
            async for _ in generation:
                if first is None:
                    first = time.perf_counter() - started
            stats = generation.stats
            rows.append(
                {
                    "tokens": stats.generated_tokens,
                    "tokens_per_s": stats.tokens_per_second,
                    "prompt_tokens": stats.prompt_tokens,
                    "cached_prompt_tokens": stats.cached_prompt_tokens,
                    "prompt_s": stats.prompt_seconds,
                    "first_piece_s": first,
                    "total_s": time.perf_counter() - started,
                }
            )
    finally:
        await engine.aclose()
    return {"runs": rows}


def bench_http(model: Path, runs: int, temperature: float) -> dict[str, Any]:
    port = 18000 + os.getpid() % 1000
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LEAFRESH_MODEL_PATH": str(model),
        "LEAFRESH_TEMPERATURE": str(temperature),
        "LEAFRESH_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.2)
        with httpx.Client(timeout=300) as client:
            for _ in range(runs):
                started = time.perf_counter()
                first: float | None = None
                characters = 0
                url = f"{base}/ai/chatbot/recommendation/base-info"
                with connect_sse(client, "GET", url, params=QUERY, headers={"Accept": "text/event-stream"}) as source:
                    for event in source.iter_sse():
                        if event.event == "challenge":
                            if first is None:
                                first = time.perf_counter() - started
                            characters += len(json.loads(event.data)["data"])
                rows.append(
                    {"first_challenge_s": first, "total_s": time.perf_counter() - started, "characters": characters}
                )
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"runs": rows}


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in rows if row[key] is not None]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = resolve_model_path(args.model)

    engine = asyncio.run(bench_engine(model, args.runs, args.temperature))
    http = bench_http(model, args.runs, args.temperature)
    warm = engine["runs"][1:] or engine["runs"]
    summary = {
        "model": str(model),
        "runs": args.runs,
        "temperature": args.temperature,
        "engine_tokens_per_s": median(engine["runs"], "tokens_per_s"),
        "engine_tokens_per_answer": median(engine["runs"], "tokens"),
        "engine_prompt_s_cold": engine["runs"][0]["prompt_s"],
        "engine_prompt_s_warm": median(warm, "prompt_s"),
        "engine_first_piece_s_warm": median(warm, "first_piece_s"),
        "http_first_challenge_s": median(http["runs"][1:] or http["runs"], "first_challenge_s"),
        "http_total_s": median(http["runs"], "total_s"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "engine": engine, "http": http}, indent=2, ensure_ascii=False))
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        sys.stdout.write(f"{key:<{width}}  {shown}\n")
    sys.stdout.write(f"written to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
