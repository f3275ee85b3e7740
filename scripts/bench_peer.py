"""Our service against llama.cpp's own llama-server, side by side in one run (issues #15, #22).

    make bench-peer                                      # the embedded model and gemma-3-270m
    .venv/bin/python -m scripts.bench_peer --model embedded --concurrency 1,4,8,16 --runs 3
    .venv/bin/python -m scripts.bench_peer --model embedded --search-peer   # llama-server's options

What a user would run instead of us is llama-server with our grammar file. Both servers get the
same model, the same GBNF grammar, the same prompt tokens (our engine's, sent to llama-server's
/completion as token ids), temperature 0.7, as many parallel slots (``--parallel``, ours
settled by LEAFRESH_PARALLEL=auto on this machine) and threads, and the same requests in the
same order, in waves of 1, 4, 8 and 16 at once, on two traffics (tests/support/traffic):
- *rotating*: base-info requests each a different place, kind of work and category;
- *production*: combinations drawn from a Zipf law, a third of requests free-text turns of
  earlier sessions (their history built from our service's answers, so the prompt tokens stay
  the same for both), after an unmeasured prelude of conversations under way.
llama-server runs twice per traffic: with its own default sampling (top-k 40, top-p 0.95,
min-p 0.05: as users run it) and with ours (the whole softmax); tokens per answer are reported
for each. Each server runs alone; they take turns, ``--runs`` times, and each figure is the
median (the slowest first text: the maximum).

Per wave: aggregate answer tokens/s (tokens over the wave's wall time), tokens per answer, each
request's time to its first text (for us the first ``challenge`` event, for llama-server the
first character after the grammar-forced ``{"recommend":"``) and each stream's own tokens/s
after it. llama-server is built once from the llama.cpp that our llama-cpp-python vendors
(scripts/build_peer.sh), into a cache outside the checkout. Writes
bench-results/peer-<time>.json and a chart beside it (PNG).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from scripts.bench import GRAMMAR, bench_service, load_engine, resolve_model
from scripts.streams import PEER_SAMPLING, Wave, ours_wave, peer_wave, with_logged_tokens
from service.engine.cpu_share import allowed_cores
from service.engine.llama import LlamaCppEngine
from service.engine.scheduler import common_prefix
from service.metrics import Metrics
from service.recommend import answer
from service.recommend.answer import Answer
from service.recommend.jobs import JobBuilder
from service.recommend.protocol import parse_base_info, parse_free_text
from service.recommend.sessions import MemorySessionStore
from tests.support.metrics import metric
from tests.support.service_process import ROOT, free_port, stop_process, wait_until_answers
from tests.support.traffic import ZIPF_EXPONENT, Request, production_waves, rotating_waves

CONTEXT = 8192  # our default LEAFRESH_CONTEXT_SIZE
# llama-server keeps a copy of the shared instructions in every slot and cannot evict a running
# request when its cache is full (it fails the request with 500), so it gets the room of a
# whole conversation per slot: 2,048 cells each (at 16 slots 4x our context; SmolLM2's KV cache
# is 22.5 KiB a cell in f16, gemma-3-270m's 18 KiB: 720 and 576 MiB at 16 slots, not a limit here).
PEER_CELLS_PER_SLOT = 2048
TRAFFICS = ("rotating", "production")
# llama-server at its best for this traffic (issue #22: each option tried on its own first,
# PEER_CANDIDATES below): as it comes, with its host-RAM prompt cache and idle-slot caching on.
PEER_OPTIONS = ""


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


def traffic_waves(traffic: str, sizes: list[int], run: int) -> list[list[Request]]:
    """The run's waves, the first one a warm-up that is not measured: for the rotating mix one
    request (the shared instructions cached), for the production-like one its prelude of
    conversations under way."""
    if traffic == "rotating":
        return rotating_waves([1, *sizes], offset=run * (1 + sum(sizes)))
    return production_waves(sizes, seed=run)


def peer_prompts(model: Path, waves: list[list[Request]], answers: dict[int, Any]) -> dict[int, list[int]]:
    """The prompt tokens our service used for each request, in a process of its own (its
    threads end with it): the same routes' jobs, replayed with the answers our service gave, so
    that a free-text turn's history is the same for both servers."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_peer_prompts, model, waves, answers).result()


