"""Conversations, behind one small store interface with two implementations.

- ``MemorySessionStore`` (the default): one process; bounded by a number of sessions (least
  recently used go first), turns per session (oldest go first) and idle time.
- ``RedisSessionStore`` (``LEAFRESH_SESSION_URL=redis://…``): shared by every replica behind a
  load balancer, and kept across restarts.

``open_session_store`` opens the configured one: a new backend is one module here and one
branch there. What a session is and the interface are in ``model``.

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

from service.recommend.sessions.memory import MemorySessionStore
from service.recommend.sessions.model import (
    Session,
    SessionBusy,
    SessionStore,
    SessionUpdate,
    Turn,
    TurnHold,
    unreadable_fields,
)
from service.settings import Settings

__all__ = [
    "MemorySessionStore",
    "Session",
    "SessionBusy",
    "SessionStore",
    "SessionUpdate",
    "Turn",
    "TurnHold",
    "memory_store",
    "open_session_store",
    "unreadable_fields",
]


def memory_store(settings: Settings) -> MemorySessionStore:
    return MemorySessionStore(settings.max_sessions, settings.max_turns, settings.session_idle_s)


def open_session_store(settings: Settings) -> SessionStore:
    """The configured store, checked: an unreachable Redis stops start-up with one line."""
    if settings.session_url is None:
        return memory_store(settings)
    from service.recommend.sessions.redis_store import open_redis_store

    return open_redis_store(settings)
