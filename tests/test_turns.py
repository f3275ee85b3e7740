"""One turn at a time per conversation (issue #20): two service instances on one real Redis,
each with a scripted engine, so the order of events is exact. The same on real replicas behind
HAProxy is in tests/test_e2e_replicas.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from service.api.app import create_app
from service.recommend.sessions.redis_store import RedisSessionStore
from service.settings import Settings
from tests.fakes import ScriptedEngine
from tests.support.queries import BASE, QUERY
from tests.support.redis import RedisServer
from tests.support.sse import app_client, app_events

MSG_BUSY = "이 대화의 이전 답변을 아직 작성하고 있습니다. 답변이 끝난 뒤 다시 보내 주세요."


def _replica(redis: RedisServer, prefix: str, engine: ScriptedEngine) -> Any:
    store = RedisSessionStore(redis.url, max_turns=20, idle_ttl_s=600, prefix=prefix, turn_lease_s=5)
    return create_app(Settings(_env_file=None, retry_after_s=2), engine, store)


def test_two_turns_of_one_conversation_on_two_replicas_never_run_at_once(redis_server: RedisServer) -> None:
    prefix = f"turns:{uuid.uuid4().hex}:"
    first_engine, second_engine = ScriptedEngine(delay_s=0.01), ScriptedEngine()
    first, second = _replica(redis_server, prefix, first_engine), _replica(redis_server, prefix, second_engine)
    turn = {"sessionId": "S", "message": "채식 식단으로 바꾸고 싶어요"}

    async def scenario() -> dict[str, Any]:
        async with app_client(first) as one, app_client(second) as two:
            running = asyncio.create_task(app_events(one, "GET", f"{BASE}/free-text", params=turn))
            while not first_engine.requests:
                await asyncio.sleep(0.005)
            seen: dict[str, Any] = {
                "stream": await app_events(two, "GET", f"{BASE}/free-text", params=turn),
                "json": await two.post(f"{BASE}/free-text", json=turn),
                "base_info": await app_events(two, "GET", f"{BASE}/base-info", params={**QUERY, "sessionId": "S"}),
                "first": await running,
                "generated_for_refused": len(second_engine.requests),
            }
            seen["after_first"] = await second.state.service.sessions.load("S")
            seen["next"] = await app_events(two, "GET", f"{BASE}/free-text", params=turn)
            seen["after_next"] = await first.state.service.sessions.load("S")
            seen["metrics"] = (await two.get("/metrics")).text
        for app in (first, second):
            await app.state.service.sessions.aclose()
        return seen

    seen = asyncio.run(scenario())
    # While the first turn is written, the second (stream, JSON, or a base-info reset) is refused.
    busy = {"status": 409, "message": MSG_BUSY, "data": None}
    assert seen["stream"] == [("error", busy), ("close", busy)]
    refused: httpx.Response = seen["json"]
    assert refused.status_code == 409 and refused.headers["retry-after"] == "2"
    assert refused.json()["message"] == MSG_BUSY
    assert [name for name, _ in seen["base_info"]] == ["error", "close"] and seen["base_info"][-1][1]["status"] == 409
    assert seen["generated_for_refused"] == 0
    assert seen["first"][-1][1]["status"] == 200
    assert [turn.message for turn in seen["after_first"].turns] == [turn["message"]]
    # Once the first turn is written, the next one runs on the other replica with its history.
    assert seen["next"][-1][1]["status"] == 200 and len(seen["after_next"].turns) == 2
    assert "leafresh_turns_refused_total 3.0" in seen["metrics"]


def test_requests_without_a_session_are_never_serialised() -> None:
    async def scenario() -> tuple[list[list[tuple[str, Any]]], int]:
        engine = ScriptedEngine(delay_s=0.01)
        app = create_app(Settings(_env_file=None, parallel=2), engine)
        anonymous = {key: value for key, value in QUERY.items() if key != "sessionId"}
        async with app_client(app) as client:
            both = await asyncio.gather(
                app_events(client, "GET", f"{BASE}/base-info", params=anonymous),
                app_events(client, "GET", f"{BASE}/base-info", params=anonymous),
            )
        return list(both), len(engine.requests)

    both, generated = asyncio.run(scenario())
    assert [events[-1][1]["status"] for events in both] == [200, 200] and generated == 2
