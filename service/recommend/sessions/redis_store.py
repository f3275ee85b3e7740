"""Conversations in Redis (``LEAFRESH_SESSION_URL=redis://…``), shared by every replica behind a
load balancer and kept across restarts. Connect, socket and per-operation timeouts are
explicit (issue #21), and a turn's lock is redis-py's ``Lock`` on a short lease the holder
renews (issue #20)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from service.logs import redact_url
from service.recommend.catalog import DEFAULT_CATEGORY_CODE
from service.recommend.sessions.model import Session, SessionBusy, SessionUpdate, Turn, TurnHold, unreadable_fields
from service.settings import Settings
from service.startup import StartupError

logger = logging.getLogger(__name__)


# Concurrent calls for one session each retry their write this many times.
_APPLY_ATTEMPTS = 16


class SessionCorrupt(Exception):
    """A session's keys cannot take the update; nothing was written."""


class _RedisHold:
    """A turn's lock in Redis, renewed every third of its lease until released or ``longest_s``."""

    def __init__(self, lock: Any, lease_s: float, longest_s: float) -> None:
        self._lock = lock
        self._released = False
        self._renewing = asyncio.create_task(self._renew(lease_s, longest_s))

    async def _renew(self, lease_s: float, longest_s: float) -> None:
        from redis.exceptions import LockError, RedisError

        ends = time.monotonic() + longest_s
        while time.monotonic() + lease_s / 3 < ends:
            await asyncio.sleep(lease_s / 3)
            try:
                await self._lock.reacquire()
            except (LockError, RedisError, OSError) as exc:
                # The lease may lapse and another turn start: say so, and keep answering this one.
                logger.warning("turn lock not renewed: %s", type(exc).__name__)
                return

    async def release(self) -> None:
        from redis.exceptions import LockError, RedisError

        if self._released:
            return
        self._released = True
        self._renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewing
        try:
            await self._lock.release()
        except (LockError, RedisError, OSError) as exc:
            # Lapsed (now someone else's, or nobody's): it expires on its own; never release another's.
            logger.warning("turn lock not released: %s", type(exc).__name__)