def _peer_prompts(model: Path, waves: list[list[Request]], answers: dict[int, Any]) -> dict[int, list[int]]:
    return asyncio.run(_replay(load_engine(model, parallel=1), waves, answers))


async def _replay(engine: LlamaCppEngine, waves: list[list[Request]], answers: dict[int, Any]) -> dict[int, list[int]]:
    jobs = JobBuilder(engine, MemorySessionStore(1000, 50, 3600), Metrics(), CONTEXT - answer.max_tokens(), 1)
    prompts = {}
    try:
        for wave in waves:
            built = []
            for request in wave:
                if request.query is not None:
                    job = await jobs.base_info(parse_base_info({"sessionId": request.session, **request.query}))
                else:
                    job = await jobs.free_text(parse_free_text(request.params(), 10_000))
                prompts[request.number] = job.prompt
                built.append((request, job))
            # A wave's answers are recorded after the whole wave, as the turns' order allows.
            for request, job in built:
                if job.on_answer is not None and answers.get(request.number) is not None:
                    await job.on_answer(Answer.model_validate(answers[request.number]))
    finally:
        await engine.aclose()
    return prompts


class PeerServer:
    """llama-server on loopback with our grammar, ready when constructed; ``options`` are its
    extra command-line options (the configuration under test)."""

    def __init__(
        self, binary: Path, model: Path, threads: int, parallel: int, options: list[str], log_path: Path
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(binary),
            *("-m", str(model), "--grammar-file", str(answer.GRAMMAR_PATH)),
            *("-np", str(parallel), "-c", str(max(CONTEXT, PEER_CELLS_PER_SLOT * parallel))),
            *("-t", str(threads), "-tb", str(threads)),
            *options,
            *("--host", "127.0.0.1", "--port", str(self.port), "--no-webui"),
        ]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_until_answers(self.process, f"{self.base_url}/health", 300, log_path.read_text)

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Setup:
    """What one bench run holds fixed: the model, the peer and how both run."""

    model: Path
    peer: Path
    sizes: list[int]
    temperature: float
    parallel: int | None  # None: ours settles LEAFRESH_PARALLEL=auto, and the peer gets as many slots
    peer_options: list[str]
    logs: Path

    @property
    def threads(self) -> int:
        return len(allowed_cores())


def run_ours(
    setup: Setup, traffic: str, waves: list[list[Request]], tag: str
) -> tuple[list[Wave], dict[int, Any], int]:
    """Our service alone over ``waves`` (the first a warm-up): the measured waves, every answer,
    and how many generations it ran at once."""
    log = setup.logs / f"ours-{setup.model.stem}-{tag}.log"
    env = {
        "LEAFRESH_TEMPERATURE": str(setup.temperature),
        "LEAFRESH_PARALLEL": str(setup.parallel or "auto"),
        "LEAFRESH_CONTEXT_SIZE": str(CONTEXT),
        "LEAFRESH_LOG_LEVEL": "INFO",  # the answered line carries each request's tokens
    }
    service = bench_service(setup.model, env, log_path=log)
    slots = int(metric(service.base_url, "leafresh_parallel_slots"))
    measured: list[Wave] = []
    answers: dict[int, Any] = {}
    try:
        for index, requests in enumerate(waves):
            wave, data = asyncio.run(ours_wave(service.base_url, requests, traffic))
            answers.update((r.number, d) for r, d in zip(requests, data, strict=True))
            if index:
                wave.slots = slots
                measured.append(wave)
    finally:
        service.stop()
    with_logged_tokens(measured, log)
    return measured, answers, slots


def run_peer(
    setup: Setup,
    traffic: str,
    waves: list[list[Request]],
    prompts: dict[int, list[int]],
    sampling: str,
    slots: int,
    tag: str,
) -> list[Wave]:
    log = setup.logs / f"peer-{setup.model.stem}-{tag}-{sampling}.log"
    server = PeerServer(setup.peer, setup.model, setup.threads, slots, setup.peer_options, log)
    measured = []
    try:
        for index, requests in enumerate(waves):
            wave = asyncio.run(peer_wave(server.base_url, requests, prompts, sampling, setup.temperature, traffic))
            if index:
                wave.slots = slots
                measured.append(wave)
    finally:
        server.stop()
    return measured


