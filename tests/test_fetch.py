"""leafresh-fetch-model against a stand-in hub on loopback: the real huggingface_hub code
path, every failure a user can hit, and never the internet."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.tools.modelhub import load_catalog
from tests.hub_standin import GOOD_TOKEN, Hub, HubFile, RunningHub
from tests.support.service_process import ROOT

CONTENT = b"GGUF" + os.urandom(300_000)


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    running = RunningHub(
        Hub(
            files={
                "acme/tiny-GGUF/tiny.gguf": HubFile(CONTENT),
                "acme/gated-GGUF/model.gguf": HubFile(CONTENT, gated=True),
                "acme/huge-GGUF/model.gguf": HubFile(CONTENT, advertised_size=10**16),
                "acme/tampered-GGUF/model.gguf": HubFile(CONTENT, advertised_sha256="0" * 64),
            }
        )
    )
    yield running
    running.close()


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    # Under the home directory: the script refuses /tmp, where pytest's tmp_path is, and CI may
    # clone the project itself under /tmp.
    path = Path.home() / ".cache" / "leafresh-test-downloads" / uuid.uuid4().hex
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fetch(model: str, endpoint: str, cache_dir: Path, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(cache_dir / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "service.tools.commands", "fetch-model", model, "--cache-dir", str(cache_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("leafresh-fetch-model: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_download_lands_verified_in_our_cache(hub: RunningHub, cache_dir: Path) -> None:
    result = fetch("acme/tiny-GGUF/tiny.gguf", hub.url, cache_dir)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.read_bytes() == CONTENT and cache_dir in path.parents
    assert f"sha256 {hashlib.sha256(CONTENT).hexdigest()}" in result.stdout
    # A second run finds the file and does not download it again.
    gets_before = sum(1 for method, _, _ in hub.hub.requests if method == "GET")
    assert fetch("acme/tiny-GGUF/tiny.gguf", hub.url, cache_dir).returncode == 0
    assert sum(1 for method, _, _ in hub.hub.requests if method == "GET") == gets_before


def test_the_token_is_sent_but_never_printed(hub: RunningHub, cache_dir: Path) -> None:
    result = fetch("acme/tiny-GGUF/tiny.gguf", hub.url, cache_dir, token=GOOD_TOKEN)
    assert result.returncode == 0, result.stderr
    assert ("GET", "/acme/tiny-GGUF/resolve/main/tiny.gguf", f"Bearer {GOOD_TOKEN}") in hub.hub.requests
    assert GOOD_TOKEN not in result.stdout + result.stderr


def test_a_gated_repository_says_where_to_accept_the_terms(hub: RunningHub, cache_dir: Path) -> None:
    line = one_line(fetch("acme/gated-GGUF/model.gguf", hub.url, cache_dir, token=GOOD_TOKEN))
    assert "https://huggingface.co/acme/gated-GGUF" in line and "약관" in line


def test_a_bad_token_is_named_without_being_shown(hub: RunningHub, cache_dir: Path) -> None:
    result = fetch("acme/tiny-GGUF/tiny.gguf", hub.url, cache_dir, token="hf_wrong_secret")
    assert "HF_TOKEN이 유효하지 않습니다" in one_line(result)
    assert "hf_wrong_secret" not in result.stdout + result.stderr


def test_missing_repository_and_missing_file(hub: RunningHub, cache_dir: Path) -> None:
    assert "저장소를 찾을 수 없습니다" in one_line(fetch("acme/nothing-here/model.gguf", hub.url, cache_dir))
    assert "저장소에 파일이 없습니다: other.gguf" in one_line(fetch("acme/tiny-GGUF/other.gguf", hub.url, cache_dir))


def test_no_network_is_one_line(cache_dir: Path) -> None:
    line = one_line(fetch("acme/tiny-GGUF/tiny.gguf", "http://127.0.0.1:9", cache_dir))
    assert "연결할 수 없습니다" in line and "LEAFRESH_MODEL_PATH" in line


def test_too_little_disk_is_found_before_downloading(hub: RunningHub, cache_dir: Path) -> None:
    assert "디스크 공간이 부족합니다" in one_line(fetch("acme/huge-GGUF/model.gguf", hub.url, cache_dir))
    assert not any(method == "GET" for method, path, _ in hub.hub.requests if "huge" in path)


def test_a_checksum_mismatch_deletes_the_file(hub: RunningHub, cache_dir: Path) -> None:
    assert "체크섬이 맞지 않습니다" in one_line(fetch("acme/tampered-GGUF/model.gguf", hub.url, cache_dir))
    assert not [p for p in cache_dir.rglob("model.gguf") if p.exists()]


def test_tmp_is_refused_as_a_cache(hub: RunningHub) -> None:
    assert "/tmp" in one_line(fetch("acme/tiny-GGUF/tiny.gguf", hub.url, Path("/tmp/leafresh-models")))


def test_the_catalog_lists_the_production_and_test_models() -> None:
    catalog = load_catalog()
    production = catalog["mistral-7b-instruct-v0.3-q4_k_m"]
    assert production.file.endswith("Q4_K_M.gguf") and production.license and production.chat_template
    assert catalog["gemma-3-270m-q4_k_m"].sha256.startswith("a5fd3b62")
    assert catalog["smollm2-135m-instruct-q4_1"].size_bytes == 98362432
