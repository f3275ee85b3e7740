"""End to end: the real app as a process, the real engine on real tiny models, read the way
the Spring relay and a browser read it (httpx-sse, a real SSE client)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from service.recommend.answer import Answer
from tests.support.queries import BASE, SSE
from tests.support.queries import QUERY as BASE_INFO_QUERY
from tests.support.service_process import ROOT, ServiceProcess
from tests.support.sse import TIMEOUT, check_success_stream, relay_read

QUERY = {**BASE_INFO_QUERY, "sessionId": "e2e-1"}


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    # A short ping interval, so keep-alive comments show up during one generation.
    return server_factory("smollm", LEAFRESH_PING_INTERVAL_S="0.2")


def test_spring_relay_gets_pieces_that_add_up_to_one_close(server: ServiceProcess) -> None:
    response, events = relay_read(f"{server.base_url}{BASE}/base-info", params=QUERY, headers=SSE)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    answer = check_success_stream(events)
    assert {(c.category, c.label) for c in answer.challenges} == {("VEGAN", "비건")}


def test_keep_alive_comments_flow_while_the_model_writes(server: ServiceProcess) -> None:
    url = f"{server.base_url}{BASE}/base-info"
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", url, params=QUERY, headers=SSE) as response:
        raw = "".join(response.iter_text())
    assert ": ping" in raw.split("\n")
    assert "data: data:" not in raw
    assert raw.rstrip("\n").split("\n\n")[-1].startswith("event: close\ndata: ")


def test_readme_curl_example_works_as_written(server: ServiceProcess) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"curl -N '(http://localhost:8000/ai/chatbot/recommendation/base-info\?[^']+)'", readme)
    assert match, "README must show a curl -N call to base-info"
    url = match.group(1).replace("http://localhost:8000", server.base_url)
    assert re.fullmatch(r"[\x21-\x7e]+", url), "the README's URL must be percent-encoded ASCII"
    _, events = relay_read(url)
    check_success_stream(events)


def test_twice_encoded_korean_and_english_codes(server: ServiceProcess) -> None:
    twice = f"location={quote(quote('해안가'))}&workType={quote(quote('재택근무'))}&category=DIGITAL_CARBON"
    _, events = relay_read(f"{server.base_url}{BASE}/base-info?{twice}", headers=SSE)
    answer = check_success_stream(events)
    assert {(c.category, c.label) for c in answer.challenges} == {("DIGITAL_CARBON", "디지털 탄소")}


def test_post_json_answer_for_older_backends(server: ServiceProcess) -> None:
    body = {**QUERY, "category": "탄소 발자국"}
    response = httpx.post(f"{server.base_url}{BASE}/base-info", json=body, timeout=TIMEOUT)
    assert response.status_code == 200
    payload = response.json()
    assert payload["message"] == "사용자 기본 정보 키워드 선택을 기반으로 챌린지를 추천합니다."
    answer = Answer.model_validate(payload["data"])
    assert {c.category for c in answer.challenges} == {"CARBON_FOOTPRINT"}


def test_invalid_input_in_band_for_streams_and_as_status_otherwise(server: ServiceProcess) -> None:
    response, events = relay_read(
        f"{server.base_url}{BASE}/base-info", params={**QUERY, "location": "우주"}, headers=SSE
    )
    assert response.status_code == 200
    body = {
        "status": 400,
        "message": "유효하지 않은 선택 항목이 포함되어 있습니다.",
        "data": {"invalidFields": ["location"]},
    }
    assert [(name, json.loads(data)) for name, data in events] == [("error", body), ("close", body)]
    plain = httpx.get(f"{server.base_url}{BASE}/base-info", params={"location": "도시"}, timeout=TIMEOUT)
    assert plain.status_code == 400
    assert plain.json() == {"status": 400, "message": "workType은 필수입니다.", "data": None}


def test_health(server: ServiceProcess) -> None:
    response = httpx.get(f"{server.base_url}/health", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["data"]["chatTemplate"] == "gguf"


def test_model_without_chat_template_serves_through_the_fallback(
    server_factory: Callable[..., ServiceProcess], gemma_path: Path
) -> None:
    gemma = server_factory("gemma", LEAFRESH_MODEL_PATH=str(gemma_path))
    assert httpx.get(f"{gemma.base_url}/health", timeout=TIMEOUT).json()["data"]["chatTemplate"] == "fallback"
    _, events = relay_read(f"{gemma.base_url}{BASE}/base-info", params=QUERY, headers=SSE)
    check_success_stream(events)


def test_low_vram_levers_serve_on_a_cpu_only_build(server_factory: Callable[..., ServiceProcess]) -> None:
    # gpu_layers=auto on a build without GPU support: one warning, then the CPU; a q8_0 KV
    # cache (with the flash attention it needs) still gives valid answers.
    small = server_factory("low-vram", LEAFRESH_GPU_LAYERS="auto", LEAFRESH_KV_CACHE_TYPE="q8_0")
    _, events = relay_read(f"{small.base_url}{BASE}/base-info", params=QUERY, headers=SSE)
    check_success_stream(events)
    assert "no GPU support: running on the CPU" in small.log()
