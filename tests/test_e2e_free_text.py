"""End to end conversations on the real tiny model: category switching, history trimming,
and a conversation that survives a restart with the Redis store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.metrics import metric
from tests.support.redis import RedisServer
from tests.support.service_process import ROOT, ServiceProcess
from tests.support.sse import read_close

HITS = 'leafresh_prompt_cache_lookups_total{result="hit"}'
RESTORED = "leafresh_prompt_cache_restored_tokens_total"


def read(server: ServiceProcess, path: str, params: dict[str, str]) -> dict[str, Any]:
    return read_close(server.base_url, path, params)


def category_of(close: dict[str, Any]) -> str:
    codes = {str(challenge["category"]) for challenge in close["data"]["challenges"]}
    assert len(codes) == 1
    return codes.pop()


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return server_factory("conversation")


def test_conversation_switches_category_and_returns_to_the_base(server: ServiceProcess) -> None:
    session = "e2e-conversation"
    base = {"sessionId": session, "location": "도시", "workType": "사무직", "category": "플로깅"}
    assert category_of(read(server, "/base-info", base)) == "PLOGGING"
    assert category_of(read(server, "/free-text", {"sessionId": session, "message": "채식 위주로 추천해줘"})) == "VEGAN"
    assert category_of(read(server, "/free-text", {"sessionId": session, "message": "원래대로 추천해줘"})) == "PLOGGING"


def test_a_conversation_continues_from_its_cells_in_host_ram_after_others_came_between(
    server: ServiceProcess,
) -> None:
    # Two users, turn about: the prompt the engine holds is always the other user's, so each turn
    # takes its own conversation's cells from the prompt cache (issue #22).
    hits, restored = (metric(server.base_url, name) for name in (HITS, RESTORED))
    for user, place in (("a", "바닷가"), ("b", "농촌")):
        base = {"sessionId": f"ram-{user}", "location": place, "workType": "현장직", "category": "비건"}
        read(server, "/base-info", base)
    for message in ("좀 더 쉬운 걸로 알려줘", "운동하면서 할 수 있는 걸로"):
        for user in ("a", "b"):
            read(server, "/free-text", {"sessionId": f"ram-{user}", "message": message})
    assert metric(server.base_url, HITS) - hits >= 4
    found = re.findall(r"answered: .* prompt_tokens=(\d+) cached_prompt_tokens=(\d+)", server.log())[-6:]
    turns = [(int(prompt), int(cached)) for prompt, cached in found]
    # In order a, b, a, b, a, b: each turn's prompt came from the cache up to its own previous turn's.
    for (previous, _), (_, cached) in zip(turns, turns[2:], strict=False):
        assert cached >= previous - 2, turns
    assert metric(server.base_url, RESTORED) - restored > 4 * 100


def test_history_is_trimmed_to_fit_a_small_context(server_factory: Callable[..., ServiceProcess]) -> None:
    # The smallest context the start-up check accepts for 150-character messages (it says how
    # much it needs): room for the longest message and answer, and only a turn or two besides.
    limits = {"LEAFRESH_MAX_MESSAGE_CHARS": "150"}
    refused = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={**os.environ, **limits, "LEAFRESH_CONTEXT_SIZE": "1024"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    needed = re.search(r"LEAFRESH_CONTEXT_SIZE를 (\d+) 이상으로", refused.stderr)
    assert needed, refused.stderr
    small = server_factory("small-context", LEAFRESH_CONTEXT_SIZE=needed.group(1), **limits)
    session = "e2e-trim"
    for n in range(5):
        message = f"{n + 1}번째 질문이에요. 회사에서 점심시간에 동료들과 함께 할 수 있는 비건 챌린지를 자세히 알려주세요. 고마워요!"
        close = read(small, "/free-text", {"sessionId": session, "message": message})
        assert category_of(close) == "VEGAN"
    used = [(int(a), int(b)) for a, b in re.findall(r"free-text answered: .* history_turns=(\d+)/(\d+)", small.log())]
    assert [total for _, total in used] == [0, 1, 2, 3, 4]
    assert used[-1][0] < used[-1][1], used  # the oldest turns were dropped to fit


def test_redis_store_keeps_the_conversation_across_a_restart(
    server_factory: Callable[..., ServiceProcess], redis_server: RedisServer
) -> None:
    session = "e2e-restart"
    first = server_factory("redis-1", LEAFRESH_SESSION_URL=redis_server.url)
    base = {"sessionId": session, "location": "바닷가", "workType": "현장직", "category": "비건"}
    assert category_of(read(first, "/base-info", base)) == "VEGAN"
    first.stop()
    second = server_factory("redis-2", LEAFRESH_SESSION_URL=redis_server.url)
    # A fresh session would answer 제로웨이스트; the restarted service remembers 비건.
    close = read(second, "/free-text", {"sessionId": session, "message": "오늘 할 수 있는 걸로 알려줘"})
    assert category_of(close) == "VEGAN"
    assert "history_turns=1/1" in second.log()
