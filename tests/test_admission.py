"""The engine's slots shared fairly between clients (issue #21): exact counts, a share per
client, and freed slots handed to the waiting clients in turn."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from service.metrics import Metrics
from service.recommend.admission import Admission, PromptBudget
from service.recommend.contract import Overloaded, QueueTimeout


def _admission(
    slots: int, max_queue: int, client_slots: int | None = None, client_queue: int | None = None
) -> Admission:
    return Admission(slots, max_queue, 30, 5, Metrics(), client_slots=client_slots, client_queue=client_queue)


async def _hold(admission: Admission, client: str, started: list[str], release: asyncio.Event, name: str) -> None:
    async with admission.ticket(client):
        started.append(name)
        await release.wait()


def test_a_burst_on_an_idle_server_is_counted_exactly() -> None:
    """20 at once, 4 slots, 16 queue places: 4 run, 16 wait, none refused (a slot's new holder
    once still counted as waiting, and 3-4 were refused as "queue full (16)")."""

    async def scenario() -> tuple[int, int, int]:
        admission = _admission(4, 16)
        release = asyncio.Event()
        started: list[str] = []
        tasks = [asyncio.create_task(_hold(admission, f"u{n}", started, release, f"u{n}")) for n in range(20)]
        await asyncio.sleep(0.01)
        running, waiting = len(started), admission.waiting
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = sum(isinstance(result, Overloaded) for result in results)
        return running, waiting, refused

    assert asyncio.run(scenario()) == (4, 16, 0)


def test_one_client_holds_at_most_its_share_and_another_starts_at_once() -> None:
    async def scenario() -> tuple[list[str], int]:
        admission = _admission(4, 16, client_slots=2, client_queue=4)
        release = asyncio.Event()
        started: list[str] = []
        flood = [asyncio.create_task(_hold(admission, "abuser", started, release, f"a{n}")) for n in range(6)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):  # its 7th: 2 running + 4 waiting is its share
            admission.check("abuser")
        normal = asyncio.create_task(_hold(admission, "normal user", started, release, "normal"))
        await asyncio.sleep(0.01)
        seen = list(started)
        release.set()
        await asyncio.gather(*flood, normal)
        return seen, admission.waiting

    seen, waiting = asyncio.run(scenario())
    assert seen == ["a0", "a1", "normal"] and waiting == 0


def test_freed_slots_go_to_the_waiting_clients_in_turn() -> None:
    async def scenario() -> list[str]:
        admission = _admission(1, 16)
        order: list[str] = []
        gates = {name: asyncio.Event() for name in ("a1", "a2", "a3", "b1")}

        async def turn(client: str, name: str) -> None:
            async with admission.ticket(client):
                order.append(name)
                await gates[name].wait()

        tasks = []
        for client, name in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")):
            tasks.append(asyncio.create_task(turn(client, name)))
            await asyncio.sleep(0)
        for name in ("a1", "a2", "b1", "a3"):
            await asyncio.sleep(0.01)
            gates[name].set()
        await asyncio.gather(*tasks)
        return order

    # First come, first served would give b1 the slot only after a3.
    assert asyncio.run(scenario()) == ["a1", "a2", "b1", "a3"]


def test_a_ticket_that_times_out_or_is_cancelled_leaves_the_queue() -> None:
    async def scenario() -> int:
        admission = Admission(1, 4, 0.05, 5, Metrics())
        release = asyncio.Event()
        started: list[str] = []
        holder = asyncio.create_task(_hold(admission, "a", started, release, "a"))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueTimeout):
            async with admission.ticket("b"):
                pass
        leaving = asyncio.create_task(_hold(admission, "c", started, release, "c"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        waiting = admission.waiting
        release.set()
        await holder
        return waiting

    assert asyncio.run(scenario()) == 0


def test_a_clients_message_tokens_are_budgeted_per_minute() -> None:
    now = [0.0]
    budget = PromptBudget(4000, clock=lambda: now[0])
    assert budget.spend("amplifier", 2000) == 0.0
    assert budget.spend("amplifier", 2000) == 0.0
    wait = budget.spend("amplifier", 2000)  # a third 2,000-token prompt within the minute
    assert wait == pytest.approx(30.0)  # 2,000 tokens at 4,000 a minute
    assert budget.spend("normal user", 40) == 0.0  # nobody else pays for it
    now[0] += 30
    assert budget.spend("amplifier", 2000) == 0.0
    assert budget.spend("anyone", 10**6) == 0.0  # longer than the whole budget: goes alone, once


def test_resizing_starts_the_waiting_at_once_and_fewer_slots_hold_new_ones_back() -> None:
    """LEAFRESH_PARALLEL=auto settles after the warm-up (issue #22)."""

    async def scenario() -> tuple[int, int, int]:
        admission = _admission(2, 16)
        release = asyncio.Event()
        started: list[str] = []
        tasks = [asyncio.create_task(_hold(admission, f"u{n}", started, release, f"u{n}")) for n in range(6)]
        await asyncio.sleep(0.01)
        before = len(started)
        admission.resize(5, 2)
        await asyncio.sleep(0.01)
        grown = len(started)
        admission.resize(1, 1)
        late = asyncio.create_task(_hold(admission, "late", started, release, "late"))
        await asyncio.sleep(0.01)
        shrunk = len(started)
        release.set()
        await asyncio.gather(*tasks, late)
        return before, grown, shrunk

    assert asyncio.run(scenario()) == (2, 5, 5)
