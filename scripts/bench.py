"""Benchmark a base-info answer, side by side, in one run (timings never go in tests).

    make bench                                            # the embedded model
    .venv/bin/python scripts/bench.py --model path/to/model.gguf --runs 5

Rows (tokens/s is decode speed; the headline is each row's ratio to the ceiling):
- ceiling: a raw low-level llama.cpp decode loop with free sampling (no grammar);
- high-level + grammar: llama-cpp-python's create_chat_completion with our GBNF (what most
  projects do);
- our engine + grammar: service.engine.llama with the same grammar;
- service over HTTP: the whole service as a process, read as an SSE client (tokens counted by
  its /metrics), with the time to the first ``challenge`` event;
- 1, 2, 4 and 8 simultaneous HTTP requests: aggregate tokens/s and each request's time to its
  first ``challenge`` event.
Every part runs alone (never two at once: on 2 cores they would slow each other). Prints a
table and writes JSON to bench-results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.catalog import category_by_code  # noqa: E402
from service.engine import GenerationRequest  # noqa: E402
from service.engine.llama import LlamaConfig, LlamaCppEngine  # noqa: E402
from service.grammar import CHALLENGE_GRAMMAR_PATH  # noqa: E402
from service.model_files import resolve_model_path  # noqa: E402
from service.prompts import base_info_messages  # noqa: E402
from service.serving import CHALLENGE_GRAMMAR, answer_token_budget  # noqa: E402

QUERY = {"location": "도시", "workType": "사무직", "category": "비건"}
MESSAGES = base_info_messages(QUERY["location"], QUERY["workType"], category_by_code("VEGAN"))
GRAMMAR = CHALLENGE_GRAMMAR_PATH.read_text(encoding="utf-8")
FREE_TOKENS = 300


def load_engine(model: Path) -> LlamaCppEngine:
    return LlamaCppEngine(LlamaConfig(model), {CHALLENGE_GRAMMAR: GRAMMAR})


def bench_ceiling(model: Path, runs: int, temperature: float) -> list[float]:
    """Tokens/s of a bare decode loop: llama_decode one token at a time, Gumbel-max sampling
    over the full logits in numpy, no grammar, no detokenizing, a fixed number of tokens."""
    import llama_cpp

    engine = load_engine(model)
    speeds: list[float] = []

    def loop() -> None:
        prompt = engine.tokenize(engine.formatter.format(MESSAGES))
        for seed in range(runs):
            rng = np.random.default_rng(seed)
            engine._load_prompt(prompt)
            started = time.perf_counter()
            for _ in range(FREE_TOKENS):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(engine._ctx, -1), shape=(engine.n_vocab,))
                token = int(np.argmax(logits / max(temperature, 1e-6) + rng.gumbel(size=engine.n_vocab)))
                engine._decode([token])
            speeds.append(FREE_TOKENS / (time.perf_counter() - started))

    try:
        # On the engine's own worker thread: llama.cpp's OpenMP thread team belongs to the
        # thread that calls llama_decode, and a second team left spinning in this process
        # halved the next engine's speed (measured: 58 -> 27 tokens/s).
        engine._executor.submit(loop).result()
    finally:
        asyncio.run(engine.aclose())
    return speeds


def bench_high_level(model: Path, runs: int, temperature: float) -> list[float]:
    """llama-cpp-python's create_chat_completion with our grammar, streamed."""
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    llm = Llama(str(model), n_ctx=4096, verbose=False)
    grammar = LlamaGrammar.from_string(GRAMMAR, verbose=False)
    messages: Any = [{"role": m.role, "content": m.content} for m in MESSAGES]
    speeds = []
    for seed in range(runs):
        llm.set_seed(seed)
        chunks = 0
        first: float | None = None
        for _ in llm.create_chat_completion(
            messages, grammar=grammar, max_tokens=answer_token_budget(), temperature=temperature, stream=True
        ):
            chunks += 1
            if first is None:
                first = time.perf_counter()
        if first is not None and chunks > 1:
            speeds.append((chunks - 1) / (time.perf_counter() - first))
    del llm
    return speeds


