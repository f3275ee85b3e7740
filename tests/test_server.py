"""The HTTP server as a slow or hostile client meets it (issue #21): real uvicorn with our
protocol on a loopback port, a scripted engine behind it, raw sockets in front."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.api.app import create_app
from service.api.server import DrainingServer, build_server
from service.settings import Settings
from tests.fakes import ScriptedEngine
from tests.support.queries import BASE, QUERY, SSE
from tests.support.service_process import free_port

TIMEOUT_S = 1.0


def serve_in_thread(settings: Settings, engine: ScriptedEngine) -> tuple[DrainingServer, int, threading.Thread]:
    """The real server around an app on ``engine``, on a free loopback port, started."""
    app = create_app(settings, engine)
    app.state.ready.set()
    port = free_port()
    grace = float(settings.shutdown_grace_s) if settings.shutdown_grace_s != "auto" else 1.0
    running = build_server(app, "127.0.0.1", port, app.state.drain, lambda: grace, settings.request_timeout_s)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.01)
    return running, port, thread


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[DrainingServer, int]]:
    settings = Settings(_env_file=None, max_body_bytes=4096, max_message_chars=500, request_timeout_s=TIMEOUT_S)
    running, port, thread = serve_in_thread(settings, ScriptedEngine())
    yield running, port
    running.should_exit = True
    thread.join(timeout=10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds``, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
        return True, received
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received


def test_a_connection_that_sends_nothing_is_closed(server: tuple[DrainingServer, int]) -> None:
    with _connect(server[1]) as sock:
        assert _closed_within(sock, TIMEOUT_S + 3)[0]


def test_headers_trickled_a_byte_at_a_time_are_cut_off(server: tuple[DrainingServer, int]) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    with _connect(server[1]) as sock:
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > TIMEOUT_S + 3:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, _ = _closed_within(sock, 1)
    assert closed and time.monotonic() - started < TIMEOUT_S + 4


def test_a_prompt_request_on_a_kept_alive_connection_is_served(server: tuple[DrainingServer, int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server[1], timeout=10)
    statuses, sockets = [], set()
    for _ in range(2):  # the deadline is re-armed for the second request, and met
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
        sockets.add(id(connection.sock))
    connection.close()
    assert statuses == [200, 200] and len(sockets) == 1


def test_a_body_trickled_past_the_deadline_gets_408_and_the_connection_closes(
    server: tuple[DrainingServer, int],
) -> None:
    body = b'{"message": "' + "채식 위주로 추천해 줘".encode() + b'"}'
    head = f"POST {BASE}/free-text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with _connect(server[1]) as sock:
        sock.sendall(head.encode() + body[:3])
        closed, received = _closed_within(sock, TIMEOUT_S + 5)
    assert closed and received.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in received.lower()
    assert "요청을 보내는 데 시간이 너무 오래 걸렸습니다".encode() in received


def test_a_body_over_the_limit_gets_413_and_nothing_more_is_read(server: tuple[DrainingServer, int]) -> None:
    head = f"POST {BASE}/free-text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {16 * 2**20}\r\n\r\n"
    with _connect(server[1]) as sock:
        sock.sendall(head.encode() + b"x" * 1024)
        closed, received = _closed_within(sock, 5)
    assert closed and received.startswith(b"HTTP/1.1 413") and b"connection: close" in received.lower()


def test_a_second_sigterm_cuts_what_the_first_let_run() -> None:
    """The first SIGTERM drains (the stream goes on, /ready says 503); a second cuts at once."""
    settings = Settings(_env_file=None, shutdown_grace_s=600)
    running, port, thread = serve_in_thread(settings, ScriptedEngine(delay_s=0.05))  # about 5 s an answer
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        client.stream("GET", f"{BASE}/base-info", params=QUERY, headers=SSE) as stream,
    ):
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("event: ")) == "event: challenge"
        running.handle_exit(signal.SIGTERM, None)
        deadline = time.monotonic() + 5
        while client.get("/ready").status_code != 503:
            assert time.monotonic() < deadline
        started = time.monotonic()
        running.handle_exit(signal.SIGTERM, None)
        rest = list(lines)
    names = [line for line in rest if line.startswith("event: ")]
    assert names[-2:] == ["event: error", "event: close"] and names.count("event: close") == 1
    assert time.monotonic() - started < 3  # at once, not after the 600 s grace
    thread.join(timeout=15)
    assert not thread.is_alive()
