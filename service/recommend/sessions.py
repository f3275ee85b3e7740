"""Conversations, behind one small store interface with two implementations.

- ``MemorySessionStore`` (the default): one process; bounded by a number of sessions (least
  recently used go first), turns per session (oldest go first) and idle time.
- ``RedisSessionStore`` (``LEAFRESH_SESSION_URL=redis://…``): shared by every replica behind a
  load balancer, and kept across restarts.

A turn is written only after its answer is complete (a failed or cancelled answer leaves the
session as it was), in one atomic step that appends the turn and sets the session's current
category, place and kind of work, so a reader always sees one consistent state.

One turn at a time per conversation (issue #20): a double click, or the Spring relay retrying
after its timeout, must not run a second turn beside the first, both reading the same history.
``hold`` takes the conversation for one turn or raises ``SessionBusy`` at once. In memory that
is a set in the process; in Redis it is a lock with a random token (redis-py's ``Lock``: only its
holder can release it) on a short lease that the holder renews while the turn runs, so a replica
that dies holding it frees the conversation within one lease, not after a whole deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.recommend.catalog import DEFAULT_CATEGORY_CODE, find_category, find_location, find_work_type

logger = logging.getLogger(__name__)


class Turn(BaseModel):
    """What the model needs to remember of one exchange: the user's words and a short summary
    of the answer (its recommend text and titles), not the whole answer."""

    model_config = ConfigDict(frozen=True)

    message: str
    recommend: str
    titles: list[str] = Field(default_factory=list)
    category: str

    @field_validator("category", mode="before")
    @classmethod
    def _known_category(cls, value: object) -> object:
        return _known_code(value)


def _known_code(value: object) -> object:
    """A category code this release knows, else the default: a session written by another release
    during a rolling deploy is repaired, never an error on every call of its user (issue #21)."""
    if isinstance(value, str):
        category = find_category(value)
        return value if category is not None and category.code == value else DEFAULT_CATEGORY_CODE
    return value


class Session(BaseModel):
    model_config = ConfigDict(frozen=True)

    base_category: str = DEFAULT_CATEGORY_CODE
    category: str = DEFAULT_CATEGORY_CODE
    location: str | None = None
    work_type: str | None = None
    turns: list[Turn] = Field(default_factory=list)

    @field_validator("base_category", "category", mode="before")
    @classmethod
    def _known_category(cls, value: object) -> object:
        return _known_code(value)

    @field_validator("location", mode="before")
    @classmethod
    def _known_location(cls, value: object) -> object:
        return find_location(value) if isinstance(value, str) else value

    @field_validator("work_type", mode="before")
    @classmethod
    def _known_work_type(cls, value: object) -> object:
        return find_work_type(value) if isinstance(value, str) else value


class SessionUpdate(BaseModel):
    """Everything one finished turn changes. ``reset`` starts the session again (base-info)."""

    model_config = ConfigDict(frozen=True)

    turn: Turn
    category: str
    location: str | None
    work_type: str | None
    reset: bool = False
    base_category: str | None = None


def unreadable_fields(error: ValidationError) -> list[str]:
    """Where a stored session failed to read: field names only, never their values (a user's
    messages are in them), for the log."""
    return sorted({".".join(str(part) for part in item["loc"]) for item in error.errors()})


class SessionBusy(Exception):
    """Another turn of this conversation is running (on this replica or another)."""


class TurnHold(Protocol):
    async def release(self) -> None:
        """Give the conversation back (safe to call twice)."""
        ...


class SessionStore(Protocol):
    # Called once for each stored session that could not be read and was started again.
    on_reset: Callable[[], None] | None

    async def load(self, session_id: str) -> Session:
        """The session, or a new one (제로웨이스트, no history) if there is none."""
        ...

    async def apply(self, session_id: str, update: SessionUpdate) -> None: ...

    async def hold(self, session_id: str, longest_s: float) -> TurnHold:
        """The conversation for one turn, or SessionBusy at once. ``longest_s`` bounds how long
        the hold may last even if it is never released."""
        ...

    async def aclose(self) -> None: ...


class _MemoryHold:
    def __init__(self, busy: set[str], session_id: str) -> None:
        self._busy = busy
        self._session_id = session_id

    async def release(self) -> None:
        self._busy.discard(self._session_id)


def _updated(session: Session, update: SessionUpdate, max_turns: int) -> Session:
    if update.reset:
        session = Session(base_category=update.base_category or update.category)
    turns = [*session.turns, update.turn][-max_turns:]
    return Session(
        base_category=session.base_category,
        category=update.category,
        location=update.location,
        work_type=update.work_type,
        turns=turns,
    )


class MemorySessionStore:
    def __init__(self, max_sessions: int, max_turns: int, idle_ttl_s: float) -> None:
        self.max_sessions = max_sessions
        self.max_turns = max_turns
        self.idle_ttl_s = idle_ttl_s
        # Least recently used first, so expiry and eviction only ever look at the front.
        self._sessions: OrderedDict[str, tuple[float, Session]] = OrderedDict()
        self._lock = asyncio.Lock()
        # Conversations with a turn running. A hold ends with its turn, and the process with it.
        self._busy: set[str] = set()
        self.on_reset: Callable[[], None] | None = None  # what this process wrote, it can read

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        while self._sessions:
            session_id, (touched, _) = next(iter(self._sessions.items()))
            if now - touched < self.idle_ttl_s and len(self._sessions) <= self.max_sessions:
                return
            del self._sessions[session_id]

    async def load(self, session_id: str) -> Session:
        async with self._lock:
            now = time.monotonic()
            self._expire(now)
            found = self._sessions.get(session_id)
            if found is None:
                return Session()
            self._sessions[session_id] = (now, found[1])
            self._sessions.move_to_end(session_id)
            return found[1]

    async def apply(self, session_id: str, update: SessionUpdate) -> None:
        async with self._lock:
            now = time.monotonic()
            self._expire(now)
            current = self._sessions.get(session_id, (now, Session()))[1]
            self._sessions[session_id] = (now, _updated(current, update, self.max_turns))
            self._sessions.move_to_end(session_id)
            self._expire(now)

    async def hold(self, session_id: str, longest_s: float) -> TurnHold:
        if session_id in self._busy:
            raise SessionBusy(session_id)
        self._busy.add(session_id)
        return _MemoryHold(self._busy, session_id)

    async def aclose(self) -> None:
        self._sessions.clear()


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
