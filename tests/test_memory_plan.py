"""Fitting the GPU you have: the memory plan and how the loader uses it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.engine import loader
from service.engine.memory_plan import MIB, MISTRAL_7B_INSTRUCT_V03_Q4_K_M, plan, shape_from_gguf
from service.settings import Settings, describe_settings_error

MISTRAL = MISTRAL_7B_INSTRUCT_V03_Q4_K_M


def test_published_shapes_reproduce_the_size_of_the_q4_k_m_file() -> None:
    # Mistral-7B-Instruct-v0.3 Q4_K_M files are 4.37 GB.
    assert 4.33e9 < MISTRAL.weight_bytes < 4.41e9
    assert MISTRAL.kv_bytes_per_layer(8192, "f16") * MISTRAL.n_layer == 1024 * MIB


def test_more_vram_never_means_fewer_layers_and_a_smaller_cache_means_more() -> None:
    layers = [plan(MISTRAL, 8192, "f16", mb * MIB).gpu_layers for mb in range(0, 8193, 256)]
    assert layers == sorted(layers) and layers[0] == 0 and layers[-1] == MISTRAL.n_layer
    f16 = plan(MISTRAL, 8192, "f16", 4096 * MIB)
    q8 = plan(MISTRAL, 8192, "q8_0", 4096 * MIB)
    q4 = plan(MISTRAL, 8192, "q4_0", 4096 * MIB)
    assert f16.gpu_layers < q8.gpu_layers < q4.gpu_layers < MISTRAL.n_layer
    assert all(p.gpu_bytes <= 4096 * MIB for p in (f16, q8, q4))


def test_without_a_gpu_everything_is_on_the_host() -> None:
    cpu = plan(MISTRAL, 8192, "f16", None)
    assert (cpu.gpu_layers, cpu.gpu_bytes) == (0, 0)
    assert cpu.host_bytes > MISTRAL.weight_bytes + cpu.kv_bytes
    assert "0/32 layers" in cpu.describe() and "no GPU" in cpu.describe()


def test_a_gguf_is_planned_from_its_own_tensor_table(smollm_path: Path) -> None:
    shape = shape_from_gguf(smollm_path)
    assert shape.n_layer == 30 and shape.n_vocab == 49152
    assert 0.95 < shape.weight_bytes / smollm_path.stat().st_size <= 1.0
    full = plan(shape, 2048, "f16", 10_000 * MIB)
    assert full.gpu_layers == 30


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def test_a_cpu_only_build_runs_on_the_cpu_with_one_warning(caplog: pytest.LogCaptureFixture, smollm_path: Path) -> None:
    with caplog.at_level(logging.WARNING, logger="service"):
        assert loader.choose_gpu_layers(settings(gpu_layers=-1), smollm_path, offload_supported=False) == 0
    assert len(caplog.records) == 1 and "CPU" in caplog.records[0].getMessage()


def test_auto_without_gpu_memory_falls_back_to_the_cpu(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, smollm_path: Path
) -> None:
    monkeypatch.setattr(loader, "free_gpu_memory_bytes", lambda: None)
    with caplog.at_level(logging.WARNING, logger="service"):
        assert loader.choose_gpu_layers(settings(gpu_layers="auto"), smollm_path, offload_supported=True) == 0
    assert "no GPU memory" in caplog.text


def test_auto_plans_against_the_budget_and_logs_the_plan(caplog: pytest.LogCaptureFixture, smollm_path: Path) -> None:
    chosen = settings(gpu_layers="auto", vram_budget_mb=400, context_size=8192)
    with caplog.at_level(logging.INFO, logger="service"):
        layers = loader.choose_gpu_layers(chosen, smollm_path, offload_supported=True)
    expected = plan(shape_from_gguf(smollm_path), 8192, "f16", 400 * MIB).gpu_layers
    assert layers == expected and 0 < layers < 30
    assert "memory plan:" in caplog.text and f"{layers}/30 layers" in caplog.text
    assert "LEAFRESH_KV_CACHE_TYPE=q8_0: KV cache +" in caplog.text
    assert loader.choose_gpu_layers(settings(gpu_layers=12), smollm_path, offload_supported=True) == 12


def test_a_quantized_cache_without_flash_attention_is_refused_in_one_line() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(kv_cache_type="q8_0", flash_attn="off")
    line = describe_settings_error(caught.value)
    assert "LEAFRESH_KV_CACHE_TYPE" in line and "\n" not in line
    with pytest.raises(ValidationError):
        settings(gpu_layers=-2)
