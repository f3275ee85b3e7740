"""Print how much of a model fits a GPU, without loading it.

    .venv/bin/python scripts/plan_memory.py --model /models/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf --budget-mb 6144
    .venv/bin/python scripts/plan_memory.py --table      # the README's table, from Mistral's published shapes

Weights come from the GGUF's tensor table (or, with no --model, from Mistral-7B-Instruct-v0.3's
published shapes and llama.cpp's Q4_K_M recipe); the KV cache from the context size and cache
type; a compute-buffer margin is added. See service/engine/memory_plan.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.engine.memory_plan import MIB, MISTRAL_7B_INSTRUCT_V03_Q4_K_M, ModelShape, levers, plan, shape_from_gguf


def table(shape: ModelShape, context: int, batch: int) -> str:
    rows = [
        "| VRAM | KV cache | layers on GPU | GPU memory | host memory (RSS) |",
        "|---|---|---|---|---|",
    ]
    for budget_gb in (4, 6, 8, 12, None):
        for kv_type in ("f16", "q8_0", "q4_0"):
            memory = plan(shape, context, kv_type, None if budget_gb is None else budget_gb * 1024 * MIB, batch)
            vram = "CPU only" if budget_gb is None else f"{budget_gb} GB"
            rows.append(
                f"| {vram} | {kv_type} ({memory.kv_bytes / MIB:,.0f} MiB) | {memory.gpu_layers}/{shape.n_layer} "
                f"| {memory.gpu_bytes / MIB:,.0f} MiB | {memory.host_bytes / MIB:,.0f} MiB |"
            )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: Mistral-7B-Instruct-v0.3 Q4_K_M shapes)")
    parser.add_argument("--budget-mb", type=int, action="append", help="VRAM budget; repeat for several; none: CPU")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default="f16")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--table", action="store_true", help="a Markdown table for 4/6/8/12 GB and CPU")
    args = parser.parse_args()
    shape = shape_from_gguf(args.model) if args.model else MISTRAL_7B_INSTRUCT_V03_Q4_K_M
    if args.table:
        sys.stdout.write(f"{shape.name}, context {args.context}, weights {shape.weight_bytes / MIB:,.0f} MiB\n\n")
        sys.stdout.write(table(shape, args.context, args.batch) + "\n")
        return 0
    for budget in args.budget_mb or [None]:
        memory = plan(shape, args.context, args.kv_type, None if budget is None else budget * MIB, args.batch)
        sys.stdout.write(memory.describe() + "\n")
    for line in levers(shape, args.context, args.kv_type, args.batch):
        sys.stdout.write(f"  {line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
