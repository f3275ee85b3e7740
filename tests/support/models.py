"""Test models made here: the production model's stand-in, scaled down."""

from __future__ import annotations

from pathlib import Path

from tests.support.service_process import ROOT

MODEL_CACHE = ROOT / ".cache" / "models"
STANDIN_ID = "mistral-7b-instruct-v0.3-standin"
# Two layers of width 256: a few MB and fast, with the production vocabulary and template.
STANDIN_LAYERS, STANDIN_WIDTH = 2, 256


def make_test_standin(template: str) -> Path:
    """The production model's tokenizer and chat template (``template``: first or later) on two
    small random layers, made once into the project's cache (never committed, never /tmp)."""
    from service.tools.standin import load_standin, make_standin

    spec = load_standin(STANDIN_ID).scaled(STANDIN_LAYERS, STANDIN_WIDTH)
    path = MODEL_CACHE / f"{STANDIN_ID}-L{STANDIN_LAYERS}-W{STANDIN_WIDTH}-{template}-Q4_K_M.gguf"
    if not path.exists():
        make_standin(spec, path, template)
    return path