def bench_pair(setup: Setup, runs: int, traffics: list[str], samplings: list[str]) -> list[Wave]:
    """Each server alone, taking turns, ``runs`` times for every traffic; in each run every
    server gets the same requests in the same order, with the same prompt tokens."""
    waves: list[Wave] = []
    for run in range(runs):
        for traffic in traffics:
            plan = traffic_waves(traffic, setup.sizes, run)
            tag = f"{traffic}-{run}"
            ours, answers, slots = run_ours(setup, traffic, plan, tag)
            waves += ours
            prompts = peer_prompts(setup.model, plan, answers)
            reuse = prompt_reuse(plan, prompts)
            sys.stdout.write(f"{setup.model.name} run {run} {traffic}: prompt reuse {reuse}\n")
            for sampling in samplings:
                waves += run_peer(setup, traffic, plan, prompts, sampling, slots, tag)
            _progress(setup.model.name, run, traffic, waves, len(setup.sizes))
    return waves


# llama-server's options that could pay on this traffic, each tried on its own (``--search-peer``).
# With 4 slots (2026-12-01, SmolLM2, production traffic, waves of 4 and 8; ``--parallel 4``) the
# unified pool was the only option that paid at 8, and more slots than 4 need it: without it
# each slot gets only CONTEXT / slots cells, less than one conversation's prompt at 16.
PEER_CANDIDATES: dict[str, str] = {
    "as it comes (host-RAM prompt cache 8 GiB, idle slots cached)": "",
    "no host-RAM prompt cache": "--cache-ram 0",
    "unified KV pool": "-kvu",
    "chunk reuse (256)": "--cache-reuse 256",
    "n-gram speculation (ngram-simple)": "--spec-type ngram-simple",
    "n-gram speculation (ngram-mod)": "--spec-type ngram-mod",
}
# With as many slots as ours at 16 (``--search-peer many``; each slot its own 2,048 cells, or
# one unified pool of as many): the options that were not clearly worse with 4 slots. On
# SmolLM2, production traffic, a wave of 16 (2026-12-01): as it comes 57.9 tokens/s and first
# text 15.3 s (median); unified 39.5 / 43.4 s; ngram-simple 46.7 / 17.2 s; both 28.6 / 39.7 s.
# A unified pool makes every slot's attention span all 16 conversations' cells.
UNIFIED_CANDIDATES: dict[str, str] = {
    "as it comes (a KV cache per slot)": "",
    "unified KV pool": "-kvu",
    "n-gram speculation (ngram-simple)": "--spec-type ngram-simple",
    "unified, n-gram speculation (ngram-simple)": "-kvu --spec-type ngram-simple",
}


def search_peer(setup: Setup, traffic: str, runs: int, sampling: str, candidates: dict[str, str]) -> dict[str, Any]:
    """llama-server alone with each candidate option, taking turns ``runs`` times on the same
    requests (ours answers once, for the free-text turns' history): its aggregate tokens/s and
    median first text per wave."""
    found: dict[str, list[Wave]] = {name: [] for name in [*candidates, "ours, for reference"]}
    for run in range(runs):
        plan = traffic_waves(traffic, setup.sizes, run)
        ours, answers, slots = run_ours(setup, traffic, plan, f"search-{traffic}-{run}")
        found["ours, for reference"] += ours
        prompts = peer_prompts(setup.model, plan, answers)
        for index, (name, options) in enumerate(candidates.items()):
            trying = replace(setup, peer_options=options.split())
            found[name] += run_peer(trying, traffic, plan, prompts, sampling, slots, f"search-{run}-{index}")
    table = {}
    sys.stdout.write(f"\n{setup.model.name}, {traffic} traffic, {sampling} sampling: llama-server's options\n\n")
    for name, waves in found.items():
        per_size = {}
        for size in setup.sizes:
            mine = [w.summary() for w in waves if len(w.streams) == size]
            per_size[size] = {key: statistics.median(m[key] for m in mine) for key in mine[0]}
        options = candidates.get(name, "")
        table[name] = {"options": options, "slots": waves[0].slots, "waves": per_size}
        cells = " | ".join(
            f"{size}: {row['tokens_per_s']:.1f} t/s, first {row['first_text_median_s']:.2f} s"
            for size, row in per_size.items()
        )
        sys.stdout.write(f"| {name} `{options}` | {cells} |\n")
    return table


