"""The HTTP surface on a scripted engine: contract framing, errors, validation, headers."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx

from service.api.app import create_app
from service.engine import FinishReason
from service.recommend.answer import Answer, render
from service.recommend.catalog import find_category
from service.recommend.protocol import parse_base_info
from service.recommend.serving import RecommendationService
from service.recommend.sessions import MemorySessionStore
from service.settings import Settings
from tests.fakes import GOOD_OUTPUT, ScriptedEngine, ScriptedGeneration
from tests.support.queries import BASE, SSE
from tests.support.queries import QUERY as BASE_INFO_QUERY
from tests.support.sse import app_client, app_response_events, ends_with_one_close

QUERY = {**BASE_INFO_QUERY, "sessionId": "u1"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _events(
    engine: ScriptedEngine, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    async with app_client(create_app(Settings(), engine)) as client:
        return await app_response_events(client, method, url, **kwargs)


async def _request(engine: ScriptedEngine, method: str, url: str, **kwargs: Any) -> httpx.Response:
    app = create_app(Settings(), engine)
    async with app_client(app) as client:
        return await client.request(method, url, **kwargs)


def assert_contract_stream(events: list[tuple[str, Any]]) -> None:
    names = [name for name, _ in events]
    assert ends_with_one_close(names), names
    assert all(name and data is not None for name, data in events)


def test_stream_pieces_add_up_to_the_close_answer() -> None:
    response, events = run(_events(ScriptedEngine(), "GET", f"{BASE}/base-info", params=QUERY, headers=SSE))
    assert response.status_code == 200
    assert_contract_stream(events)
    challenges = [data for name, data in events if name == "challenge"]
    assert all(d["status"] == 200 and d["message"] == "토큰 생성" and d["data"] for d in challenges)
    close = events[-1][1]
    assert close["status"] == 200 and close["message"] == "모든 챌린지 추천 완료"
    answer = Answer.model_validate(close["data"])
    assert "".join(d["data"] for d in challenges) == render(answer)
    assert [(c.category, c.label) for c in answer.challenges] == [("VEGAN", "비건")] * 3


def test_stream_headers_follow_the_contract() -> None:
    response, _ = run(_events(ScriptedEngine(), "GET", f"{BASE}/base-info", params=QUERY, headers=SSE))
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"]


def test_raw_frames_are_single_json_lines_with_korean_as_utf8() -> None:
    response = run(_request(ScriptedEngine(), "GET", f"{BASE}/base-info", params=QUERY, headers=SSE))
    frames = [frame for frame in response.text.split("\n\n") if frame.strip()]
    for frame in frames:
        lines = frame.split("\n")
        if lines[0].startswith(":"):
            continue
        assert lines[0].startswith("event: ") and lines[0] != "event: "
        assert len(lines) == 2 and lines[1].startswith("data: {")
        assert not lines[1].startswith("data: data:")
        json.loads(lines[1].removeprefix("data: "))
    assert "\\u" not in response.text and "비건" in response.text


def test_failure_after_the_stream_began_sends_error_then_close() -> None:
    _, events = run(_events(ScriptedEngine(fail_after=5), "GET", f"{BASE}/base-info", params=QUERY, headers=SSE))
    assert_contract_stream(events)
    assert [name for name, _ in events[-2:]] == ["error", "close"]
    assert events[-2][1] == events[-1][1]
    assert events[-1][1]["status"] == 500 and events[-1][1]["data"] is None
    assert "다시 시도" in events[-1][1]["message"]


def test_output_that_breaks_the_schema_never_reaches_close_as_an_answer() -> None:
    engine = ScriptedEngine(output=GOOD_OUTPUT[:-2])
    _, events = run(_events(engine, "GET", f"{BASE}/base-info", params=QUERY, headers=SSE))
    assert [name for name, _ in events[-2:]] == ["error", "close"]
    assert events[-1][1]["status"] == 500


def test_validation_errors_travel_in_band_for_stream_readers() -> None:
    response, events = run(
        _events(ScriptedEngine(), "GET", f"{BASE}/base-info", params={**QUERY, "category": "환경"}, headers=SSE)
    )
    assert response.status_code == 200
    body = {
        "status": 400,
        "message": "유효하지 않은 선택 항목이 포함되어 있습니다.",
        "data": {"invalidFields": ["category"]},
    }
    assert events == [("error", body), ("close", body)]


def test_validation_errors_are_http_statuses_for_other_clients() -> None:
    response = run(_request(ScriptedEngine(), "GET", f"{BASE}/base-info", params={"workType": "사무직"}))
    assert response.status_code == 400
    assert response.json() == {"status": 400, "message": "location은 필수입니다.", "data": None}


def test_english_codes_and_the_spaced_label_are_accepted() -> None:
    for category, code in (
        ("CARBON_FOOTPRINT", "CARBON_FOOTPRINT"),
        ("탄소 발자국", "CARBON_FOOTPRINT"),
        ("MEDIA", "MEDIA"),
    ):
        _, events = run(
            _events(ScriptedEngine(), "GET", f"{BASE}/base-info", params={**QUERY, "category": category}, headers=SSE)
        )
        assert {c["category"] for c in events[-1][1]["data"]["challenges"]} == {code}


def test_twice_encoded_korean_in_the_query_is_understood() -> None:
    twice = "&".join(f"{key}={quote(quote(value))}" for key, value in QUERY.items())
    _, events = run(_events(ScriptedEngine(), "GET", f"{BASE}/base-info?{twice}", headers=SSE))
    assert events[-1][0] == "close" and events[-1][1]["status"] == 200


def test_post_without_stream_accept_returns_one_json_answer() -> None:
    response = run(_request(ScriptedEngine(), "POST", f"{BASE}/base-info", json=QUERY))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == 200
    assert body["message"] == "사용자 기본 정보 키워드 선택을 기반으로 챌린지를 추천합니다."
    assert len(body["data"]["challenges"]) == 3


def test_post_with_stream_accept_streams() -> None:
    _, events = run(_events(ScriptedEngine(), "POST", f"{BASE}/base-info", json=QUERY, headers=SSE))
    assert_contract_stream(events)
    assert events[-1][1]["status"] == 200


def test_post_bodies_of_the_wrong_shape_get_flat_contract_errors() -> None:
    wrong_type = run(_request(ScriptedEngine(), "POST", f"{BASE}/base-info", json={**QUERY, "location": 3}))
    assert wrong_type.status_code == 400
    assert wrong_type.json()["data"] == {"invalidFields": ["location"]}
    broken = run(
        _request(
            ScriptedEngine(),
            "POST",
            f"{BASE}/base-info",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    )
    assert broken.status_code == 400
    assert set(broken.json()) == {"status", "message", "data"}
    assert isinstance(broken.json()["message"], str)
    missing = run(_request(ScriptedEngine(), "POST", f"{BASE}/base-info", json={"location": "도시"}))
    assert missing.json() == {"status": 400, "message": "workType은 필수입니다.", "data": None}


def test_post_model_failure_is_an_http_500_for_json_clients() -> None:
    response = run(_request(ScriptedEngine(fail_after=2), "POST", f"{BASE}/base-info", json=QUERY))
    assert response.status_code == 500
    assert response.json()["status"] == 500 and response.json()["data"] is None


def test_health_answers_once_the_model_is_loaded() -> None:
    response = run(_request(ScriptedEngine(), "GET", "/health"))
    assert response.status_code == 200 and response.json()["data"]["model"] == "scripted"


def test_request_id_from_the_caller_is_echoed() -> None:
    response = run(_request(ScriptedEngine(), "GET", "/health", headers={"X-Request-ID": "spring-42"}))
    assert response.headers["x-request-id"] == "spring-42"


def test_when_the_reader_leaves_then_the_generation_is_cancelled() -> None:
    """Not only that cancel() ran (it runs on every path): the engine wrote nothing more."""

    async def scenario() -> ScriptedGeneration:
        engine = ScriptedEngine(delay_s=0.001)
        service = RecommendationService(engine, Settings(), MemorySessionStore(10, 10, 60))
        stream = service.stream_base_info(parse_base_info(QUERY))
        assert (await anext(stream))[0] == "challenge"
        await stream.aclose()
        await asyncio.sleep(0.05)  # time for fifty more pieces, were it still writing
        (generation,) = engine.generations
        return generation

    generation = run(scenario())
    whole_answer = -(-len(GOOD_OUTPUT) // 3)
    assert generation.cancelled
    assert generation.pieces_sent <= 12 < whole_answer  # the opening pieces, then nothing
    assert generation.stats.finish_reason is not FinishReason.STOP


def test_the_request_sent_to_the_engine_is_bounded_by_the_grammar() -> None:
    engine = ScriptedEngine()
    run(_events(engine, "GET", f"{BASE}/base-info", params=QUERY, headers=SSE))
    (request,) = engine.requests
    assert request.grammar == "challenge"
    assert request.max_tokens > 1000
    category = find_category("비건")
    assert category is not None and category.label in engine.messages_of(request)[-1].content
