"""Who may use the engine now, who waits, and who is told to come back later.

A request takes a ticket before its response starts, so a full queue is refused with a real
HTTP 503 (and Retry-After) to clients that read statuses. A ticket then waits, at most
LEAFRESH_QUEUE_TIMEOUT_S, for one of the engine's slots; waiting is never unbounded.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from types import TracebackType

from service.metrics import Metrics
from service.recommend.contract import Overloaded, QueueTimeout


class Ticket:
    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._queued = True
        self._holding = False
        self.waited_s = 0.0

    async def __aenter__(self) -> Ticket:
        admission = self._admission
        started = perf_counter()
        try:
            await asyncio.wait_for(admission._slots.acquire(), timeout=admission.queue_timeout_s)
        except TimeoutError as exc:
            admission.metrics.deadline_hits.labels(stage="queue").inc()
            raise QueueTimeout(
                headers={"Retry-After": str(admission.retry_after_s)},
                detail=f"waited {admission.queue_timeout_s}s for the engine",
            ) from exc
        finally:
            self.waited_s = perf_counter() - started
            self._leave_queue()
        self._holding = True
        admission.metrics.queue_wait.observe(self.waited_s)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self._admission._waiting -= 1
            self._admission.metrics.queue_depth.dec()

    def release(self) -> None:
        """Give back the queue place or the slot, whichever is held (safe to call twice)."""
        self._leave_queue()
        if self._holding:
            self._holding = False
            self._admission._slots.release()


class Admission:
    def __init__(
        self, slots: int, max_queue: int, queue_timeout_s: float, retry_after_s: int, metrics: Metrics
    ) -> None:
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._slots = asyncio.Semaphore(slots)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def check(self) -> None:
        """Raise Overloaded when the queue is full. Called before a response starts, so that
        clients reading statuses get a real 503; ``ticket`` checks again when it queues."""
        if self._waiting >= self.max_queue and self._slots.locked():
            self.metrics.rejected.inc()
            raise Overloaded(headers={"Retry-After": str(self.retry_after_s)}, detail=f"queue full ({self.max_queue})")

    def ticket(self) -> Ticket:
        """A place in the queue, or Overloaded when the queue is full."""
        self.check()
        self._waiting += 1
        self.metrics.queue_depth.inc()
        return Ticket(self)
