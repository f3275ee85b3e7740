"""Conversations in this process's memory (the default): bounded by a number of sessions (least
recently used go first), turns per session (oldest go first) and idle time."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from service.recommend.sessions.model import Session, SessionBusy, SessionUpdate, TurnHold


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
