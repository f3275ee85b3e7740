"""Start-up failures are one clear line naming what to fix: never a stack trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.engine.model_files import ModelFileError, check_model_file
from service.recommend.catalog import CATEGORIES
from service.recommend.prompts import free_text_request
from tests.support.service_process import ROOT


def start(env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PORT": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    # Progress lines (INFO) may come before; the failure itself is exactly one line.
    problems = [line for line in output.splitlines() if line.strip() and " INFO " not in line]
    assert len(problems) == 1, problems
    assert problems[0].startswith("leafresh: ")
    return problems[0]


def test_missing_model_names_the_absolute_path_once_and_the_fix(tmp_path: Path) -> None:
    line = one_line(start({"LEAFRESH_MODEL_PATH": "models/nope.gguf"}, cwd=tmp_path))
    expected = str(tmp_path / "models" / "nope.gguf")
    assert f"모델 파일을 찾을 수 없습니다: {expected} " in line
    assert line.count("models/nope.gguf") == 1  # no doubled path
    assert "LEAFRESH_MODEL_PATH" in line


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    assert "파일이 아닙니다" in one_line(start({"LEAFRESH_MODEL_PATH": str(tmp_path)}))


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 safetensors or zip")
    assert f"GGUF 모델 파일이 아닙니다: {path}" in one_line(start({"LEAFRESH_MODEL_PATH": str(path)}))


def test_a_broken_gguf_is_one_line_too(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    line = one_line(start({"LEAFRESH_MODEL_PATH": str(path)}))
    assert f"모델을 불러오지 못했습니다: {path}" in line


def test_an_unreadable_model_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root in CI, where chmod cannot make a file unreadable: fail the open instead.
    path = tmp_path / "locked.gguf"
    path.write_bytes(b"GGUF")

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ModelFileError, match=f"모델 파일을 읽을 수 없습니다: {path} \\(Permission denied\\)"):
        check_model_file(path)


def test_a_bad_setting_is_named() -> None:
    line = one_line(start({"LEAFRESH_TEMPERATURE": "hot"}))
    assert "LEAFRESH_TEMPERATURE" in line


def test_a_context_too_small_for_the_longest_answer_is_refused() -> None:
    line = one_line(start({"LEAFRESH_CONTEXT_SIZE": "1024"}))
    assert "LEAFRESH_CONTEXT_SIZE" in line and "이상으로" in line


def test_an_unreachable_session_store_is_one_line_without_its_password() -> None:
    line = one_line(start({"LEAFRESH_SESSION_URL": "redis://leafresh:s3cret@127.0.0.1:1/0"}))
    assert "Redis" in line and "LEAFRESH_SESSION_URL" in line
    assert "s3cret" not in line and "//***@127.0.0.1:1/0" in line


def test_the_context_check_counts_the_costliest_characters_a_message_may_hold(standin_path: Path) -> None:
    # Regression (#13): the check assumed a 3-byte syllable was the costliest character. On
    # Mistral's vocabulary (the stand-in's) 뷁 is 3 byte tokens and an emoji 4, so a message the
    # check promised to fit could be refused with 422.
    import asyncio

    from service.engine.llama import LlamaConfig, LlamaCppEngine
    from service.recommend import answer
    from service.recommend.serving import RecommendationService
    from service.recommend.sessions import MemorySessionStore
    from service.settings import Settings
    from service.startup import StartupError

    settings = Settings(_env_file=None, max_message_chars=400)
    grammars = answer.grammars()

    def service(context: int) -> RecommendationService:
        engine = LlamaCppEngine(LlamaConfig(standin_path, context_size=context, parallel=1), grammars)
        return RecommendationService(engine, settings, MemorySessionStore(10, 5, 60))

    too_small = service(1024)
    with pytest.raises(StartupError) as refused:
        too_small.check_context_fits()
    asyncio.run(too_small.engine.aclose())
    needed = int(str(refused.value).split("LEAFRESH_CONTEXT_SIZE를 ")[1].split(" ")[0])
    fitted = service(needed)
    try:
        assert fitted.engine.count_text_tokens("\U0001f977" * 10) > fitted.engine.count_text_tokens("뷁" * 10)
        for worst in ("뷁", "\U0001f977"):
            fitted.jobs.fit_history(
                [], free_text_request("바닷가", "재택근무", CATEGORIES[0], worst * 400)
            )  # never PromptTooLong
    finally:
        asyncio.run(fitted.engine.aclose())
