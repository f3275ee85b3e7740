"""The abusive traffic of issue #21, for the fairness test and benchmark: one client keeping 20
streams open (topped up as answers end), and two clients sending free-text of 500 rare Hangul
syllables, a new text each time, leaving after the first piece (each prompt about 2,000 tokens
on the embedded model). A normal user's request is then timed against the same request alone."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

from tests.support.queries import BASE, BASE_INFO, CLIENT_HEADER, QUERY, SSE

# Syllables that byte-level tokenizers spell with several tokens each.
_RARE = "뷁똠쮉꿿쀍햏괋뛟쀵뙋쒧퓛뭬뵯쫗뾫"
ABUSER = "abuser"


def amplifying_message(number: int, length: int = 500) -> str:
    pick = random.Random(number).choice
    return "".join(pick(_RARE) for _ in range(length))


@dataclass
class Timed:
    status: int | None = None
    first_text_s: float | None = None
    answer_s: float | None = None


async def timed_request(client: httpx.AsyncClient, user: str) -> Timed:
    """One base-info stream of a normal user: its close status, first text and whole answer."""
    timed = Timed()
    started = time.perf_counter()
    async with client.stream("GET", BASE_INFO, params=QUERY, headers={**SSE, CLIENT_HEADER: user}) as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "challenge" and timed.first_text_s is None:
                    timed.first_text_s = time.perf_counter() - started
            elif line.startswith("data: ") and event == "close":
                timed.status = httpx.Response(200, content=line[6:]).json()["status"]
    timed.answer_s = time.perf_counter() - started
    return timed


async def _refused_pause() -> None:
    # A refused request is retried after a second: the measurement is about slots, queue places
    # and prompt work. A client retrying refusals in a tight loop is a request-rate flood, which
    # the load balancer's rate limit answers (README "Fair to every user"); on these 2 cores its
    # HTTP churn alone, here and in the service, starves the decode thread.
    await asyncio.sleep(1.0)


async def _hold_streams(client: httpx.AsyncClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        async with client.stream("GET", BASE_INFO, params=QUERY, headers={**SSE, CLIENT_HEADER: ABUSER}) as response:
            text = ""
            async for chunk in response.aiter_text():
                text += chunk[-200:]
                if stop.is_set():
                    return
        if "event: error" in text:
            await _refused_pause()


async def _amplify(client: httpx.AsyncClient, stop: asyncio.Event, number: int) -> None:
    sent = 0
    while not stop.is_set():
        sent += 1
        params = {"message": amplifying_message(number * 100_000 + sent)}
        headers = {**SSE, CLIENT_HEADER: f"amplifier-{number}"}
        async with client.stream("GET", f"{BASE}/free-text", params=params, headers=headers) as response:
            async for chunk in response.aiter_text():
                if "event: challenge" in chunk:
                    break  # leave after the first piece: the prompt was the point
                if "event: error" in chunk:  # refused: queue share, budget or turn
                    await _refused_pause()
                    break


async def abusive_traffic(base_url: str, stop: asyncio.Event, streams: int = 20, amplifiers: int = 2) -> None:
    limits = httpx.Limits(max_connections=streams + amplifiers + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        tasks = [asyncio.create_task(_hold_streams(client, stop)) for _ in range(streams)]
        tasks += [asyncio.create_task(_amplify(client, stop, n)) for n in range(amplifiers)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def normal_user_under_abuse(base_url: str, warm_s: float = 5.0) -> tuple[Timed, Timed]:
    """The normal user's request alone, then with the abusive traffic running for ``warm_s``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0)) as client:
        alone = await timed_request(client, "normal-user")
        stop = asyncio.Event()
        abuse = asyncio.create_task(abusive_traffic(base_url, stop))
        await asyncio.sleep(warm_s)
        loaded = await timed_request(client, "normal-user")
        stop.set()
        await abuse
    return alone, loaded
