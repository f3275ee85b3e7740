"""Who may use the engine now, who waits, and who is told to come back later: fairly between
clients (issue #21).

A request takes a ticket before its response starts, so a full queue is refused with a real
HTTP 503 (and Retry-After) to clients that read statuses. A ticket then waits, at most
LEAFRESH_QUEUE_TIMEOUT_S, for one of the engine's slots; waiting is never unbounded.

Fairness: until issue #21 one client with 20 streams, topped up as answers finished, held all 4
slots and all 16 queue places, and everyone else got 503. Now each client (``client_key`` in
the routes: the relay's client header, else the session, else the peer address) may hold at
most ``client_slots`` slots and ``client_queue`` queue places, and a freed slot goes to the
waiting clients in turn (round-robin), not to whoever asked first. So a normal user always
finds a slot free or next.

The counts are exact: a ticket stops counting as waiting the moment a slot is handed to it (an
asyncio.Semaphore wakes a waiter but counts it out only when it runs again, and a burst of 20
once had 3-4 refused as "queue full (16)" while only 13 waited).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from time import perf_counter
from types import TracebackType

from service.metrics import Metrics
from service.recommend.contract import Overloaded, QueueTimeout


class Ticket:
    def __init__(self, admission: Admission, client: str) -> None:
        self._admission = admission
        self.client = client
        self._holding = False
        self.waited_s = 0.0

    async def __aenter__(self) -> Ticket:
        admission = self._admission
        started = perf_counter()
        granted = admission._enqueue(self.client)
        try:
            done, _ = await asyncio.wait({granted}, timeout=admission.queue_timeout_s)
        except asyncio.CancelledError:
            self._give_back(granted)
            raise
        finally:
            self.waited_s = perf_counter() - started
        if not done:
            self._give_back(granted)
            admission.metrics.deadline_hits.labels(stage="queue").inc()
            raise QueueTimeout(
                headers={"Retry-After": str(admission.retry_after_s)},
                detail=f"waited {admission.queue_timeout_s}s for the engine",
            )
        self._holding = True
        admission.metrics.queue_wait.observe(self.waited_s)
        return self

    def _give_back(self, granted: asyncio.Future[None]) -> None:
        """Leave the queue, or, if a slot was handed over at this very moment, give it back."""
        if granted.done() and not granted.cancelled():
            self._admission._release(self.client)
        else:
            granted.cancel()
            self._admission._leave_queue(self.client, granted)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give back the slot, if held (safe to call twice)."""
        if self._holding:
            self._holding = False
            self._admission._release(self.client)


class Admission:
    def __init__(
        self,
        slots: int,
        max_queue: int,
        queue_timeout_s: float,
        retry_after_s: int,
        metrics: Metrics,
        client_slots: int | None = None,
        client_queue: int | None = None,
    ) -> None:
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.client_slots = client_slots or slots
        self.client_queue = client_queue if client_queue is not None else max_queue
        self._free = slots
        self._running: dict[str, int] = {}
        # Waiting tickets by client; the dict's order is the round-robin order of the clients.
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def slots(self) -> int:
        return self._free + sum(self._running.values())

    def resize(self, slots: int, client_slots: int) -> None:
        """Run ``slots`` generations at once from now on (LEAFRESH_PARALLEL=auto settles after
        the warm-up). Fewer: the running ones finish, and no new one starts until below."""
        self._free += slots - self.slots
        self.client_slots = client_slots
        self._dispatch()

    def check(self, client: str) -> None:
        """Raise Overloaded when this client's request could neither start now nor wait: the
        queue is full, or this client already holds its share of it. Called before a response
        starts, so that clients reading statuses get a real 503; ``ticket`` checks again."""
        if self._free > 0 and not self._queues and self._running.get(client, 0) < self.client_slots:
            return
        if self._waiting >= self.max_queue:
            self._refuse(f"queue full ({self.max_queue})")
        if len(self._queues.get(client, ())) >= self.client_queue:
            self._refuse(f"this client already waits with {self.client_queue} requests")

    def _refuse(self, detail: str) -> None:
        self.metrics.rejected.inc()
        raise Overloaded(headers={"Retry-After": str(self.retry_after_s)}, detail=detail)

    def ticket(self, client: str) -> Ticket:
        """A place in the queue, or Overloaded when there is none for this client."""
        self.check(client)
        return Ticket(self, client)

    # -- the queue ---------------------------------------------------------------------------

    def _enqueue(self, client: str) -> asyncio.Future[None]:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(client, deque()).append(granted)
        self._waiting += 1
        self.metrics.queue_depth.inc()
        self._dispatch()
        return granted

    def _leave_queue(self, client: str, granted: asyncio.Future[None]) -> None:
        queue = self._queues.get(client)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(granted)
            self._waiting -= 1
            self.metrics.queue_depth.dec()
        if not queue:
            del self._queues[client]

    def _release(self, client: str) -> None:
        self._running[client] -= 1
        if not self._running[client]:
            del self._running[client]
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiting clients in turn, each below its share of slots."""
        while self._free > 0:
            client = next((c for c in self._queues if self._running.get(c, 0) < self.client_slots), None)
            if client is None:
                return
            queue = self._queues.pop(client)
            granted = queue.popleft()
            if queue:
                self._queues[client] = queue  # to the back of the line
            self._waiting -= 1
            self.metrics.queue_depth.dec()
            self._free -= 1
            self._running[client] = self._running.get(client, 0) + 1
            granted.set_result(None)


class PromptBudget:
    """Message tokens each client may send per minute: a token bucket per client (issue #21).

    A free-text message of 500 rare syllables costs about 2,000 prompt tokens on a byte-level
    tokenizer; two clients sending a new one each time and leaving after the first piece kept
    every decode step full of prompt work, and a normal answer ended in 504. A normal user sends a
    few messages a minute of tens of tokens each; the default budget allows two of the longest
    possible messages a minute, or dozens of ordinary ones."""

    # Buckets kept at most; full ones (clients quiet for a minute) are dropped first.
    _MOST_CLIENTS = 10_000

    def __init__(self, tokens_per_minute: int, clock: Callable[[], float] = perf_counter) -> None:
        self.capacity = float(tokens_per_minute)
        self._rate = tokens_per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens left, when)

    def spend(self, client: str, tokens: int) -> float:
        """Take ``tokens`` from the client's bucket and return 0.0, or, when it holds too few,
        take nothing and return the seconds until it will hold enough."""
        now = self._clock()
        left, when = self._buckets.get(client, (self.capacity, now))
        left = min(self.capacity, left + (now - when) * self._rate)
        wanted = min(float(tokens), self.capacity)  # a message longer than the budget may still go, alone
        if left < wanted:
            self._buckets[client] = (left, now)
            return (wanted - left) / self._rate
        self._buckets[client] = (left - wanted, now)
        if len(self._buckets) > self._MOST_CLIENTS:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for client, (left, when) in list(self._buckets.items()):
            if left + (now - when) * self._rate >= self.capacity:
                del self._buckets[client]
