"""Quantize a GGUF with llama.cpp's own quantizer.

    .venv/bin/python scripts/quantize.py model-f16.gguf model-Q4_K_M.gguf            # Q4_K_M
    .venv/bin/python scripts/quantize.py model-f16.gguf model-Q5_K_M.gguf --type Q5_K_M

The input should be F16, BF16, F32 or Q8_0; an already-quantized input is refused unless
--requantize is given. See the README ("Your own fine-tuned model") for the whole path from a
fine-tuned Hugging Face checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.tools.quantize import TARGETS, QuantizeError, quantize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        sys.stderr.write(f"quantize: {exc}\n")
        return 2
    size = args.target.stat().st_size
    sys.stdout.write(f"{args.target} ({args.type}, {size / 2**20:,.1f} MiB) in {time.perf_counter() - started:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
