"""Load, deadlines, metrics, logs and hostile input, on a scripted engine (fast, exact)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.api.app import create_app
from service.engine.base import EngineStopped, FinishReason
from service.logs import redact_url
from service.recommend.sessions import MemorySessionStore, Session, Turn
from service.settings import Settings, describe_settings_error
from tests.fakes import GOOD_OUTPUT, ScriptedEngine
from tests.support.queries import BASE, SSE
from tests.support.queries import QUERY as BASE_INFO_QUERY
from tests.support.sse import app_client, app_events, ends_with_one_close

QUERY = {**BASE_INFO_QUERY, "sessionId": "u1"}
# Without a session: requests of different users, which may run at once.
ANONYMOUS = {key: value for key, value in QUERY.items() if key != "sessionId"}


def test_a_full_queue_is_refused_with_503_and_retry_after() -> None:
    async def scenario() -> None:
        # One generation at a time, so the first request fills the engine.
        app = create_app(Settings(max_queue=0, retry_after_s=7, parallel=1), ScriptedEngine(delay_s=0.01))
        async with app_client(app) as client:
            first = asyncio.create_task(app_events(client, "GET", f"{BASE}/base-info", params=ANONYMOUS))
            await asyncio.sleep(0.05)  # the first request now holds the engine
            refused = await client.post(f"{BASE}/base-info", json=ANONYMOUS)
            in_band = await client.get(f"{BASE}/base-info", params=ANONYMOUS, headers=SSE)
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
        app = create_app(Settings(max_queue=4, queue_timeout_s=0.2, parallel=1), ScriptedEngine(delay_s=0.01))
        async with app_client(app) as client:
            first = asyncio.create_task(app_events(client, "GET", f"{BASE}/base-info", params=ANONYMOUS))
            await asyncio.sleep(0.02)
            second = await app_events(client, "GET", f"{BASE}/base-info", params=ANONYMOUS)
            await first
            metrics = (await client.get("/metrics")).text
        assert [name for name, _ in second] == ["error", "close"] and second[-1][1]["status"] == 503
        assert 'leafresh_deadline_exceeded_total{stage="queue"} 1.0' in metrics

    asyncio.run(scenario())


def test_a_generation_past_its_deadline_ends_with_504() -> None:
    async def scenario() -> None:
        app = create_app(Settings(generation_timeout_s=1), ScriptedEngine(delay_s=0.03))
        async with app_client(app) as client:
            events = await app_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            metrics = (await client.get("/metrics")).text
        assert [name for name, _ in events[-2:]] == ["error", "close"]
        assert events[-1][1]["status"] == 504 and "시간" in events[-1][1]["message"]
        assert 'leafresh_deadline_exceeded_total{stage="generation"} 1.0' in metrics

    asyncio.run(scenario())


def test_metrics_count_requests_tokens_validation_and_schema_failures() -> None:
    async def scenario() -> str:
        engine = ScriptedEngine()
        app = create_app(Settings(), engine)
        async with app_client(app) as client:
            await app_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            await client.get(f"{BASE}/base-info", params={"location": "도시"})
            engine.output = GOOD_OUTPUT[:-3]
            await app_events(client, "GET", f"{BASE}/base-info", params=QUERY)
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
        async with app_client(app) as client:
            await app_events(client, "GET", f"{BASE}/free-text", params={"sessionId": "s", "message": secret})
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
        async with app_client(app) as client:
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
        async with app_client(app) as client:
            return await client.post(f"{BASE}{path}", content=body, headers={"content-type": content_type})

    response = asyncio.run(scenario())
    assert 400 <= response.status_code < 500, response.text
    payload = response.json()
    assert set(payload) == {"status", "message", "data"} and payload["status"] == response.status_code
    assert isinstance(payload["message"], str) and payload["message"]


def test_as_many_requests_as_the_engine_batches_run_at_once_without_queueing() -> None:
    async def scenario() -> str:
        app = create_app(Settings(max_queue=0, parallel=3), ScriptedEngine(delay_s=0.01))
        async with app_client(app) as client:
            # Three users, each named by the relay: no one waits for another.
            streams = await asyncio.gather(
                *(
                    app_events(
                        client, "GET", f"{BASE}/base-info", params=ANONYMOUS, headers={"X-Leafresh-Client": f"u{n}"}
                    )
                    for n in range(3)
                )
            )
            assert all(events[-1][1]["status"] == 200 for events in streams)
            return (await client.get("/metrics")).text

    metrics = asyncio.run(scenario())
    assert "leafresh_rejected_total 0.0" in metrics


# -- issue #13: hostile users and careless operators ---------------------------------------


def test_a_body_over_the_limit_gets_413_before_it_is_read() -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        app = create_app(Settings(max_body_bytes=4096), ScriptedEngine())
        big = b'{"message": "' + b"a" * 10_000 + b'"}'

        async def chunks() -> Any:
            for start in range(0, len(big), 1000):  # no Content-Length: chunked
                yield big[start : start + 1000]

        async with app_client(app) as client:
            declared = await client.post(f"{BASE}/free-text", content=big, headers={"content-type": "application/json"})
            chunked = await client.post(
                f"{BASE}/free-text", content=chunks(), headers={"content-type": "application/json"}
            )
            in_band = await client.post(
                f"{BASE}/base-info", content=big, headers={**SSE, "content-type": "application/json"}
            )
        return declared, chunked, in_band

    declared, chunked, in_band = asyncio.run(scenario())
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json() == {"status": 413, "message": "요청 본문이 너무 큽니다.", "data": None}
    assert in_band.status_code == 200 and in_band.text.count("event: close") == 1 and '"status":413' in in_band.text


@pytest.mark.parametrize("session_id", ["x" * 201, "a b", "세션", "a\nb", "<script>"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_session_id_outside_the_one_rule_is_refused_on_get_and_post(session_id: str, method: str) -> None:
    async def scenario() -> httpx.Response:
        app = create_app(Settings(), ScriptedEngine())
        async with app_client(app) as client:
            if method == "GET":
                return await client.get(f"{BASE}/base-info", params={**QUERY, "sessionId": session_id})
            return await client.post(f"{BASE}/base-info", json={**QUERY, "sessionId": session_id})

    response = asyncio.run(scenario())
    assert response.status_code == 400
    assert response.json()["data"] == {"invalidFields": ["sessionId"]}


def test_a_message_that_is_not_writable_text_is_refused() -> None:
    async def scenario() -> httpx.Response:
        app = create_app(Settings(), ScriptedEngine())
        async with app_client(app) as client:
            body = b'{"sessionId": "s", "message": "\\ud800 lone surrogate"}'
            return await client.post(f"{BASE}/free-text", content=body, headers={"content-type": "application/json"})

    response = asyncio.run(scenario())
    assert response.status_code == 400 and response.json()["data"] == {"invalidFields": ["message"]}


class UnknownCategoryStore(MemorySessionStore):
    """A session written by a newer build during a rolling deploy: a category code we do not know."""

    async def load(self, session_id: str) -> Session:
        return Session(category="NEW_CATEGORY", base_category="NEW_CATEGORY")


@pytest.mark.parametrize("route", ["/free-text", "/base-info"])
def test_every_stream_ends_with_one_close_whatever_is_raised(route: str) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        engine = ScriptedEngine(output="not json at all")
        app = create_app(Settings(), engine, UnknownCategoryStore(10, 5, 60))
        params = {"sessionId": "s", "message": "오늘 할 수 있는 걸 알려줘"} if route == "/free-text" else QUERY
        async with app_client(app) as client:
            return await app_events(client, "GET", f"{BASE}{route}", params=params)

    events = asyncio.run(scenario())
    assert [name for name, _ in events][-2:] == ["error", "close"]
    assert ends_with_one_close([name for name, _ in events]) and events[-1][1]["status"] == 500


def test_a_shutdown_grace_that_would_cut_streams_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, shutdown_grace_s=0)
    assert "LEAFRESH_SHUTDOWN_GRACE_S" in describe_settings_error(caught.value)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://:pa/ss@host:6379/0", "pa/ss"),
        ("redis://:p@ss@host:6379/0", "p@ss"),
        ("redis://user:hunter2@host/0", "hunter2"),
        ("redis://host:6379/0?password=hunter2&db=1", "hunter2"),
        ("rediss://default:tok%40en@host:6380", "tok%40en"),
    ],
)
def test_credentials_never_survive_redaction(url: str, secret: str) -> None:
    redacted = redact_url(url)
    assert secret not in redacted and "host" in redacted


def test_logs_hold_no_forged_lines_and_no_stored_user_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "내 비밀번호는 SECRETSECRET"

    class UnreadableTurnStore(MemorySessionStore):
        async def load(self, session_id: str) -> Session:
            Turn.model_validate_json(json.dumps({"message": secret, "recommend": 5}))  # fails, quoting its input
            raise AssertionError("unreachable")

    async def scenario() -> None:
        app = create_app(Settings(), ScriptedEngine(), UnreadableTurnStore(10, 5, 60))
        async with app_client(app) as client:
            await client.get(f"{BASE}/base-info%0AFORGED%20LINE%0D", params=QUERY)
            await app_events(client, "GET", f"{BASE}/free-text", params={"sessionId": "s", "message": "오늘 뭐 하지요"})

    with caplog.at_level(logging.DEBUG, logger="service"):
        asyncio.run(scenario())
    assert "SECRETSECRET" not in caplog.text
    assert all("\n" not in record.getMessage() and "\r" not in record.getMessage() for record in caplog.records)
    assert "\\x0aFORGED" in caplog.text


class ShutDownEngine(ScriptedEngine):
    """An engine that ends every generation itself (it is closing), before the answer is whole."""

    def submit(self, request: Any) -> Any:
        generation = super().submit(request)
        self.output = GOOD_OUTPUT[:30]
        original = generation._text

        async def pieces() -> Any:
            async for piece in original():
                yield piece
            generation.stats.finish_reason = FinishReason.CANCELLED

        generation._text = pieces  # type: ignore[method-assign]
        return generation


def test_a_generation_the_engine_cancels_is_a_503_not_a_500() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        app = create_app(Settings(), ShutDownEngine())
        async with app_client(app) as client:
            return await app_events(client, "GET", f"{BASE}/base-info", params=QUERY)

    events = asyncio.run(scenario())
    assert [name for name, _ in events][-2:] == ["error", "close"] and events[-1][1]["status"] == 503


class DeadEngine(ScriptedEngine):
    """An engine whose decode thread has died."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = False

    def submit(self, request: Any) -> Any:
        raise EngineStopped("RuntimeError: injected")


