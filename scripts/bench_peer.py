"""Our service against llama.cpp's own llama-server, side by side in one run (issue #15).

    make bench-peer                                      # the embedded model and gemma-3-270m
    .venv/bin/python -m scripts.bench_peer --model embedded --concurrency 1,4,8 --runs 3

What a user would run instead of us is llama-server with our grammar file. Both servers get the
same model, the same GBNF grammar, the same prompt tokens (our engine's, sent to llama-server's
/completion as token ids), temperature 0.7, the same number of parallel slots and threads, and
the same traffic: waves of 1, 4 and 8 simultaneous base-info requests, each a different place,
kind of work and category (tests/support/queries.rotating_queries), as production sends them.
Each server runs alone; they take turns, ``--runs`` times, and each figure is the median.

Per wave: aggregate answer tokens/s (tokens over the wave's wall time), answers per minute, and
each request's time to its first text: for us the first ``challenge`` event, for llama-server the
first character after the grammar-forced ``{"recommend":"``. llama-server is built once from the
llama.cpp that our llama-cpp-python vendors (scripts/build_peer.sh), into a cache outside the
checkout. Writes bench-results/peer-<time>.json and a chart beside it (PNG).
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from scripts.bench import GRAMMAR, bench_service, http_wave, load_engine, resolve_model
from service.engine.cpu_share import allowed_cores
from service.recommend import answer
from service.recommend.catalog import find_category
from service.recommend.prompts import base_info_messages
from tests.support.queries import rotating_queries
from tests.support.service_process import ROOT, free_port, stop_process, wait_until_answers

# What the grammar forces before the first word a reader sees.
OPENING = '{"recommend":"'
PARALLEL = 4  # our default LEAFRESH_PARALLEL; llama-server gets as many slots
CONTEXT = 8192  # our default LEAFRESH_CONTEXT_SIZE; llama-server's is shared by its slots


@dataclass
class Wave:
    server: str
    requests: int
    seconds: float
    tokens: float
    first_text_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def answers_per_minute(self) -> float:
        return 60 * self.requests / self.seconds


def build_peer() -> Path:
    """llama-server's path, built on first use (several minutes) and cached by version."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_peer.sh"), "llama-server"],
        env={**os.environ, "PY": sys.executable},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def prompt_tokens(model: Path, queries: list[dict[str, str]]) -> list[list[int]]:
    """Our engine's prompt for each query, in a process of its own (its threads end with it)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_prompt_tokens, model, queries).result()


def _prompt_tokens(model: Path, queries: list[dict[str, str]]) -> list[list[int]]:
    engine = load_engine(model, parallel=1)
    try:
        return [engine.prompt_tokens(_messages(query)) for query in queries]
    finally:
        asyncio.run(engine.aclose())


def _messages(query: dict[str, str]) -> Any:
    category = find_category(query["category"])
    assert category is not None
    return base_info_messages(query["location"], query["workType"], category)


class PeerServer:
    """llama-server on loopback with our grammar, ready when constructed."""

    def __init__(self, binary: Path, model: Path, threads: int, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [
            str(binary),
            *("-m", str(model), "--grammar-file", str(answer.GRAMMAR_PATH)),
            *("-np", str(PARALLEL), "-c", str(CONTEXT), "-t", str(threads), "-tb", str(threads)),
            *("--host", "127.0.0.1", "--port", str(self.port), "--no-webui"),
        ]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until_answers(self.process, f"{self.base_url}/health", 300, log_path.read_text)

    def stop(self) -> None:
        stop_process(self.process)


async def _peer(client: httpx.AsyncClient, tokens: list[int], temperature: float, seed: int) -> tuple[float, int]:
    """One streamed /completion: (seconds to the first text after the opening, tokens)."""
    body = {
        "prompt": tokens,
        "n_predict": answer.max_tokens(),
        # Our sampling: the whole softmax at this temperature. llama-server's defaults would
        # also cut to the top 40 tokens, top-p 0.95 and min-p 0.05: another distribution, whose
        # answers on SmolLM2 measured twice as long, and then per-answer figures compare
        # nothing.
        "temperature": temperature,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "seed": seed,
        "stream": True,
        "cache_prompt": True,
    }
    started = time.perf_counter()
    first = float("nan")
    text = ""
    predicted = 0
    async with client.stream("POST", "/completion", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[len("data: ") :])
            text += chunk.get("content", "")
            if first != first and len(text) > len(OPENING):
                first = time.perf_counter() - started
            if chunk.get("stop"):
                predicted = int(chunk.get("tokens_predicted") or chunk.get("timings", {}).get("predicted_n", 0))
    return first, predicted


def _ours_wave(base_url: str, queries: list[dict[str, str]]) -> Wave:
    wave = asyncio.run(http_wave(base_url, queries))
    return Wave("ours", len(queries), wave["seconds"], wave["tokens"], wave["first_challenge_s"])


async def _peer_wave(base_url: str, prompts: list[list[int]], temperature: float, seed: int) -> Wave:
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(900.0)) as client:
        results = await asyncio.gather(
            *(_peer(client, tokens, temperature, seed + i) for i, tokens in enumerate(prompts))
        )
    seconds = time.perf_counter() - started
    return Wave("llama-server", len(prompts), seconds, sum(r[1] for r in results), [r[0] for r in results])


def bench_pair(model: Path, peer: Path, sizes: list[int], runs: int, temperature: float, logs: Path) -> list[Wave]:
    """Each server alone, taking turns ``runs`` times; every wave a fresh part of the mix."""
    threads = len(allowed_cores())
    needed = 1 + runs * sum(sizes)
    queries = rotating_queries(needed)
    prompts = prompt_tokens(model, queries)
    waves: list[Wave] = []
    for run in range(runs):
        # Both start from the same warm-up request (the shared instructions cached), then the
        # same waves of the mix.
        offset = 1 + run * sum(sizes)
        ours = bench_service(
            model,
            {
                "LEAFRESH_TEMPERATURE": str(temperature),
                "LEAFRESH_PARALLEL": str(PARALLEL),
                "LEAFRESH_CONTEXT_SIZE": str(CONTEXT),
            },
        )
        try:
            _ours_wave(ours.base_url, queries[:1])
            start = offset
            for size in sizes:
                waves.append(_ours_wave(ours.base_url, queries[start : start + size]))
                start += size
        finally:
            ours.stop()
        server = PeerServer(peer, model, threads, logs / f"peer-{model.stem}-{run}.log")
        try:
            asyncio.run(_peer_wave(server.base_url, prompts[:1], temperature, 0))
            start = offset
            for size in sizes:
                waves.append(
                    asyncio.run(_peer_wave(server.base_url, prompts[start : start + size], temperature, start))
                )
                start += size
        finally:
            server.stop()
    return waves


def summarize(waves: list[Wave], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"requests": size}
        for server in ("ours", "llama-server"):
            mine = [w for w in waves if w.server == server and w.requests == size]
            firsts = [f for w in mine for f in w.first_text_s if f == f]
            row[server] = {
                "tokens_per_s": statistics.median(w.tokens_per_s for w in mine),
                "answers_per_minute": statistics.median(w.answers_per_minute for w in mine),
                "first_text_median_s": statistics.median(firsts) if firsts else float("nan"),
                "first_text_max_s": max(firsts) if firsts else float("nan"),
            }
        ours, peer = row["ours"], row["llama-server"]
        row["ratio"] = {
            "tokens_per_s": ours["tokens_per_s"] / peer["tokens_per_s"],
            "answers_per_minute": ours["answers_per_minute"] / peer["answers_per_minute"],
            "first_text": peer["first_text_median_s"] / ours["first_text_median_s"],
        }
        rows.append(row)
    return rows


def print_table(name: str, rows: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    out.write(f"\n{name}: ours against llama-server, rotating mix (medians)\n\n")
    out.write(
        "| streams | tokens/s ours | llama-server | × | answers/min ours | llama-server | × "
        "| first text ours (median / max) | llama-server | × faster |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for row in rows:
        ours, peer, ratio = row["ours"], row["llama-server"], row["ratio"]
        out.write(
            f"| {row['requests']} | {ours['tokens_per_s']:.1f} | {peer['tokens_per_s']:.1f} | {ratio['tokens_per_s']:.2f} "
            f"| {ours['answers_per_minute']:.1f} | {peer['answers_per_minute']:.1f} | {ratio['answers_per_minute']:.2f} "
            f"| {ours['first_text_median_s']:.2f} / {ours['first_text_max_s']:.2f} s "
            f"| {peer['first_text_median_s']:.2f} / {peer['first_text_max_s']:.2f} s | {ratio['first_text']:.2f} |\n"
        )


def draw_chart(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Tokens/s and first-text time by concurrency, ours against llama-server, a column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(max(7, 5 * len(results)), 7), squeeze=False)
    for column, (name, rows) in enumerate(results.items()):
        sizes = [row["requests"] for row in rows]
        for server, style in (("ours", "o-"), ("llama-server", "s--")):
            axes[0][column].plot(sizes, [row[server]["tokens_per_s"] for row in rows], style, label=server)
            axes[1][column].plot(sizes, [row[server]["first_text_median_s"] for row in rows], style, label=server)
        axes[0][column].set_title(name)
        axes[0][column].set_ylabel("aggregate answer tokens/s")
        axes[1][column].set_ylabel("first text, median (s)")
        for axis in axes[:, column]:
            axis.set_xlabel("simultaneous requests")
            axis.set_xticks(sizes)
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend()
    figure.suptitle("Rotating mix of base-info requests, each server alone on the same cores")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None, help="embedded (default), gemma or a GGUF path")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()
    sizes = [int(n) for n in args.concurrency.split(",")]
    peer = build_peer()
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = out_dir / f"peer-{stamp}-logs"
    logs.mkdir()
    results: dict[str, list[dict[str, Any]]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for spec in args.model or ["embedded", "gemma"]:
        model = resolve_model(spec)
        waves = bench_pair(model, peer, sizes, args.runs, args.temperature, logs)
        results[model.name] = summarize(waves, sizes)
        raw[model.name] = [asdict(w) for w in waves]
        print_table(model.name, results[model.name])
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_name(),
        "cores": len(allowed_cores()),
        "peer": str(peer),
        "parallel": PARALLEL,
        "temperature": args.temperature,
        "runs": args.runs,
        "grammar_bytes": len(GRAMMAR.encode()),
        "results": results,
        "waves": raw,
    }
    path = out_dir / f"peer-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    chart = path.with_suffix(".png")
    draw_chart(results, chart)
    sys.stdout.write(f"\nwrote {path} and {chart}\n")
    return 0


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