class RedisSessionStore:
    """A hash for the session's fields and a list for its turns, under one key prefix; both
    expire after the idle time, and every read or write renews them."""

    def __init__(
        self,
        url: str,
        max_turns: int,
        idle_ttl_s: float,
        prefix: str = "leafresh:session:",
        turn_lease_s: float = 10.0,
        timeout_s: float = 2.0,
    ) -> None:
        from redis import asyncio as redis_asyncio

        # Explicit bounds, not the client's defaults (none before redis-py 6): a Redis that stops
        # answering costs each call at most timeout_s, never a stream's slot for half a minute.
        self._redis: Any = redis_asyncio.from_url(
            url, decode_responses=True, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self.max_turns = max_turns
        self.idle_ttl_s = max(1, int(idle_ttl_s))
        self.prefix = prefix
        self.turn_lease_s = turn_lease_s
        self.timeout_s = timeout_s
        self.on_reset: Callable[[], None] | None = None

    def _keys(self, session_id: str) -> tuple[str, str]:
        # The kind comes before the id: with the id last, "V" + ":turns" was session
        # "V:turns"'s fields key, and a base-info call for it destroyed V (issue #13).
        return f"{self.prefix}fields:{session_id}", f"{self.prefix}turns:{session_id}"

    async def ping(self) -> None:
        await self._redis.ping()

    async def load(self, session_id: str) -> Session:
        """The session, renewed; one this release cannot read (a turn in an older shape) is
        reset, not renewed, and counted (issue #21: it failed every call of its user, and each
        failed read kept it alive)."""
        async with asyncio.timeout(self.timeout_s):
            fields_key, turns_key = self._keys(session_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(fields_key)
                pipe.lrange(turns_key, 0, -1)
                fields, turns = await pipe.execute()
            if not fields:
                return Session()
            try:
                session = Session(
                    base_category=fields.get("base_category", DEFAULT_CATEGORY_CODE),
                    category=fields.get("category", DEFAULT_CATEGORY_CODE),
                    location=fields.get("location") or None,
                    work_type=fields.get("work_type") or None,
                    turns=[Turn.model_validate_json(turn) for turn in turns],
                )
            except ValidationError as exc:
                fields = unreadable_fields(exc)
                logger.warning("session %s could not be read (%s): started again", session_id[:8], fields)
                await self._redis.delete(fields_key, turns_key)
                if self.on_reset is not None:
                    self.on_reset()
                return Session()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.expire(fields_key, self.idle_ttl_s)
                pipe.expire(turns_key, self.idle_ttl_s)
                await pipe.execute()
            return session

    async def apply(self, session_id: str, update: SessionUpdate) -> None:
        """All of the update or none of it: MULTI does not roll back a command that fails, so
        the keys' types are checked under WATCH first, and a concurrent write retries."""
        async with asyncio.timeout(self.timeout_s):
            await self._apply(session_id, update)

    async def _apply(self, session_id: str, update: SessionUpdate) -> None:
        from redis.exceptions import WatchError

        fields_key, turns_key = self._keys(session_id)
        fields = {"category": update.category, "location": update.location or "", "work_type": update.work_type or ""}
        turn = json.dumps(update.turn.model_dump(), ensure_ascii=False)
        for _ in range(_APPLY_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(fields_key, turns_key)
                    kinds = (await pipe.type(fields_key), await pipe.type(turns_key))
                    if kinds[0] not in ("hash", "none") or kinds[1] not in ("list", "none"):
                        raise SessionCorrupt(f"session keys hold {kinds[0]}/{kinds[1]}, not hash/list")
                    pipe.multi()
                    if update.reset:
                        pipe.delete(fields_key, turns_key)
                        fields["base_category"] = update.base_category or update.category
                    else:
                        # A session first seen in free-text starts from the default base category.
                        pipe.hsetnx(fields_key, "base_category", DEFAULT_CATEGORY_CODE)
                    pipe.hset(fields_key, mapping=fields)
                    pipe.rpush(turns_key, turn)
                    pipe.ltrim(turns_key, -self.max_turns, -1)
                    pipe.expire(fields_key, self.idle_ttl_s)
                    pipe.expire(turns_key, self.idle_ttl_s)
                    await pipe.execute()
                    return
                except WatchError:
                    continue  # another call for this session wrote first: both land
        raise SessionCorrupt(f"session kept changing during {_APPLY_ATTEMPTS} attempts")

    async def hold(self, session_id: str, longest_s: float) -> TurnHold:
        lock = self._redis.lock(
            f"{self.prefix}lock:{session_id}", timeout=self.turn_lease_s, blocking=False, thread_local=False
        )
        async with asyncio.timeout(self.timeout_s):
            acquired = await lock.acquire()
        if not acquired:
            raise SessionBusy(session_id)
        return _RedisHold(lock, self.turn_lease_s, longest_s)

    async def aclose(self) -> None:
        await self._redis.aclose()


def open_redis_store(settings: Settings) -> RedisSessionStore:
    """A store on ``settings.session_url``, pinged first: an unreachable Redis is one line at
    start-up, not an error on every conversation."""
    url = settings.session_url or ""

    def store() -> RedisSessionStore:
        return RedisSessionStore(
            url,
            settings.max_turns,
            settings.session_idle_s,
            turn_lease_s=settings.session_lock_s,
            timeout_s=settings.session_timeout_s,
        )

    async def ping() -> None:
        # A throwaway client: connections belong to the event loop that made them, and the
        # server runs its own loop later.
        probe = store()
        try:
            await probe.ping()
        finally:
            await probe.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:
        raise StartupError(
            f"세션 저장소(Redis)에 연결할 수 없습니다: {redact_url(url)} ({type(exc).__name__}) — "
            "Redis가 실행 중인지, LEAFRESH_SESSION_URL이 맞는지 확인하세요"
        ) from exc
    return store()
