"""Builds the configured engine. The only place that imports the llama.cpp engine, so code
that only needs the interface (routes, most tests) never loads llama_cpp."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from service.engine.base import Engine
from service.engine.memory_plan import MIB, levers, plan, shape_from_gguf
from service.engine.model_files import check_model_file, resolve_model_path
from service.settings import Settings

logger = logging.getLogger(__name__)


def free_gpu_memory_bytes() -> int | None:
    """Free memory of the first NVIDIA GPU as nvidia-smi reports it, or None without one."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        result = subprocess.run(
            [binary, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return int(result.stdout.splitlines()[0].strip()) * MIB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def choose_gpu_layers(settings: Settings, model: Path, offload_supported: bool) -> int:
    """The number of layers to offload. ``auto`` plans from the GGUF's tensor sizes, the KV
    cache and a compute margin against LEAFRESH_VRAM_BUDGET_MB or the GPU's free memory; a
    build or host without a GPU runs on the CPU with one warning, never a crash."""
    wanted = settings.gpu_layers
    if wanted == 0:
        return 0
    if not offload_supported:
        logger.warning(
            "this llama-cpp-python build has no GPU support: running on the CPU (LEAFRESH_GPU_LAYERS ignored)"
        )
        return 0
    if wanted != "auto":
        return int(wanted)
    budget = settings.vram_budget_mb * MIB if settings.vram_budget_mb else free_gpu_memory_bytes()
    if budget is None:
        logger.warning("LEAFRESH_GPU_LAYERS=auto but no GPU memory was found: running on the CPU")
        return 0
    memory = plan(
        shape_from_gguf(model),
        settings.context_size,
        settings.kv_cache_type,
        budget,
        settings.batch_size,
        settings.prompt_cache_mib * MIB,
    )
    logger.info("memory plan: %s", memory.describe())
    for line in levers(memory.shape, settings.context_size, settings.kv_cache_type, settings.batch_size):
        logger.info("memory plan lever: %s", line)
    return memory.gpu_layers


def load_engine(settings: Settings, grammars: Mapping[str, str]) -> Engine:
    """The engine for ``settings``, compiling ``grammars`` (GBNF text by name) at start-up: the
    engine knows no answer format of its own (issue #23)."""
    path = resolve_model_path(settings.model_path)
    check_model_file(path)
    from service.engine.llama import LlamaConfig, LlamaCppEngine, gpu_offload_supported

    config = LlamaConfig(
        model_path=path,
        context_size=settings.context_size,
        batch_size=settings.batch_size,
        threads=settings.threads,
        thread_policy=settings.thread_policy,
        gpu_layers=choose_gpu_layers(settings, path, gpu_offload_supported()),
        kv_cache_type=settings.kv_cache_type,
        flash_attn=settings.flash_attn,
        parallel=settings.max_parallel,
        prefill_tokens=settings.prefill_tokens,
        jump_forward=settings.jump_forward,
        prompt_cache_mib=settings.prompt_cache_mib,
    )
    return LlamaCppEngine(config, dict(grammars))