def test_a_dead_engine_fails_requests_with_503_and_health_and_ready_ask_for_a_restart() -> None:
    async def scenario() -> list[Any]:
        app = create_app(Settings(), DeadEngine())
        app.state.ready.set()
        async with app_client(app) as client:
            return [
                await client.get("/health"),
                await client.get("/ready"),
                await app_events(client, "GET", f"{BASE}/base-info", params=ANONYMOUS),
                await client.post(f"{BASE}/base-info", json=ANONYMOUS),
            ]

    health, ready, events, answer = asyncio.run(scenario())
    stopped = {
        "status": 503,
        "message": "추천 엔진이 멈춰 이 서버를 다시 시작해야 합니다. 잠시 후 다시 시도해 주세요.",
        "data": None,
    }
    assert (health.status_code, health.json()) == (503, stopped)  # Kubernetes' liveness probe restarts the pod
    assert (ready.status_code, ready.json()) == (503, stopped)
    assert events == [("error", stopped), ("close", stopped)]
    assert (answer.status_code, answer.json()) == (503, stopped)


def test_health_names_the_model_file_but_not_where_it_lives() -> None:
    engine = ScriptedEngine()
    engine.info.model_path = "/srv/secret/layout/model.gguf"

    async def scenario() -> httpx.Response:
        async with app_client(create_app(Settings(), engine)) as client:
            return await client.get("/health")

    health = asyncio.run(scenario())
    assert health.json()["data"]["model"] == "model.gguf" and "/srv" not in health.text