def prompt_reuse(waves: list[list[Request]], prompts: dict[int, list[int]]) -> dict[str, float]:
    """What a cache of every earlier prompt could spare (issue #22's host-RAM cache): per
    measured request, the tokens to evaluate beyond the shared instructions (what both servers
    keep now) against beyond the longest prefix of any prompt of an earlier wave."""
    instructions = prompts[waves[0][0].number]
    earlier: list[list[int]] = [prompts[r.number] for r in waves[0]]
    beyond_instructions, beyond_best = [], []
    for wave in waves[1:]:
        for request in wave:
            prompt = prompts[request.number]
            beyond_instructions.append(len(prompt) - common_prefix(prompt, instructions))
            beyond_best.append(len(prompt) - max(common_prefix(prompt, other) for other in earlier))
        earlier += [prompts[r.number] for r in wave]
    return {
        "requests": len(beyond_best),
        "prompt_tokens_mean": statistics.fmean(len(prompts[r.number]) for w in waves[1:] for r in w),
        "beyond_instructions_mean": statistics.fmean(beyond_instructions),
        "beyond_any_earlier_prompt_mean": statistics.fmean(beyond_best),
    }


def _progress(name: str, run: int, traffic: str, waves: list[Wave], per_run: int) -> None:
    """One line per server as the run goes: hours of benchmark should show they are moving.
    ``per_run``: the waves each server measures in a run (one per concurrency)."""
    for server in dict.fromkeys(w.server for w in waves):
        latest = [w for w in waves if w.traffic == traffic and w.server == server][-per_run:]
        rates = ", ".join(f"{len(w.streams)}: {w.tokens_per_s:.1f}" for w in latest)
        sys.stdout.write(f"{name} run {run} {traffic} {server}: tokens/s by wave {rates}\n")
    sys.stdout.flush()


