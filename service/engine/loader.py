"""Builds the configured engine. The only place that imports the llama.cpp engine, so code
that only needs the interface (routes, most tests) never loads llama_cpp."""

from __future__ import annotations

from service.engine.base import Engine
from service.grammar import CHALLENGE_GRAMMAR_PATH
from service.model_files import check_model_file, resolve_model_path
from service.settings import Settings


def load_engine(settings: Settings) -> Engine:
    path = resolve_model_path(settings.model_path)
    check_model_file(path)
    from service.engine.llama import LlamaConfig, LlamaCppEngine

    config = LlamaConfig(
        model_path=path,
        context_size=settings.context_size,
        batch_size=settings.batch_size,
        threads=settings.threads,
        gpu_layers=settings.gpu_layers,
    )
    return LlamaCppEngine(config, {"challenge": CHALLENGE_GRAMMAR_PATH.read_text(encoding="utf-8")})
