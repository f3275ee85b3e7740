"""Session stores: bounds, expiry, atomic turns, and the same behaviour on Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.recommend.sessions import (
    MemorySessionStore,
    Session,
    SessionBusy,
    SessionStore,
    SessionUpdate,
    Turn,
)
from service.recommend.sessions.redis_store import RedisSessionStore, SessionCorrupt
from tests.support.redis import RedisServer, start_redis
from tests.support.service_process import ROOT


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def update(n: int, category: str = "VEGAN", reset: bool = False) -> SessionUpdate:
    return SessionUpdate(
        turn=Turn(message=f"메시지 {n}", recommend=f"추천 {n}", titles=[f"1. 제목 {n}"], category=category),
        category=category,
        location="도시",
        work_type="사무직",
        reset=reset,
        base_category=category if reset else None,
    )


StoreFactory = Callable[[], SessionStore]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "memory":
        return lambda: MemorySessionStore(max_sessions=100, max_turns=3, idle_ttl_s=3600)
    redis: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test:{uuid.uuid4().hex}:"
    return lambda: RedisSessionStore(redis.url, max_turns=3, idle_ttl_s=3600, prefix=prefix)


def test_an_unknown_session_starts_at_zero_waste(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = make_store()
        session = await store.load("new")
        assert (session.category, session.base_category, session.turns) == ("ZERO_WASTE", "ZERO_WASTE", [])
        await store.aclose()

    run(scenario())


def test_turns_are_kept_newest_last_and_bounded(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.apply("s", update(0, "PLOGGING", reset=True))
        for n in range(1, 5):
            await store.apply("s", update(n))
        session = await store.load("s")
        assert [turn.message for turn in session.turns] == ["메시지 2", "메시지 3", "메시지 4"]
        assert (session.base_category, session.category, session.location) == ("PLOGGING", "VEGAN", "도시")
        await store.aclose()

    run(scenario())


def test_base_info_resets_the_conversation(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.apply("s", update(1))
        await store.apply("s", update(2, "MEDIA", reset=True))
        session = await store.load("s")
        assert [turn.message for turn in session.turns] == ["메시지 2"]
        assert session.base_category == "MEDIA"
        await store.aclose()

    run(scenario())


def test_concurrent_turns_for_one_session_are_all_kept(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.apply("s", update(0, reset=True))
        await asyncio.gather(store.apply("s", update(1)), store.apply("s", update(2)))
        session = await store.load("s")
        assert sorted(turn.message for turn in session.turns) == ["메시지 0", "메시지 1", "메시지 2"]
        await store.aclose()

    run(scenario())


def test_memory_store_forgets_idle_sessions_and_the_least_recently_used() -> None:
    async def scenario() -> None:
        store = MemorySessionStore(max_sessions=2, max_turns=5, idle_ttl_s=0.05)
        await store.apply("a", update(1))
        await asyncio.sleep(0.1)
        assert (await store.load("a")).turns == []
        assert len(store) == 0
        store.idle_ttl_s = 3600
        for name in ("a", "b"):
            await store.apply(name, update(1))
        await store.load("a")  # a is now more recent than b
        await store.apply("c", update(1))
        assert len(store) == 2
        assert (await store.load("b")).turns == []
        assert (await store.load("a")).turns != []

    run(scenario())


def test_redis_sessions_expire_after_the_idle_time(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_server.url, max_turns=3, idle_ttl_s=1, prefix=f"ttl:{uuid.uuid4().hex}:")
        await store.apply("s", update(1))
        assert (await store.load("s")).turns
        await asyncio.sleep(2.2)
        assert (await store.load("s")).turns == []
        await store.aclose()

    run(scenario())


def test_redis_sessions_survive_a_new_store_instance(redis_server: RedisServer) -> None:
    # What a restarted or second replica sees.
    prefix = f"shared:{uuid.uuid4().hex}:"

    async def scenario() -> None:
        first = RedisSessionStore(redis_server.url, max_turns=3, idle_ttl_s=60, prefix=prefix)
        await first.apply("s", update(1, "VEGAN", reset=True))
        await first.aclose()
        second = RedisSessionStore(redis_server.url, max_turns=3, idle_ttl_s=60, prefix=prefix)
        session = await second.load("s")
        assert [turn.message for turn in session.turns] == ["메시지 1"] and session.category == "VEGAN"
        await second.aclose()

    run(scenario())


def test_no_session_id_can_reach_another_sessions_keys(redis_server: RedisServer) -> None:
    # Regression (#13): session "V:turns" once wrote its fields over V's turns list, and V then
    # failed with WRONGTYPE on every call.
    async def scenario() -> None:
        store = RedisSessionStore(redis_server.url, max_turns=3, idle_ttl_s=3600, prefix=f"t:{uuid.uuid4().hex}:")
        await store.apply("V", update(0, "PLOGGING", reset=True))
        for other in ("V:turns", "V:fields", "turns:V", "fields:V", ":V", "V:"):
            await store.apply(other, update(9, "VEGAN", reset=True))
        session = await store.load("V")
        assert (session.category, [turn.message for turn in session.turns]) == ("PLOGGING", ["메시지 0"])
        await store.aclose()

    run(scenario())


def test_an_update_that_cannot_land_leaves_the_session_as_it_was(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        prefix = f"t:{uuid.uuid4().hex}:"
        store = RedisSessionStore(redis_server.url, max_turns=3, idle_ttl_s=3600, prefix=prefix)
        await store.apply("W", update(0, "PLOGGING", reset=True))
        await store._redis.delete(f"{prefix}turns:W")
        await store._redis.set(f"{prefix}turns:W", "not a list")  # someone else's key, of the wrong type
        with pytest.raises(SessionCorrupt):
            await store.apply("W", update(1, "VEGAN"))
        fields = await store._redis.hgetall(f"{prefix}fields:W")
        assert fields["category"] == "PLOGGING"  # the hash was not half-updated
        await store.aclose()

    run(scenario())


# -- one turn at a time per conversation (issue #20) -----------------------------------------


def test_a_conversation_takes_one_turn_at_a_time_on_every_replica(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        first = make_store()
        # Two replicas share one Redis; in memory there is one process.
        second = first if isinstance(first, MemorySessionStore) else make_store()
        hold = await first.hold("S", longest_s=60)
        with pytest.raises(SessionBusy):
            await second.hold("S", longest_s=60)
        other = await second.hold("T", longest_s=60)  # other conversations are not held up
        await hold.release()
        await hold.release()  # twice is harmless
        again = await second.hold("S", longest_s=60)
        await again.release()
        await other.release()
        for store in {id(first): first, id(second): second}.values():
            await store.aclose()

    run(scenario())


def test_a_turn_lock_is_renewed_while_its_turn_runs(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        prefix = f"t:{uuid.uuid4().hex}:"
        holder = RedisSessionStore(redis_server.url, 3, 60, prefix=prefix, turn_lease_s=2)
        other = RedisSessionStore(redis_server.url, 3, 60, prefix=prefix, turn_lease_s=2)
        hold = await holder.hold("S", longest_s=60)
        await asyncio.sleep(3)  # past one lease: still held, because the holder renews it
        with pytest.raises(SessionBusy):
            await other.hold("S", longest_s=60)
        await hold.release()
        await (await other.hold("S", longest_s=60)).release()
        await holder.aclose()
        await other.aclose()

    run(scenario())


HOLD_AND_WAIT = """
import asyncio, sys
from service.recommend.sessions.redis_store import RedisSessionStore

