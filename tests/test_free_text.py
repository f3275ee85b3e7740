"""Free-text on a scripted engine: validation, steering, the guide, history and writes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from service.api.app import create_app
from service.engine import ChatMessage
from service.recommend.contract import MSG_GUIDE
from service.recommend.serving import RecommendationService
from service.recommend.sessions import MemorySessionStore, SessionUpdate, Turn
from service.settings import Settings
from tests.fakes import GOOD_OUTPUT, ScriptedEngine
from tests.support.queries import BASE
from tests.support.sse import app_client, app_events


class Conversation:
    """One app, one store, a client that reads streams as the relay does."""

    def __init__(self, engine: ScriptedEngine | None = None, settings: Settings | None = None) -> None:
        self.engine = engine or ScriptedEngine()
        self.settings = settings or Settings()
        self.store = MemorySessionStore(100, self.settings.max_turns, 3600)
        self.app = create_app(self.settings, self.engine, self.store)

    async def stream(self, method: str, path: str, **kwargs: Any) -> list[tuple[str, Any]]:
        async with app_client(self.app) as client:
            return await app_events(client, method, f"{BASE}{path}", **kwargs)

    async def plain(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with app_client(self.app) as client:
            return await client.request(method, f"{BASE}{path}", **kwargs)

    async def say(self, message: str, session: str = "s1") -> dict[str, Any]:
        events = await self.stream("GET", "/free-text", params={"sessionId": session, "message": message})
        assert events[-1][0] == "close"
        data: dict[str, Any] = events[-1][1]
        return data


def categories(close: dict[str, Any]) -> set[str]:
    return {challenge["category"] for challenge in close["data"]["challenges"]}


def test_validation_follows_the_contract_table() -> None:
    async def scenario() -> None:
        chat = Conversation()
        missing = await chat.plain("GET", "/free-text", params={"sessionId": "a"})
        assert (missing.status_code, missing.json()) == (
            400,
            {"status": 400, "message": "message는 필수입니다.", "data": None},
        )
        short = await chat.plain("GET", "/free-text", params={"message": "  안녕  "})
        assert short.status_code == 422
        assert short.json()["message"] == "message는 문자열이어야 하며, 최소 5자 이상의 문자열이어야 합니다."
        long = await chat.plain("POST", "/free-text", json={"message": "가" * 501})
        assert long.status_code == 422 and "500" in long.json()["message"]
        in_band = await chat.stream("GET", "/free-text", params={"message": "짧아"})
        assert [name for name, _ in in_band] == ["error", "close"] and in_band[-1][1]["status"] == 422

    asyncio.run(scenario())


def test_a_new_session_starts_at_zero_waste_and_follows_the_message() -> None:
    async def scenario() -> None:
        chat = Conversation()
        assert categories(await chat.say("오늘 할 수 있는 거 알려줘")) == {"ZERO_WASTE"}
        assert categories(await chat.say("채식 위주로 추천해줘")) == {"VEGAN"}
        assert categories(await chat.say("이번엔 이거로 또 해줘")) == {"VEGAN"}
        assert categories(await chat.say("원래대로 해줘")) == {"ZERO_WASTE"}

    asyncio.run(scenario())


def test_base_info_sets_the_base_category_that_free_text_returns_to() -> None:
    async def scenario() -> None:
        chat = Conversation()
        await chat.stream(
            "GET",
            "/base-info",
            params={"sessionId": "s1", "location": "산", "workType": "현장직", "category": "플로깅"},
        )
        assert categories(await chat.say("채식으로 바꿔줘")) == {"VEGAN"}
        assert categories(await chat.say("처음 거로 다시 추천해줘")) == {"PLOGGING"}
        session = await chat.store.load("s1")
        assert (session.location, session.work_type, len(session.turns)) == ("산", "현장직", 3)
        # The model saw the conversation so far, each turn as it was asked (issue #22: so that a
        # turn's prompt begins with the previous one's), with the place from base-info.
        last_prompt = chat.engine.messages_of(chat.engine.requests[-1])
        earlier = [m.content for m in last_prompt[:-1] if m.role == "user"]
        assert earlier[0].startswith("장소: 산\n직업 유형: 현장직\n카테고리: 플로깅")
        assert "사용자 메시지: 채식으로 바꿔줘\n" in earlier[1]
        assert "장소: 산" in last_prompt[-1].content

    asyncio.run(scenario())


def test_abusive_messages_get_the_guide_without_a_model_call() -> None:
    async def scenario() -> None:
        chat = Conversation()
        events = await chat.stream("GET", "/free-text", params={"message": "야 이 병신아 추천해"})
        assert [name for name, _ in events] == ["challenge", "close"]
        # Its own message, so a consumer can tell it from three challenges (the contract's guide answer).
        assert events[-1][1] == {
            "status": 200,
            "message": "챌린지 대신 안내 메시지를 보냈습니다",
            "data": {"recommend": MSG_GUIDE, "challenges": []},
        }
        assert events[0][1]["data"] == MSG_GUIDE
        assert chat.engine.requests == []
        response = await chat.plain("POST", "/free-text", json={"message": "꺼져 진짜 꺼져"})
        assert response.json()["message"] == "챌린지 대신 안내 메시지를 보냈습니다"
        assert response.json()["data"]["challenges"] == []

    asyncio.run(scenario())


def test_a_failed_answer_leaves_the_session_as_it_was() -> None:
    async def scenario() -> None:
        chat = Conversation()
        await chat.say("채식 위주로 추천해줘")
        chat.engine.fail_after = 3
        failed = await chat.stream("GET", "/free-text", params={"sessionId": "s1", "message": "운동으로 바꿔줘"})
        assert [name for name, _ in failed[-2:]] == ["error", "close"]
        session = await chat.store.load("s1")
        assert (session.category, len(session.turns)) == ("VEGAN", 1)

    asyncio.run(scenario())


def test_post_free_text_returns_one_json_answer() -> None:
    async def scenario() -> None:
        chat = Conversation()
        response = await chat.plain("POST", "/free-text", json={"sessionId": "p", "message": "비건 챌린지 알려줘"})
        body = response.json()
        assert body["message"] == "사용자 자유 메시지를 기반으로 챌린지를 추천합니다."
        assert {c["category"] for c in body["data"]["challenges"]} == {"VEGAN"}

    asyncio.run(scenario())


class CharCountingEngine(ScriptedEngine):
    """One token per character (as every scripted engine), with a small context: history must
    be trimmed."""

    def __init__(self) -> None:
        super().__init__(GOOD_OUTPUT)
        self.info.context_size = 6000


def test_history_keeps_the_newest_turns_that_fit() -> None:
    async def scenario() -> None:
        engine = CharCountingEngine()
        # Twelve 460-character messages in a row: past one user's budget a minute, not tested here.
        chat = Conversation(engine, Settings(max_message_chars=500, client_prompt_tokens_per_min=10**6))
        for n in range(12):
            await chat.say(f"{n}번째 메시지 " + "가" * 450)
        prompt = engine.messages_of(engine.requests[-1])
        budget = engine.info.context_size - RecommendationService(engine, chat.settings, chat.store).max_tokens
        assert engine.count_tokens(prompt) <= budget
        users = [m.content for m in prompt[1:-1] if m.role == "user"]
        assert 0 < len(users) < 11
        # The newest earlier turn is kept, the oldest dropped.
        assert "사용자 메시지: 10번째" in users[-1]
        assert not any("사용자 메시지: 0번째" in u for u in users)

    asyncio.run(scenario())


class SlowTokenizerEngine(CharCountingEngine):
    """A tokenizer that takes 200 ms a call on a conversation (a long one on a big vocabulary,
    slowed down so that fitting one history on the event loop would block it for a second)."""

    def __init__(self) -> None:
        super().__init__()
        self.count_calls = 0

    def prompt_tokens(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        self.count_calls += 1
        if len(messages) > 2:  # a conversation (the start-up check's prompts stay fast)
            time.sleep(0.2)
        return super().prompt_tokens(messages)


def test_fitting_long_histories_is_bounded_and_never_stalls_the_server() -> None:
    # Regression (#13): the prompt was rendered and tokenized once per history length, on the
    # event loop, before admission: a burst of long conversations froze every stream and /health.
    async def scenario() -> None:
        engine = SlowTokenizerEngine()
        chat = Conversation(engine, Settings(max_message_chars=500, max_turns=20, parallel=8))
        # Eight conversations: one turn at a time per conversation would refuse a burst on one.
        sessions = [f"long-{number}" for number in range(8)]
        for session in sessions:
            for n in range(20):
                await chat.store.apply(
                    session,
                    SessionUpdate(
                        turn=Turn(
                            message=f"{n}번째 " + "가" * 450, recommend="추천", titles=["1. 가"], category="VEGAN"
                        ),
                        category="VEGAN",
                        location="도시",
                        work_type="사무직",
                    ),
                )
        engine.count_calls = 0
        await chat.say("비건 챌린지를 알려줘", session=sessions[0])
        assert engine.count_calls <= 7  # log2(20) + 2, not 21
        async with app_client(chat.app) as client:
            burst = [asyncio.create_task(chat.say("비건 챌린지를 알려줘", session=s)) for s in sessions[1:]]
            slowest = 0.0
            while not all(task.done() for task in burst):
                started = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
                await asyncio.sleep(0.005)
            await asyncio.gather(*burst)
        # Generous for a busy 2-core machine, and still under one history fitted on the loop.
        assert slowest < 0.5, slowest

    asyncio.run(scenario())
