"""Make a stand-in for a catalog model offline: its architecture, tokenizer and chat template,
random weights, quantized with our own quantizer (see service/tools/standin.py).

    .venv/bin/python scripts/standin_model.py                                   # full size, ~4.37 GB
    .venv/bin/python scripts/standin_model.py --layers 2 --width 256 --out x.gguf  # a few MB, for tests
    .venv/bin/python scripts/standin_model.py --template first                  # the older v0.3 template

At full size the F16 intermediate needs about 15 GB of free disk beside the output (checked
first) and is removed once quantized. The last line printed is the file's path, ready for
LEAFRESH_MODEL_PATH.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.tools.modelhub import DEFAULT_MODEL_DIR
from service.tools.quantize import QuantizeError
from service.tools.standin import StandinError, compare, load_standin, make_standin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        sys.stderr.write(f"standin_model: {exc}\n")
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
