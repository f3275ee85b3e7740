"""Replicas as operators run them (issue #20): two service processes of the embedded model, each
pinned to its own core with one thread (so they do not fight for the CPU), sharing one real
Redis, behind the shipped deploy/haproxy.cfg. A conversation that alternates replicas, a
rolling restart under traffic, and a replica killed mid-stream. Figures go to
test-artifacts/replicas.json for the README and the issue's note."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import SSEError, connect_sse

from service.recommend.answer import Answer, render
from service.recommend.sessions import Session
from service.recommend.sessions.redis_store import RedisSessionStore
from tests.support.haproxy import LoadBalancer
from tests.support.metrics import metric
from tests.support.queries import BASE, QUERY, SSE
from tests.support.redis import RedisServer
from tests.support.service_process import ROOT, ServiceProcess, free_port
from tests.support.sse import TIMEOUT, ends_with_one_close

ARTIFACT = ROOT / "test-artifacts" / "replicas.json"
# One thread on one core each; a drain long enough for any answer here; a short turn lease so a
# killed replica's conversation is free again within seconds.
REPLICA_ENV = {
    "LEAFRESH_THREADS": "1",
    "LEAFRESH_THREAD_POLICY": "fixed",
    "LEAFRESH_SHUTDOWN_GRACE_S": "120",
    "LEAFRESH_SESSION_LOCK_S": "3",
}
MESSAGES = ("채식 위주로 추천해 줘", "이번에는 전기 아끼는 방법도 알려 줘", "원래대로 다시 추천해 줘")


class Replica:
    """One replica on its own core and a fixed port, so it can be stopped and started again."""

    def __init__(self, name: str, cpu: str, env: dict[str, str], workdir: Path) -> None:
        self.name, self.cpu, self.env, self.workdir = name, cpu, env, workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.starts = 0
        self.process = self.start()

    def start(self) -> ServiceProcess:
        self.starts += 1
        log = self.workdir / f"{self.name}-{self.starts}.log"
        self.process = ServiceProcess(self.env, log, port=self.port, cpus=self.cpu).wait(timeout_s=300)
        return self.process

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob(f"{self.name}-*.log")))


@dataclass
class Cluster:
    redis: RedisServer
    replicas: list[Replica]
    balancer: LoadBalancer
    figures: dict[str, Any] = field(default_factory=dict)

    def session(self, session_id: str) -> Session:
        async def load() -> Session:
            store = RedisSessionStore(self.redis.url, max_turns=20, idle_ttl_s=3600)
            try:
                return await store.load(session_id)
            finally:
                await store.aclose()

        return asyncio.run(load())


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, smollm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("replicas")
    env = {**REPLICA_ENV, "LEAFRESH_SESSION_URL": redis_server.url}
    replicas = [Replica("replica1", "0", env, workdir), Replica("replica2", "1", env, workdir)]
    balancer = LoadBalancer([replica.port for replica in replicas], workdir)
    for replica in replicas:
        balancer.wait_for(replica.name, "UP")
    built = Cluster(redis_server, replicas, balancer)
    yield built
    balancer.stop()
    for replica in replicas:
        replica.process.stop()
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(built.figures, indent=1, ensure_ascii=False))


def take_turn(
    base_url: str, path: str, params: dict[str, str], request_id: str | None = None
) -> tuple[str, list[tuple[str, Any]]]:
    """One stream read as the Spring relay reads it; how it ended: answered (close 200, the
    pieces add up to its answer), refused (close 503), busy (close 409) or failed (anything else)."""
    headers = {**SSE, **({"X-Request-ID": request_id} if request_id else {})}
    events: list[tuple[str, Any]] = []
    try:
        with (
            httpx.Client(timeout=TIMEOUT) as client,
            connect_sse(client, "GET", f"{base_url}{BASE}{path}", params=params, headers=headers) as source,
        ):
            events.extend((event.event, json.loads(event.data)) for event in source.iter_sse() if event.data)
    except (httpx.HTTPError, SSEError) as exc:
        return f"failed: {type(exc).__name__}", events
    names = [name for name, _ in events]
    if not ends_with_one_close(names):
        return "failed: no single close", events
    status = events[-1][1]["status"]
    if status == 200:
        pieces = "".join(data["data"] for name, data in events if name == "challenge")
        ok = pieces == render(Answer.model_validate(events[-1][1]["data"])) and "error" not in names
        return ("answered" if ok else "failed: pieces differ from the answer"), events
    return {503: "refused", 409: "busy"}.get(status, f"failed: status {status}"), events


def conversation(session_id: str) -> list[tuple[str, dict[str, str]]]:
    return [
        ("/base-info", {**QUERY, "sessionId": session_id}),
        *(("/free-text", {"sessionId": session_id, "message": message}) for message in MESSAGES[:2]),
    ]


def test_a_conversation_that_alternates_replicas_keeps_its_whole_history(cluster: Cluster) -> None:
    session_id = f"alternate-{uuid.uuid4().hex[:8]}"
    turns = [(cluster.replicas[n % 2], path, params) for n, (path, params) in enumerate(conversation(session_id))]
    turns.append((cluster.replicas[1], "/free-text", {"sessionId": session_id, "message": MESSAGES[2]}))
    for number, (replica, path, params) in enumerate(turns, start=1):
        request_id = f"{session_id}-{number}"
        outcome, _ = take_turn(replica.base_url, path, params, request_id)
        assert outcome == "answered", (number, outcome)
        assert len(cluster.session(session_id).turns) == number
        if path == "/free-text":
            # The replica that answered put every earlier turn, whoever wrote it, into the prompt.
            line = next(
                line for line in replica.logs().splitlines() if f"[{request_id}]" in line and "answered" in line
            )
            assert f"history_turns={number - 1}/{number - 1}" in line, line
    stored = [turn.message for turn in cluster.session(session_id).turns]
    assert stored[1:] == list(MESSAGES)


def test_a_rolling_restart_under_traffic_drops_no_answer(cluster: Cluster) -> None:
    stop = threading.Event()
    outcomes: list[tuple[str, str]] = []

    def reader(number: int) -> None:
        while not stop.is_set():
            for path, params in conversation(f"rolling-{number}-{uuid.uuid4().hex[:8]}"):
                if stop.is_set():
                    return
                outcome, _ = take_turn(cluster.balancer.base_url, path, params)
                outcomes.append((path, outcome))

    readers = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(4)]
    for thread in readers:
        thread.start()
    time.sleep(5)
    away: dict[str, dict[str, float]] = {}
    for replica in cluster.replicas:
        started = time.monotonic()
        replica.process.process.send_signal(signal.SIGTERM)
        assert replica.process.process.wait(timeout=180) == 0
        exited = time.monotonic() - started
        assert "every accepted request ended on its own" in replica.logs(), replica.logs()[-2000:]
        replica.start()
        cluster.balancer.wait_for(replica.name, "UP")
        away[replica.name] = {
            "drained_and_exited_s": round(exited, 1),
            "back_in_rotation_s": round(time.monotonic() - started, 1),
        }
        time.sleep(3)
    stop.set()
    for thread in readers:
        thread.join(timeout=240)
    counts = Counter(outcome if not outcome.startswith("failed") else "failed" for _, outcome in outcomes)
    cluster.figures["rolling_restart"] = {
        "requests": dict(counts),
        "replicas": away,
        "failures": [o for o in outcomes if o[1].startswith("failed")],
    }
    assert counts["failed"] == 0, outcomes
    assert counts["busy"] == 0  # each reader's turns follow one another
    assert counts["answered"] >= 8, counts


def test_a_replica_killed_mid_stream_loses_only_the_turn_it_was_writing(cluster: Cluster) -> None:
    session_id = f"killed-{uuid.uuid4().hex[:8]}"
    lb = cluster.balancer.base_url
    (first_path, first), (_, cut_turn), (_, next_turn) = conversation(session_id)
    assert take_turn(lb, first_path, first)[0] == "answered"
    seen: list[tuple[str, Any]] = []
    ended: list[str] = []

    def read_cut_turn() -> None:
        try:
            with (
                httpx.Client(timeout=TIMEOUT) as client,
                connect_sse(client, "GET", f"{lb}{BASE}/free-text", params=cut_turn, headers=SSE) as source,
            ):
                seen.extend((event.event, event.data) for event in source.iter_sse())
            ended.append("the stream ended")
        except httpx.HTTPError as exc:
            ended.append(type(exc).__name__)

    reader = threading.Thread(target=read_cut_turn, daemon=True)
    reader.start()
    while len([name for name, _ in seen if name == "challenge"]) < 3:
        assert reader.is_alive(), (seen, ended)
        time.sleep(0.02)
    (victim,) = [r for r in cluster.replicas if metric(r.base_url, "leafresh_generations_active") == 1]
    survivor = next(r for r in cluster.replicas if r is not victim)
    victim.process.process.send_signal(signal.SIGKILL)
    victim.process.process.wait()
    killed = time.monotonic()
    reader.join(timeout=60)
    # What a relay sees: the stream stops, with no close event. It must treat that as an error.
    assert "close" not in [name for name, _ in seen] and ended, (seen[-3:], ended)
    # The next turn goes through the load balancer to the survivor, once the dead replica's
    # turn lease has run out (409 until then).
    tries = 0
    while True:
        tries += 1
        request_id = f"{session_id}-next-{tries}"
        outcome = take_turn(lb, "/free-text", next_turn, request_id)[0]
        if outcome != "busy":
            break
        assert time.monotonic() - killed < 30
        time.sleep(0.5)
    assert outcome == "answered"
    assert f"[{request_id}]" in survivor.logs()
    stored = [turn.message for turn in cluster.session(session_id).turns]
    assert len(stored) == 2 and stored[1] == next_turn["message"], stored  # the cut turn left no trace
    cluster.figures["killed_mid_stream"] = {
        "reader_saw": ended[0],
        "events_before_the_cut": len(seen),
        "next_turn_answered_after_s": round(time.monotonic() - killed, 1),
        "next_turn_refused_busy": tries - 1,
        "stored_turns": len(stored),
    }
    victim.start()
    cluster.balancer.wait_for(victim.name, "UP")