def summarize(waves: list[Wave], sizes: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Per traffic, per concurrency: every server's medians over the runs, and ours against each."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for traffic in dict.fromkeys(w.traffic for w in waves):
        rows = []
        for size in sizes:
            row: dict[str, Any] = {"requests": size}
            for server in dict.fromkeys(w.server for w in waves):
                mine = [
                    w.summary() for w in waves if w.server == server and w.traffic == traffic and len(w.streams) == size
                ]
                row[server] = {key: statistics.median(m[key] for m in mine) for key in mine[0]} | {
                    "first_text_max_s": max(m["first_text_max_s"] for m in mine)
                }
            ours = row["ours"]
            row["ratio"] = {
                server: {
                    "tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
                    "first_text_median": theirs["first_text_median_s"] / ours["first_text_median_s"],
                    "first_text_max": theirs["first_text_max_s"] / ours["first_text_max_s"],
                }
                for server, theirs in row.items()
                if server.startswith("llama-server")
            }
            rows.append(row)
        tables[traffic] = rows
    return tables


def print_tables(name: str, tables: dict[str, list[dict[str, Any]]], out: Any = sys.stdout) -> None:
    for traffic, rows in tables.items():
        out.write(f"\n{name}, {traffic} traffic: ours against llama-server (medians of runs; max of slowest)\n\n")
        out.write(
            "| streams | peer sampling | tokens/s ours | peer | × | tokens/answer ours | peer "
            "| first text ours (median / slowest) | peer | × faster (median / slowest) "
            "| per-stream tokens/s ours (median / min) | peer |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
        for row in rows:
            ours = row["ours"]
            for server, ratio in row["ratio"].items():
                peer = row[server]
                sampling = server.split("(")[1].split()[0]
                out.write(
                    f"| {row['requests']} | {sampling} | {ours['tokens_per_s']:.1f} | {peer['tokens_per_s']:.1f} "
                    f"| {ratio['tokens_per_s']:.2f} | {ours['tokens_per_answer']:.0f} | {peer['tokens_per_answer']:.0f} "
                    f"| {ours['first_text_median_s']:.2f} / {ours['first_text_max_s']:.2f} s "
                    f"| {peer['first_text_median_s']:.2f} / {peer['first_text_max_s']:.2f} s "
                    f"| {ratio['first_text_median']:.2f} / {ratio['first_text_max']:.2f} "
                    f"| {ours['stream_tokens_per_s_median']:.1f} / {ours['stream_tokens_per_s_min']:.1f} "
                    f"| {peer['stream_tokens_per_s_median']:.1f} / {peer['stream_tokens_per_s_min']:.1f} |\n"
                )


def draw_chart(results: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    """Tokens/s and first-text time by concurrency, a column per model and traffic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(name, traffic, rows) for name, tables in results.items() for traffic, rows in tables.items()]
    figure, axes = plt.subplots(2, len(columns), figsize=(max(7, 4.5 * len(columns)), 7), squeeze=False)
    for column, (name, traffic, rows) in enumerate(columns):
        sizes = [row["requests"] for row in rows]
        servers = [key for key in rows[0] if key == "ours" or key.startswith("llama-server")]
        for server, style in zip(servers, ("o-", "s--", "^:"), strict=False):
            axes[0][column].plot(sizes, [row[server]["tokens_per_s"] for row in rows], style, label=server)
            axes[1][column].plot(sizes, [row[server]["first_text_median_s"] for row in rows], style, label=server)
        axes[0][column].set_title(f"{name}\n{traffic} traffic", fontsize=9)
        axes[0][column].set_ylabel("aggregate answer tokens/s")
        axes[1][column].set_ylabel("first text, median (s)")
        for axis in axes[:, column]:
            axis.set_xlabel("simultaneous requests")
            axis.set_xticks(sizes)
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    figure.suptitle("Ours against llama-server, each alone on the same cores")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None, help="embedded (default), gemma or a GGUF path")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--traffic", default=",".join(TRAFFICS), help="rotating, production or both")
    parser.add_argument("--peer-sampling", default=",".join(PEER_SAMPLING), help="default, matched or both")
    parser.add_argument(
        "--parallel", type=int, default=None, help="generations at once for both servers (default: ours' auto)"
    )
    parser.add_argument(
        "--peer-options", default=PEER_OPTIONS, help="llama-server's options beyond slots, threads and context"
    )
    parser.add_argument(
        "--search-peer",
        nargs="?",
        const="separate",
        choices=("separate", "many"),
        default=None,
        help="only llama-server, with each of its candidate options in turn (many: with ours' slots at 16)",
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.concurrency.split(",")]
    traffics, samplings = args.traffic.split(","), args.peer_sampling.split(",")
    peer = build_peer()
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = out_dir / f"peer-{stamp}-logs"
    logs.mkdir()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for spec in args.model or ["embedded", "gemma"]:
        model = resolve_model(spec)
        setup = Setup(model, peer, sizes, args.temperature, args.parallel, args.peer_options.split(), logs)
        if args.search_peer:
            candidates = PEER_CANDIDATES if args.search_peer == "separate" else UNIFIED_CANDIDATES
            search = search_peer(setup, traffics[-1], args.runs, samplings[-1], candidates)
            (out_dir / f"peer-search-{model.stem}-{stamp}.json").write_text(json.dumps(search, indent=2))
            continue
        waves = bench_pair(setup, args.runs, traffics, samplings)
        results[model.name] = summarize(waves, sizes)
        raw[model.name] = [asdict(w) for w in waves]
        print_tables(model.name, results[model.name])
    if args.search_peer:
        return 0
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_name(),
        "cores": len(allowed_cores()),
        "peer": str(peer),
        "peer_options": args.peer_options,
        "parallel": args.parallel or "auto (ours settled; the peer got as many slots, per wave in waves)",
        "temperature": args.temperature,
        "runs": args.runs,
        "zipf_exponent": ZIPF_EXPONENT,
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
