"""Reading a stream as a consumer does, and the contract every stream keeps."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse

from service.recommend.answer import Answer, render
from tests.support.queries import BASE, SSE

TIMEOUT = httpx.Timeout(180.0)


def app_client(app: Any) -> httpx.AsyncClient:
    """A client of the app in this process (no server, no socket)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


async def app_response_events(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    """The response and every event of one stream from the app in this process, its data
    parsed as JSON."""
    headers = {**SSE, **kwargs.pop("headers", {})}
    async with aconnect_sse(client, method, url, headers=headers, **kwargs) as source:
        return source.response, [(event.event, json.loads(event.data)) async for event in source.aiter_sse()]


async def app_events(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Every event of one stream from the app in this process, its data parsed as JSON."""
    return (await app_response_events(client, method, url, **kwargs))[1]


def relay_read(url: str, method: str = "GET", **kwargs: Any) -> tuple[httpx.Response, list[tuple[str, str]]]:
    """What Spring's bodyToFlux(ServerSentEvent) does: every event with data, in order,
    until the stream ends; keep-alive comments have no data and are dropped."""
    with httpx.Client(timeout=TIMEOUT) as client, connect_sse(client, method, url, **kwargs) as source:
        events = [(event.event, event.data) for event in source.iter_sse() if event.data]
        return source.response, events


def parse_stream(text: str) -> list[tuple[str, str]]:
    """Events of a whole SSE body read as text (for clients that read raw bytes)."""
    events = []
    for frame in text.split("\n\n"):
        name, data = "", ""
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if name or data:
            events.append((name, data))
    return events


def ends_with_one_close(names: list[str]) -> bool:
    """The rule every stream keeps, whatever failed: exactly one close, and it is last."""
    return bool(names) and names[-1] == "close" and names.count("close") == 1


def check_success_stream(events: list[tuple[str, str]]) -> Answer:
    """A successful answer as the browser reads it: pieces, then one close carrying the answer
    whose rendering the pieces add up to."""
    names = [name for name, _ in events]
    assert ends_with_one_close(names), names
    assert set(names) == {"challenge", "close"}, names
    bodies = [json.loads(data) for _, data in events]  # the browser JSON.parses every event
    pieces = [body["data"] for body in bodies[:-1]]
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert all(body["status"] == 200 and body["message"] == "토큰 생성" for body in bodies[:-1])
    close = bodies[-1]
    assert (close["status"], close["message"]) == (200, "모든 챌린지 추천 완료")
    answer = Answer.model_validate(close["data"])
    assert "".join(pieces) == render(answer)
    assert "\ufffd" not in "".join(pieces)
    assert [c.title[:3] for c in answer.challenges] == ["1. ", "2. ", "3. "]
    assert re.search("[가-힣]", render(answer))
    return answer


def read_close(base_url: str, path: str, params: dict[str, str]) -> dict[str, Any]:
    """One stream of ``path`` under the recommendation routes, as the relay reads it: no error,
    one close, pieces that add up to its answer; the close's body."""
    _, raw = relay_read(f"{base_url}{BASE}{path}", params=params, headers=SSE)
    events = [(name, json.loads(data)) for name, data in raw]
    names = [name for name, _ in events]
    assert ends_with_one_close(names) and "error" not in names, events[-2:]
    close: dict[str, Any] = events[-1][1]
    pieces = "".join(data["data"] for name, data in events if name == "challenge")
    assert pieces == render(Answer.model_validate(close["data"]))
    return close
