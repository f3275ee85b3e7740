"""Quantizing with llama.cpp's own quantizer, on a model the test writes itself."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.engine import GenerationRequest
from service.engine.llama import LlamaConfig, LlamaCppEngine
from service.engine.memory_plan import gguf_file_type
from service.recommend import answer
from service.tools.quantize import QuantizeError, quantize
from tests.support.service_process import ROOT
from tests.tiny_gguf import write_tiny_llama


@pytest.fixture(scope="module")
def f16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf")


def test_f16_becomes_q4_k_m_that_the_engine_loads_and_runs(f16_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "tiny-Q4_K_M.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "service.tools.commands", "quantize", str(f16_model), str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert gguf_file_type(target) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert target.stat().st_size < f16_model.stat().st_size / 2
    assert not target.with_name(target.name + ".partial").exists()

    engine = LlamaCppEngine(LlamaConfig(target, context_size=1024), answer.grammars())

    async def run() -> str:
        request = GenerationRequest(
            prompt=tuple(engine.prompt_tokens(())), grammar=answer.GRAMMAR_NAME, max_tokens=24, temperature=0.7, seed=3
        )
        generation = engine.submit(request)
        text = "".join([piece async for piece in generation])
        await engine.aclose()
        return text

    # Random weights write random text, but the grammar still shapes it.
    assert asyncio.run(run()).startswith('{"recommend":"')


def test_f32_input_is_accepted(tmp_path: Path) -> None:
    source = write_tiny_llama(tmp_path / "tiny-f32.gguf", dtype=np.float32, n_layer=1)
    quantize(source, tmp_path / "out.gguf", "Q8_0")
    assert gguf_file_type(tmp_path / "out.gguf") == 7


def test_an_already_quantized_input_is_refused_unless_asked(f16_model: Path, tmp_path: Path) -> None:
    q8 = tmp_path / "q8.gguf"
    quantize(f16_model, q8, "Q8_0")
    quantize(q8, tmp_path / "from-q8.gguf", "Q4_K_M")  # Q8_0 is a fine source
    assert gguf_file_type(tmp_path / "from-q8.gguf") == 15
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize(tmp_path / "from-q8.gguf", tmp_path / "twice.gguf", "Q2_K")
    quantize(tmp_path / "from-q8.gguf", tmp_path / "twice.gguf", "Q2_K", requantize=True)
    assert gguf_file_type(tmp_path / "twice.gguf") == 10


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="모델 파일을 찾을 수 없습니다"):
        quantize(tmp_path / "missing.gguf", tmp_path / "out.gguf")
    with pytest.raises(QuantizeError, match="unknown type"):
        quantize(tmp_path / "missing.gguf", tmp_path / "out.gguf", "Q9_X")