class UnwritableStore(MemorySessionStore):
    async def apply(self, session_id: str, update: Any) -> None:
        raise ConnectionError("the store stopped answering")


def test_a_turn_that_cannot_be_saved_is_still_answered_and_counted() -> None:
    async def scenario() -> tuple[list[tuple[str, Any]], str]:
        app = create_app(Settings(), ScriptedEngine(), UnwritableStore(10, 5, 60))
        async with app_client(app) as client:
            events = await app_events(client, "GET", f"{BASE}/base-info", params=QUERY)
            return events, (await client.get("/metrics")).text

    events, metrics = asyncio.run(scenario())
    assert events[-1][1]["status"] == 200
    assert "leafresh_session_save_failures_total 1.0" in metrics


def test_a_client_past_its_message_budget_gets_429_with_retry_after() -> None:
    async def scenario() -> tuple[httpx.Response, list[tuple[str, Any]], httpx.Response, str]:
        app = create_app(Settings(client_prompt_tokens_per_min=100), ScriptedEngine())
        long_message = {"message": "채식 " * 40}  # 120 characters: 120 tokens on the scripted engine
        heavy = {"X-Leafresh-Client": "heavy"}
        async with app_client(app) as client:
            first = await client.post(f"{BASE}/free-text", json=long_message, headers=heavy)
            in_band = await app_events(client, "GET", f"{BASE}/free-text", params=long_message, headers=heavy)
            other = await client.post(f"{BASE}/free-text", json={"message": "채식 위주로 추천해 줘"})
            return first, in_band, other, (await client.get("/metrics")).text

    first, in_band, other, metrics = asyncio.run(scenario())
    assert first.status_code == 200  # longer than the whole budget: it goes, alone
    assert [name for name, _ in in_band] == ["error", "close"] and in_band[-1][1]["status"] == 429
    assert "너무 많은 내용" in in_band[-1][1]["message"]
    assert other.status_code == 200  # another client is not charged
    assert "leafresh_over_budget_total 1.0" in metrics
