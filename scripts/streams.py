"""Sending benchmark traffic (tests/support/traffic) and reading each stream as a reader would.

For every request: seconds to its first text, seconds to its end, and answer tokens, so that a
wave reports its aggregate tokens/s and each stream's own rate (tokens after the first text
over the time after it), the figure a reader feels (issue #22).

Our service: its first ``challenge`` event; its answer tokens come from its own log line
(``answered: ... tokens=N``, found by the request id we send), since the wire contract carries
no token counts. llama-server: the first character after the grammar-forced opening, and its
``tokens_predicted``.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.recommend import answer
from tests.support.queries import BASE, CLIENT_HEADER, SSE
from tests.support.traffic import Request

# What the grammar forces before the first word a reader sees.
OPENING = '{"recommend":"'
_ANSWERED = re.compile(r"\[(bench-\d+)\] .*answered: .*? tokens=(\d+) ")


@dataclass
class Stream:
    number: int
    route: str
    first_text_s: float
    seconds: float
    tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        """The stream's own rate once it has begun: what its reader sees."""
        after_first = self.seconds - self.first_text_s
        return self.tokens / after_first if after_first > 0 else float("nan")


@dataclass
class Wave:
    server: str
    traffic: str
    seconds: float
    streams: list[Stream] = field(default_factory=list)
    slots: int = 0  # generations the server ran at once

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def answers_per_minute(self) -> float:
        return 60 * len(self.streams) / self.seconds

    def summary(self) -> dict[str, Any]:
        firsts = [s.first_text_s for s in self.streams]
        rates = [s.tokens_per_s for s in self.streams]
        return {
            "requests": len(self.streams),
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_answer": self.tokens / len(self.streams),
            "first_text_median_s": statistics.median(firsts),
            "first_text_max_s": max(firsts),
            "stream_tokens_per_s_median": statistics.median(rates),
            "stream_tokens_per_s_min": min(rates),
        }


def request_id(request: Request) -> str:
    return f"bench-{request.number}"


async def ours(client: httpx.AsyncClient, request: Request) -> tuple[Stream, dict[str, Any] | None]:
    """One stream of our service to its ``close``: what its reader saw, and the answer."""
    headers = {**SSE, CLIENT_HEADER: request.session or f"user-{request.number}", "X-Request-Id": request_id(request)}
    started = time.perf_counter()
    first = float("nan")
    event, data = "", None
    async with client.stream("GET", f"{BASE}/{request.route}", params=request.params(), headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
                if event == "challenge" and first != first:
                    first = time.perf_counter() - started
            elif line.startswith("data: ") and event == "close":
                data = json.loads(line[len("data: ") :])
    if data is None or data.get("status") != 200:
        raise RuntimeError(f"request {request.number} ({request.route}) did not close with 200: {data}")
    return Stream(request.number, request.route, first, time.perf_counter() - started), data["data"]


async def ours_wave(base_url: str, requests: list[Request], traffic: str = "") -> tuple[Wave, list[Any]]:
    """``requests`` at once against our service: the wave (tokens filled in later from the log,
    ``with_logged_tokens``) and each request's answer data."""
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(900.0)) as client:
        results = await asyncio.gather(*(ours(client, request) for request in requests))
    wave = Wave("ours", traffic, time.perf_counter() - started, [stream for stream, _ in results])
    return wave, [data for _, data in results]


def logged_tokens(log_path: Path) -> dict[str, int]:
    """Answer tokens per request id, from the service's INFO log."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = _ANSWERED.search(line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def with_logged_tokens(waves: list[Wave], log_path: Path) -> None:
    tokens = logged_tokens(log_path)
    for wave in waves:
        for stream in wave.streams:
            stream.tokens = tokens[f"bench-{stream.number}"]


# llama-server's sampling, two ways (issue #22): "default" is what its users get, its top-k 40,
# top-p 0.95 and min-p 0.05 cut the distribution; "matched" is ours, the whole softmax. Both at
# our temperature.
PEER_SAMPLING: dict[str, dict[str, float]] = {
    "default": {},
    "matched": {"top_k": 0, "top_p": 1.0, "min_p": 0.0},
}


async def peer(
    client: httpx.AsyncClient, request: Request, tokens: list[int], sampling: dict[str, float], temperature: float
) -> Stream:
    """One streamed /completion of llama-server, with our prompt tokens."""
    body = {
        "prompt": tokens,
        "n_predict": answer.max_tokens(),
        "temperature": temperature,
        **sampling,
        "seed": request.number,
        "stream": True,
        "cache_prompt": True,
    }
    started = time.perf_counter()
    first = float("nan")
    text = ""
    predicted = 0
    async with client.stream("POST", "/completion", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[len("data: ") :])
            text += chunk.get("content", "")
            if first != first and len(text) > len(OPENING):
                first = time.perf_counter() - started
            if chunk.get("stop"):
                predicted = int(chunk.get("tokens_predicted") or chunk.get("timings", {}).get("predicted_n", 0))
    return Stream(request.number, request.route, first, time.perf_counter() - started, predicted)


async def peer_wave(
    base_url: str,
    requests: list[Request],
    prompts: dict[int, list[int]],
    sampling: str,
    temperature: float,
    traffic: str = "",
) -> Wave:
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(900.0)) as client:
        streams = await asyncio.gather(
            *(peer(client, r, prompts[r.number], PEER_SAMPLING[sampling], temperature) for r in requests)
        )
    return Wave(f"llama-server ({sampling} sampling)", traffic, time.perf_counter() - started, list(streams))