async def _engine_runs(model: Path, runs: int, temperature: float) -> list[dict[str, Any]]:
    engine = load_engine(model)
    rows = []
    try:
        for seed in range(runs):
            request = GenerationRequest(
                messages=MESSAGES,
                grammar=CHALLENGE_GRAMMAR,
                max_tokens=answer_token_budget(),
                temperature=temperature,
                seed=seed,
            )
            generation = engine.submit(request)
            async for _ in generation:
                pass
            rows.append(
                {
                    "tokens": generation.stats.generated_tokens,
                    "tokens_per_s": generation.stats.tokens_per_second,
                    "prompt_s": generation.stats.prompt_seconds,
                    "cached_prompt_tokens": generation.stats.cached_prompt_tokens,
                }
            )
    finally:
        await engine.aclose()
    return rows


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _one_stream(client: httpx.AsyncClient, path: str) -> float | None:
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("GET", path, params=QUERY, headers={"Accept": "text/event-stream"}) as response:
        async for chunk in response.aiter_text():
            if first is None and "event: challenge" in chunk:
                first = time.perf_counter() - started
    return first


def bench_http(model: Path, runs: int, temperature: float, concurrency: tuple[int, ...]) -> dict[str, Any]:
    port = 18000 + os.getpid() % 1000
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LEAFRESH_MODEL_PATH": str(model),
        "LEAFRESH_TEMPERATURE": str(temperature),
        "LEAFRESH_LOG_LEVEL": "WARNING",
        "LEAFRESH_MAX_QUEUE": "64",
        "LEAFRESH_QUEUE_TIMEOUT_S": "600",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    path = "/ai/chatbot/recommendation/base-info"
    results: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.2)

        async def wave(size: int) -> dict[str, Any]:
            tokens_before = _metric(base, "leafresh_generated_tokens_total")
            started = time.perf_counter()
            async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(900.0)) as client:
                firsts = await asyncio.gather(*(_one_stream(client, path) for _ in range(size)))
            elapsed = time.perf_counter() - started
            tokens = _metric(base, "leafresh_generated_tokens_total") - tokens_before
            return {
                "requests": size,
                "tokens": tokens,
                "seconds": elapsed,
                "tokens_per_s": tokens / elapsed,
                "first_challenge_s": firsts,
            }

        singles = [asyncio.run(wave(1)) for _ in range(runs)]
        results["single"] = singles
        results["concurrent"] = [asyncio.run(wave(size)) for size in concurrency]
    finally:
        process.terminate()
        process.wait(timeout=30)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    args = parser.parse_args()
    model = resolve_model_path(args.model)
    sizes = tuple(int(n) for n in args.concurrency.split(","))

    # llama-cpp-python's Llama keeps its threads and memory until collected: measured last.
    ceiling = bench_ceiling(model, args.runs, args.temperature)
    engine_rows = asyncio.run(_engine_runs(model, args.runs, args.temperature))
    http = bench_http(model, args.runs, args.temperature, sizes)
    high_level = bench_high_level(model, args.runs, args.temperature)

    top = statistics.median(ceiling)
    rows: list[tuple[str, float, str]] = [
        ("ceiling: raw decode loop, free", top, ""),
        ("high-level create_chat_completion + grammar", statistics.median(high_level), ""),
        ("our engine + grammar", statistics.median(r["tokens_per_s"] for r in engine_rows), ""),
    ]
    single = http["single"]
    first = statistics.median(r["first_challenge_s"][0] for r in single[1:] or single)
    rows.append(
        ("service over HTTP", statistics.median(r["tokens_per_s"] for r in single), f"first challenge {first:.3f} s")
    )
    for wave in http["concurrent"]:
        firsts = [f for f in wave["first_challenge_s"] if f is not None]
        rows.append(
            (
                f"{wave['requests']} simultaneous requests (aggregate)",
                wave["tokens_per_s"],
                f"first challenge min {min(firsts):.2f} s / max {max(firsts):.2f} s",
            )
        )
    sys.stdout.write(f"model {model.name}, temperature {args.temperature}, {args.runs} runs per row (median)\n\n")
    sys.stdout.write(f"| {'path':<44} | tokens/s | × ceiling | notes |\n|---|---|---|---|\n")
    for name, speed, note in rows:
        sys.stdout.write(f"| {name:<44} | {speed:8.1f} | {speed / top:9.2f} | {note} |\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": str(model),
                "temperature": args.temperature,
                "ceiling_tokens_per_s": ceiling,
                "high_level_tokens_per_s": high_level,
                "engine": engine_rows,
                "http": http,
                "table": [{"path": n, "tokens_per_s": s, "ratio": s / top, "notes": note} for n, s, note in rows],
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    sys.stdout.write(f"\nwritten to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
