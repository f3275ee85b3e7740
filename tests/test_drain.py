"""Draining after SIGTERM (issue #20), on a scripted engine: what was accepted finishes, what
arrives is refused cleanly, and only what outlives the grace is cut. The real signal, on a real
model in a real process, is in tests/test_e2e_operations.py."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.api.app import create_app
from service.settings import Settings
from tests.fakes import ScriptedEngine
from tests.support.queries import BASE, CLIENT_HEADER, QUERY
from tests.support.sse import app_client, app_events, ends_with_one_close

MSG_RESTARTING = "서버가 재시작 중입니다. 잠시 후 다시 시도해 주세요."


async def _until_generating(engine: ScriptedEngine) -> None:
    while not engine.requests:
        await asyncio.sleep(0.005)


def test_accepted_streams_finish_while_new_requests_are_refused_and_ready_says_draining() -> None:
    async def scenario() -> dict[str, Any]:
        engine = ScriptedEngine(delay_s=0.01)
        app = create_app(Settings(_env_file=None, retry_after_s=3), engine)
        app.state.ready.set()
        drain = app.state.drain
        async with app_client(app) as client:
            accepted = asyncio.create_task(app_events(client, "GET", f"{BASE}/base-info", params=QUERY))
            await _until_generating(engine)
            draining = asyncio.create_task(drain.run(grace_s=30))
            await asyncio.sleep(0)
            seen = {
                "ready": await client.get("/ready"),
                "health": await client.get("/health"),
                "json": await client.post(f"{BASE}/base-info", json=QUERY),
                "stream": await app_events(
                    client, "GET", f"{BASE}/free-text", params={"message": "채식 식단 추천해줘"}
                ),
                "accepted": await accepted,
                "cut": await draining,
            }
        return seen

    seen = asyncio.run(scenario())
    ready: httpx.Response = seen["ready"]
    assert ready.status_code == 503 and ready.json()["data"]["draining"] is True
    assert "draining" in ready.json()["message"]
    assert seen["health"].status_code == 200
    refused: httpx.Response = seen["json"]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert refused.json() == {"status": 503, "message": MSG_RESTARTING, "data": None}
    assert [name for name, _ in seen["stream"]] == ["error", "close"] and seen["stream"][-1][1]["status"] == 503
    accepted = seen["accepted"]
    assert ends_with_one_close([name for name, _ in accepted]) and accepted[-1][1]["status"] == 200
    assert len(accepted[-1][1]["data"]["challenges"]) == 3
    assert seen["cut"] == 0  # nothing had to be cut


def test_what_outlives_the_grace_is_cut_with_503_for_streams_and_json_clients() -> None:
    async def scenario() -> tuple[list[tuple[str, Any]], httpx.Response, int]:
        engine = ScriptedEngine(delay_s=0.05)  # about 5 s an answer: far past the grace
        app = create_app(Settings(_env_file=None), engine)
        async with app_client(app) as client:
            stream = asyncio.create_task(
                app_events(client, "GET", f"{BASE}/base-info", params=QUERY, headers={CLIENT_HEADER: "u1"})
            )
            waiting = asyncio.create_task(client.post(f"{BASE}/base-info", json=QUERY, headers={CLIENT_HEADER: "u2"}))
            while len(engine.requests) < 2:
                await asyncio.sleep(0.005)
            cut = await app.state.drain.run(grace_s=0.2)
            return await stream, await waiting, cut

    events, json_answer, cut = asyncio.run(scenario())
    assert cut == 2
    assert [name for name, _ in events][-2:] == ["error", "close"] and ends_with_one_close([n for n, _ in events])
    assert events[-1][1] == {"status": 503, "message": MSG_RESTARTING, "data": None}
    # The contract's JSON 503, not a plain-text 500 (issue #21's JSON clients at shutdown).
    assert json_answer.status_code == 503 and json_answer.json()["message"] == MSG_RESTARTING


def test_the_auto_grace_follows_the_speed_measured_at_warm_up() -> None:
    async def scenario() -> float:
        # 0.5 s a step: a typical answer takes minutes, so the grace is capped by the deadline.
        app = create_app(Settings(_env_file=None), ScriptedEngine(simulated_step_s=0.5))
        await app.state.service.warm_up()
        grace: float = app.state.service.shutdown_grace_s
        assert grace == app.state.service.generation_deadline_s
        fast = create_app(Settings(_env_file=None), ScriptedEngine(simulated_step_s=0.001))
        await fast.state.service.warm_up()
        fixed = create_app(Settings(_env_file=None, shutdown_grace_s=42), ScriptedEngine(simulated_step_s=0.001))
        await fixed.state.service.warm_up()
        assert fixed.state.service.shutdown_grace_s == 42
        return float(fast.state.service.shutdown_grace_s)

    assert asyncio.run(scenario()) == 15.0  # a fast machine: the floor
