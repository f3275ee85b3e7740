"""Who may talk to the service (issue #21): an optional token, allowed Host names, the API's map
off by default, and probes that orchestrators reach without credentials."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.api.app import create_app
from service.settings import Settings
from tests.fakes import ScriptedEngine
from tests.support.queries import BASE_INFO, QUERY, SSE
from tests.support.sse import app_client, app_events

TOKEN = "s3cret-token-for-the-relay"
REFUSED = {"status": 401, "message": "인증 토큰이 없거나 올바르지 않습니다.", "data": None}


def _get(settings: Settings, *requests: tuple[str, dict[str, str]]) -> list[httpx.Response]:
    async def scenario() -> list[httpx.Response]:
        app = create_app(settings, ScriptedEngine())
        app.state.ready.set()
        async with app_client(app) as client:
            return [await client.get(path, headers=headers) for path, headers in requests]

    return asyncio.run(scenario())


def test_without_settings_it_serves_as_before_but_keeps_its_api_map_to_itself() -> None:
    answer, docs, schema = _get(
        Settings(_env_file=None),
        (f"{BASE_INFO}?location=도시&workType=사무직&category=비건", {}),
        ("/docs", {}),
        ("/openapi.json", {}),
    )
    assert answer.status_code == 200
    assert docs.status_code == 404 and schema.status_code == 404
    docs, schema = _get(Settings(_env_file=None, docs_enabled=True), ("/docs", {}), ("/openapi.json", {}))
    assert docs.status_code == 200 and schema.json()["info"]["title"]


def test_with_a_token_every_endpoint_but_the_probes_needs_it() -> None:
    settings = Settings(_env_file=None, api_token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    query = "?location=도시&workType=사무직&category=비건"
    missing, wrong, metrics_missing, page_missing, health, ready, allowed, metrics = _get(
        settings,
        (f"{BASE_INFO}{query}", {}),
        (f"{BASE_INFO}{query}", {"Authorization": "Bearer not-the-token"}),
        ("/metrics", {}),
        ("/", {}),
        ("/health", {}),
        ("/ready", {}),
        (f"{BASE_INFO}{query}", bearer),
        ("/metrics", bearer),
    )
    for refused in (missing, wrong, metrics_missing, page_missing):
        assert refused.status_code == 401 and refused.json() == REFUSED
        assert refused.headers["www-authenticate"] == "Bearer"
    assert health.status_code == 200 and ready.status_code == 200
    assert allowed.status_code == 200 and metrics.status_code == 200


def test_a_stream_reader_without_the_token_gets_the_error_in_band() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        app = create_app(Settings(_env_file=None, api_token=TOKEN), ScriptedEngine())
        async with app_client(app) as client:
            return await app_events(client, "GET", BASE_INFO, params=QUERY)

    assert asyncio.run(scenario()) == [("error", REFUSED), ("close", REFUSED)]


def test_only_the_allowed_host_names_are_answered() -> None:
    settings = Settings(_env_file=None, allowed_hosts="leafresh.internal, *.svc.cluster.local")
    query = f"{BASE_INFO}?location=도시&workType=사무직&category=비건"
    rebound, internal, with_port, wildcard, probe = _get(
        settings,
        (query, {"Host": "attacker.example"}),
        (query, {"Host": "leafresh.internal"}),
        (query, {"Host": "LEAFRESH.internal:8000"}),
        (query, {"Host": "leafresh.prod.svc.cluster.local"}),
        ("/ready", {"Host": "10.0.0.7:8000"}),  # a probe by address
    )
    assert rebound.status_code == 400 and rebound.json()["status"] == 400
    assert [r.status_code for r in (internal, with_port, wildcard, probe)] == [200, 200, 200, 200]
    (in_band,) = _get(settings, (query, {"Host": "attacker.example", **SSE}))
    assert in_band.status_code == 200 and "event: error" in in_band.text  # in-band for stream readers
