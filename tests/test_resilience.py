"""Load, deadlines, metrics, logs and hostile input, on a scripted engine (fast, exact)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from service.app import create_app
from service.settings import Settings
from tests.fakes import GOOD_OUTPUT, ScriptedEngine

SSE = {"Accept": "text/event-stream"}
BASE = "/ai/chatbot/recommendation"
QUERY = {"sessionId": "u1", "location": "도시", "workType": "사무직", "category": "비건"}


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


async def sse_events(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[tuple[str, Any]]:
    async with aconnect_sse(client, method, url, headers=SSE, **kwargs) as source:
        return [(event.event, json.loads(event.data)) async for event in source.aiter_sse()]


def test_a_full_queue_is_refused_with_503_and_retry_after() -> None:
    async def scenario() -> None:
        # One generation at a time, so the first request fills the engine.
        app = create_app(Settings(max_queue=0, retry_after_s=7, parallel=1), ScriptedEngine(delay_s=0.01))
        async with client_for(app) as client:
            first = asyncio.create_task(sse_events(client, "GET", f"{BASE}/base-info", params=QUERY))
            await asyncio.sleep(0.05)  # the first request now holds the engine
            refused = await client.post(f"{BASE}/base-info", json=QUERY)
            in_band = await client.get(f"{BASE}/base-info", params=QUERY, headers=SSE)
            assert (await first)[-1][1]["status"] == 200
        assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
        assert refused.json() == {
            "status": 503,
            "message": "지금 요청이 많아 추천을 만들 수 없습니다. 잠시 후 다시 시도해 주세요.",
            "data": None,
        }
        assert in_band.status_code == 200 and in_band.headers["retry-after"] == "7"
        assert [line for line in in_band.text.splitlines() if line.startswith("event:")] == [
            "event: error",
            "event: close",
        ]

    asyncio.run(scenario())


def test_waiting_too_long_for_the_engine_ends_with_503() -> None:
    async def scenario() -> None:
        app = create_app(Settings(max_queue=4, queue_timeout_s=0.05, parallel=1), ScriptedEngine(delay_s=0.01))
        async with client_for(app) as client:
            first = asyncio.create_task(sse_events(client, "GET", f"{BASE}/base-info", params=QUERY))
            await asyncio.sleep(0.02)
            second = await sse_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            await first
            metrics = (await client.get("/metrics")).text
        assert [name for name, _ in second] == ["error", "close"] and second[-1][1]["status"] == 503
        assert 'leafresh_deadline_exceeded_total{stage="queue"} 1.0' in metrics

    asyncio.run(scenario())


def test_a_generation_past_its_deadline_ends_with_504() -> None:
    async def scenario() -> None:
        app = create_app(Settings(generation_timeout_s=0.05), ScriptedEngine(delay_s=0.01))
        async with client_for(app) as client:
            events = await sse_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            metrics = (await client.get("/metrics")).text
        assert [name for name, _ in events[-2:]] == ["error", "close"]
        assert events[-1][1]["status"] == 504 and "시간" in events[-1][1]["message"]
        assert 'leafresh_deadline_exceeded_total{stage="generation"} 1.0' in metrics

    asyncio.run(scenario())


def test_metrics_count_requests_tokens_validation_and_schema_failures() -> None:
    async def scenario() -> str:
        engine = ScriptedEngine()
        app = create_app(Settings(), engine)
        async with client_for(app) as client:
            await sse_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            await client.get(f"{BASE}/base-info", params={"location": "도시"})
            engine.output = GOOD_OUTPUT[:-3]
            await sse_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            return (await client.get("/metrics")).text

    metrics = asyncio.run(scenario())
    assert 'leafresh_requests_total{route="/ai/chatbot/recommendation/base-info",status="200"} 2.0' in metrics
    assert 'leafresh_requests_total{route="/ai/chatbot/recommendation/base-info",status="400"} 1.0' in metrics
    assert 'leafresh_validation_failures_total{status="400"} 1.0' in metrics
    assert "leafresh_answer_schema_failures_total 1.0" in metrics
    assert "leafresh_generated_tokens_total" in metrics and "leafresh_time_to_first_token_seconds_count 2.0" in metrics
    assert "process_resident_memory_bytes" in metrics


def test_user_messages_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    secret = "제 토큰은 hf_SECRETSECRET 이에요 추천해줘"

    async def scenario() -> None:
        app = create_app(Settings(), ScriptedEngine())
        async with client_for(app) as client:
            await sse_events(client, "GET", f"{BASE}/free-text", params={"sessionId": "s", "message": secret})
            await client.post(f"{BASE}/free-text", json={"message": ["hf_SECRETSECRET"]})

    # The service's loggers only: httpx (the test's own client) logs the URLs it calls.
    with caplog.at_level(logging.DEBUG, logger="service"):
        asyncio.run(scenario())
    assert "SECRETSECRET" not in caplog.text
    assert "route=/ai/chatbot/recommendation/free-text status=200" in caplog.text


HOSTILE_QUERIES = [
    "location=%ZZ&workType=%&category=%E0%A4",  # broken percent-encoding
    "location=%FF%FE&workType=%C0%AF&category=%ED%A0%80",  # not UTF-8
    "location=" + "도" * 5000 + "&workType=사무직&category=비건",  # huge
    "location=도시&location=산&workType=사무직&category=비건",  # repeated
    "location=도시&workType=사무직&category=비건&admin=true&__proto__=x",  # unknown fields
    "location=%00&workType=%0A&category=%0D%0Aevent: close",  # control characters, SSE injection
    "sessionId=" + "x" * 500 + "&location=도시&workType=사무직&category=비건",
    "",
]
HOSTILE_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "application/json"),
    (b"[]", "application/json"),
    (b'"string"', "application/json"),
    (b"null", "application/json"),
    (b'{"location": 1, "workType": [], "category": {}}', "application/json"),
    (b'{"location": null, "workType": true}', "application/json"),
    (b"location=x", "application/x-www-form-urlencoded"),
    (b"\xff\xfe\x00", "application/json"),
    (b'{"message": "' + "가".encode() * 20000 + b'"}', "application/json"),
    (b'{"message": 5}', "text/plain"),
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
@pytest.mark.parametrize("path", ["/base-info", "/free-text"])
@pytest.mark.parametrize("accept", ["*/*", "text/event-stream"])
def test_hostile_queries_never_cause_a_server_error(query: str, path: str, accept: str) -> None:
    async def scenario() -> httpx.Response:
        app = create_app(Settings(), ScriptedEngine())
        async with client_for(app) as client:
            return await client.get(f"{BASE}{path}?{query}", headers={"Accept": accept})

    response = asyncio.run(scenario())
    assert response.status_code < 500
    if response.headers["content-type"].startswith("application/json"):
        assert set(response.json()) == {"status", "message", "data"}
    else:
        assert "event: close" in response.text
        assert response.text.count("event: close") == 1


@pytest.mark.parametrize(("body", "content_type"), HOSTILE_BODIES)
@pytest.mark.parametrize("path", ["/base-info", "/free-text"])
def test_hostile_bodies_get_flat_4xx_answers(body: bytes, content_type: str, path: str) -> None:
    async def scenario() -> httpx.Response:
        app = create_app(Settings(), ScriptedEngine())
        async with client_for(app) as client:
            return await client.post(f"{BASE}{path}", content=body, headers={"content-type": content_type})

    response = asyncio.run(scenario())
    assert 400 <= response.status_code < 500, response.text
    payload = response.json()
    assert set(payload) == {"status", "message", "data"} and payload["status"] == response.status_code
    assert isinstance(payload["message"], str) and payload["message"]


def test_as_many_requests_as_the_engine_batches_run_at_once_without_queueing() -> None:
    async def scenario() -> str:
        app = create_app(Settings(max_queue=0, parallel=3), ScriptedEngine(delay_s=0.01))
        async with client_for(app) as client:
            streams = await asyncio.gather(
                *(sse_events(client, "GET", f"{BASE}/base-info", params=QUERY) for _ in range(3))
            )
            assert all(events[-1][1]["status"] == 200 for events in streams)
            return (await client.get("/metrics")).text

    metrics = asyncio.run(scenario())
    assert "leafresh_rejected_total 0.0" in metrics