async def main() -> None:
    store = RedisSessionStore(sys.argv[1], 3, 60, prefix=sys.argv[2], turn_lease_s=2)
    await store.hold("S", longest_s=600)
    print("held", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_replica_killed_holding_a_turn_frees_the_conversation_after_one_lease(redis_server: RedisServer) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    replica = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, redis_server.url, prefix], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert replica.stdout is not None
    with replica.stdout:
        assert replica.stdout.readline().strip() == b"held"
    replica.kill()
    replica.wait()
    killed_at = time.monotonic()

    async def scenario() -> float:
        store = RedisSessionStore(redis_server.url, 3, 60, prefix=prefix, turn_lease_s=2)
        with pytest.raises(SessionBusy):
            await store.hold("S", longest_s=60)  # the dead replica's lease has not run out yet
        while True:
            try:
                hold = await store.hold("S", longest_s=60)
                break
            except SessionBusy:
                await asyncio.sleep(0.1)
        freed_after = time.monotonic() - killed_at
        await hold.release()
        await store.aclose()
        return freed_after

    assert run(scenario()) < 2 + 1  # one lease, plus the polling


# -- sessions as faults leave them (issue #21) -------------------------------------------------


def test_a_stored_session_this_release_cannot_read_is_started_again_and_not_renewed(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        prefix = f"t:{uuid.uuid4().hex}:"
        store = RedisSessionStore(redis_server.url, 3, 3600, prefix=prefix)
        resets: list[int] = []
        store.on_reset = lambda: resets.append(1)
        redis = store._redis
        # A turn in an older shape, written by another release.
        await redis.hset(f"{prefix}fields:old", mapping={"category": "VEGAN", "base_category": "VEGAN"})
        await redis.rpush(f"{prefix}turns:old", json.dumps({"text": "옛 모양의 턴"}))
        await redis.expire(f"{prefix}turns:old", 100)
        assert await store.load("old") == Session()
        assert resets == [1] and await redis.exists(f"{prefix}fields:old", f"{prefix}turns:old") == 0
        # A category code this release does not know is repaired in place; the turns are kept.
        await store.apply("new", update(1, "VEGAN", reset=True))
        await redis.hset(f"{prefix}fields:new", mapping={"category": "NEW_CATEGORY", "location": "우주"})
        session = await store.load("new")
        assert (session.category, session.base_category, session.location) == ("ZERO_WASTE", "VEGAN", None)
        assert [turn.message for turn in session.turns] == ["메시지 1"] and resets == [1]
        await store.aclose()

    run(scenario())


def test_a_redis_that_stops_answering_fails_each_call_within_its_timeout(tmp_path: Path) -> None:
    frozen = start_redis(tmp_path)

    async def scenario() -> list[float]:
        store = RedisSessionStore(frozen.url, 3, 3600, prefix="t:", timeout_s=0.3)
        await store.apply("S", update(1, reset=True))
        frozen.process.send_signal(signal.SIGSTOP)
        took = []
        for call in (lambda: store.load("S"), lambda: store.apply("S", update(2)), lambda: store.hold("S", 60)):
            started = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017 - a timeout, in whichever form the client raises it
                await call()
            took.append(time.monotonic() - started)
        frozen.process.send_signal(signal.SIGCONT)
        await store.aclose()
        return took

    try:
        took = run(scenario())
    finally:
        frozen.process.send_signal(signal.SIGCONT)
        frozen.stop()
    assert all(seconds < 2 for seconds in took), took  # 0.3 s each, with room for a busy machine
