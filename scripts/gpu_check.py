"""The measurements of the GPU check (issue #15), run by scripts/gpu_check.sh; one JSON report.

    .venv/bin/python -m scripts.gpu_check --model standin.gguf --out report.json [--cpu]

- ceiling: the raw decode loop with every layer on the GPU; our engine with the grammar, alone:
  tokens/s, time to the first token, prompt tokens/s;
- the service over HTTP at 1, 4, 8, 16 and 32 simultaneous requests, on the rotating mix of
  base-info requests and on the production-like traffic (issue #22: Zipf-drawn combinations, a
  third free-text turns of earlier sessions, tests/support/traffic): aggregate tokens/s,
  answers per minute, each first ``challenge`` event against a lone request's; beside each,
  llama-batched-bench's decode speed on the same file with as many sequences sharing one
  prompt of our prompt's length (``-pps``: the ceiling for batched decoding on this card);
- LEAFRESH_GPU_LAYERS=auto under three VRAM budgets and each KV cache type: layers chosen and
  GPU memory measured with nvidia-smi against the memory plan.
Goals (GPU): every first event within 2x a lone request's; aggregate >= 0.8x batched-bench;
measured memory <= budget and within 10% of the plan. ``--cpu`` is the rehearsal: no GPU, the
same steps, memory planned but not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from scripts.bench import bench_ceiling, bench_service, engine_runs, http_wave
from service.engine.memory_plan import MIB, plan, shape_from_gguf
from tests.support.queries import rotating_queries
from tests.support.traffic import production_waves

ALL_LAYERS = 999
# A base-info prompt and a typical answer, in tokens (README: Performance).
PROMPT_TOKENS = 896
ANSWER_TOKENS = 400
BUDGETS_MB = (4096, 6144, 8192)
KV_TYPES = ("f16", "q8_0", "q4_0")


def engine_figures(model: Path, gpu_layers: int, runs: int) -> dict[str, Any]:
    ceiling = bench_ceiling(model, runs, 0.7, gpu_layers)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = pool.submit(_engine_rows, model, runs, gpu_layers).result()
    cold, warm = rows[0], rows[1:]
    return {
        "ceiling_tokens_per_s": statistics.median(ceiling),
        "engine_tokens_per_s": statistics.median(r["tokens_per_s"] for r in warm),
        "engine_ratio_to_ceiling": statistics.median(r["tokens_per_s"] for r in warm) / statistics.median(ceiling),
        "first_token_s_cold": cold["prompt_s"],
        "first_token_s_cached_prefix": statistics.median(r["prompt_s"] for r in warm),
        "prompt_tokens": cold["prompt_tokens"],
        "prompt_tokens_per_s": cold["prompt_tokens"] / cold["prompt_s"],
        "rows": rows,
    }


def _engine_rows(model: Path, runs: int, gpu_layers: int) -> list[dict[str, Any]]:
    return asyncio.run(engine_runs(model, runs, 0.7, jump_forward=True, gpu_layers=gpu_layers))


def batched_bench(binary: Path | None, model: Path, gpu_layers: int, sizes: list[int]) -> dict[int, float]:
    """llama-batched-bench's decode tokens/s per number of sequences (empty without the tool)."""
    if binary is None or not binary.exists():
        return {}
    command = [
        str(binary),
        *("-m", str(model), "-ngl", str(gpu_layers), "-c", str(PROMPT_TOKENS + ANSWER_TOKENS * max(sizes) + 1024)),
        # One unified pool, as our engine keeps: without it this llama.cpp splits the context into
        # one stream per sequence, each too small for the prompt at 8 (the rehearsal failed so).
        *("-kvu", "-b", "2048", "-ub", "512", "-pps", "-npp", str(PROMPT_TOKENS), "-ntg", str(ANSWER_TOKENS)),
        *("-npl", ",".join(map(str, sizes)), "--output-format", "jsonl"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    speeds = {}
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("{") and '"speed_tg"' in line:
            row = json.loads(line)
            speeds[int(row["pl"])] = float(row["speed_tg"])
    return speeds


def http_figures(model: Path, gpu_layers: int, sizes: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Waves of each traffic against one service running every wave at once."""
    service = bench_service(
        model,
        {
            "LEAFRESH_GPU_LAYERS": str(gpu_layers),
            "LEAFRESH_PARALLEL": str(max(sizes)),
            "LEAFRESH_CONTEXT_SIZE": str(1024 * max(sizes) + 4096),
        },
    )
    queries = iter(rotating_queries(2 + 2 + sum(sizes)))
    try:
        asyncio.run(http_wave(service.base_url, [next(queries)]))  # warm
        lone = statistics.median(
            asyncio.run(http_wave(service.base_url, [next(queries)]))["first_challenge_s"][0] for _ in range(2)
        )
        rotating = [asyncio.run(http_wave(service.base_url, [next(queries) for _ in range(size)])) for size in sizes]
        prelude, *waves = production_waves(sizes, seed=0)
        asyncio.run(http_wave(service.base_url, prelude))
        production = [asyncio.run(http_wave(service.base_url, wave)) for wave in waves]
    finally:
        service.stop()
    for wave in rotating + production:
        wave["lone_first_challenge_s"] = lone
        wave["worst_first_vs_lone"] = max(wave["first_challenge_s"]) / lone
    return {"rotating": rotating, "production": production}


def memory_figures(model: Path, context: int, gpu: bool, stop_at: float) -> list[dict[str, Any]]:
    """Per budget and KV type: the plan, and with a GPU the layers the service chose and the
    memory nvidia-smi shows for its process once it has answered."""
    shape = shape_from_gguf(model)
    rows = []
    for budget in BUDGETS_MB:
        for kv in KV_TYPES:
            planned = plan(shape, context, kv, budget * MIB)
            row: dict[str, Any] = {
                "budget_mb": budget,
                "kv_cache_type": kv,
                "planned_layers": planned.gpu_layers,
                "planned_gpu_mb": planned.gpu_bytes / MIB,
            }
            if gpu and time.time() > stop_at - 30:
                row["skipped"] = "out of time"  # one service start takes about 10 s
            elif gpu:
                row.update(_measured_memory(model, context, budget, kv))
                row["within_budget"] = row["measured_gpu_mb"] <= budget
                row["vs_plan"] = row["measured_gpu_mb"] / row["planned_gpu_mb"]
            rows.append(row)
    return rows


def _measured_memory(model: Path, context: int, budget: int, kv: str) -> dict[str, Any]:
    service = bench_service(
        model,
        {
            "LEAFRESH_GPU_LAYERS": "auto",
            "LEAFRESH_VRAM_BUDGET_MB": str(budget),
            "LEAFRESH_KV_CACHE_TYPE": kv,
            "LEAFRESH_CONTEXT_SIZE": str(context),
            "LEAFRESH_LOG_LEVEL": "INFO",
        },
        log_path=Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-check-memory-{budget}-{kv}.log",
    )
    try:
        # /ready means loaded and warmed with one answer: the compute buffers are allocated.
        used = _gpu_memory_of(service.process.pid)
        layers = _layers_from_log(service.log())
    finally:
        service.stop()
    return {"measured_gpu_mb": used, "layers": layers}


def _gpu_memory_of(pid: int) -> float:
    done = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        found, used = (part.strip() for part in line.split(","))
        if int(found) == pid:
            return float(used)
    return float("nan")


def _layers_from_log(log: str) -> int | None:
    """The layers the engine put on the GPU, from its "model loaded" line."""
    found = re.search(r"gpu layers: (\d+)", log)
    return int(found.group(1)) if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batched-bench", type=Path, default=None)
    parser.add_argument("--sizes", default="1,4,8,16,32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="the rehearsal: no GPU")
    parser.add_argument(
        "--stop-at", type=float, default=float("inf"), help="unix time by which to stop (skipped stages say so)"
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    gpu_layers = 0 if args.cpu else ALL_LAYERS
    report: dict[str, Any] = {"model": str(args.model), "gpu": not args.cpu, "stages_s": {}}
    if shutil.which("nvidia-smi"):
        report["card"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    stages = (
        ("engine", lambda: engine_figures(args.model, gpu_layers, args.runs)),
        ("batched_bench_tokens_per_s", lambda: batched_bench(args.batched_bench, args.model, gpu_layers, sizes)),
        ("http", lambda: http_figures(args.model, gpu_layers, sizes)),
        ("memory", lambda: memory_figures(args.model, 8192, not args.cpu, args.stop_at)),
    )
    for name, stage in stages:
        if time.time() > args.stop_at:
            report[name] = {"skipped": "out of time"}
            continue
        started = time.perf_counter()
        try:
            report[name] = stage()
        except Exception as exc:  # noqa: BLE001 - one failed stage must not lose the others' figures
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["stages_s"][name] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        sys.stderr.write(f"gpu_check: {name} done in {report['stages_s'][name]} s\n")
    report["goals"] = goals(report)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    sys.stdout.write(json.dumps(report["goals"], indent=2) + "\n")
    return 0


def goals(report: dict[str, Any]) -> dict[str, Any]:
    traffics = report.get("http")
    batched = report.get("batched_bench_tokens_per_s") or {}
    result: dict[str, Any] = {}
    for traffic, waves in traffics.items() if isinstance(traffics, dict) and "error" not in traffics else ():
        result[f"first_event_within_2x_lone_{traffic}"] = {
            w["requests"]: round(w["worst_first_vs_lone"], 2) for w in waves
        }
        if isinstance(batched, dict) and batched:
            result[f"aggregate_vs_batched_bench_{traffic}"] = {
                w["requests"]: round(w["tokens_per_s"] / batched[w["requests"]], 2)
                for w in waves
                if w["requests"] in batched
            }
    memory = report.get("memory")
    measured = [row for row in memory if "vs_plan" in row] if isinstance(memory, list) else []
    if measured:
        result["memory_within_budget"] = all(row["within_budget"] for row in measured)
        result["memory_vs_plan"] = [round(row["vs_plan"], 2) for row in measured]
    return result


if __name__ == "__main__":
    raise SystemExit(main())
