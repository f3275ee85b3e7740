"""Turning a full-precision GGUF into Q4_K_M (or another type) with llama.cpp's own quantizer,
as llama-cpp-python exposes it (llama_model_quantize). Used by leafresh-quantize and leafresh-standin."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from service.engine.memory_plan import gguf_file_type
from service.engine.model_files import ModelFileError, check_model_file

# general.file_type values of inputs worth quantizing: F32, F16, Q8_0, BF16.
UNQUANTIZED_FILE_TYPES = {0: "F32", 1: "F16", 7: "Q8_0", 32: "BF16"}
TARGETS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "Q4_0", "Q3_K_M", "Q2_K")


class QuantizeError(Exception):
    """``str()`` is the one line to show."""


def quantize(
    source: Path, target: Path, kind: str = "Q4_K_M", threads: int | None = None, requantize: bool = False
) -> None:
    if kind not in TARGETS:
        raise QuantizeError(f"unknown type {kind}: choose one of {', '.join(TARGETS)}")
    try:
        check_model_file(source)
    except ModelFileError as exc:
        raise QuantizeError(str(exc)) from exc
    file_type = gguf_file_type(source)
    if file_type not in UNQUANTIZED_FILE_TYPES and not requantize:
        raise QuantizeError(
            f"{source} is already quantized (general.file_type={file_type}); quantizing it again loses quality — "
            "start from the F16/BF16/F32/Q8_0 GGUF, or pass --requantize to do it anyway"
        )
    if target.exists() and target.resolve() == source.resolve():
        raise QuantizeError("the output must be a different file from the input")
    target.parent.mkdir(parents=True, exist_ok=True)

    import llama_cpp

    from service.engine.llama import _init_backend

    _init_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = threads or os.cpu_count() or 1
    # llama.cpp counts Q8_0 as quantized; it is a fine source for smaller types, so allow it.
    params.allow_requantize = requantize or file_type == 7
    partial = target.with_name(target.name + ".partial")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if status != 0:
        partial.unlink(missing_ok=True)
        raise QuantizeError(
            f"llama.cpp could not quantize {source} (status {status}); run with LEAFRESH_LOG_LEVEL=DEBUG for its log"
        )
    # Only a finished file gets the real name: a crash never leaves a half-written model behind.
    partial.replace(target)
