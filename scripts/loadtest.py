"""Load test: N concurrent stream readers for a set time against a running service.

    .venv/bin/python -m scripts.loadtest --start --clients 4 --duration 60
    make loadtest CLIENTS=16 DURATION=60

Loopback only (the script refuses any other host), bounded in time and in requests. Each
client reads base-info streams one after another, as the Spring relay does, and checks that
every accepted stream ended with exactly one ``close`` and nothing after it. It reports accepted,
rejected (a clean 503) and failed requests, latency percentiles, the server's memory at start and
end, and the time from a reader leaving to the server stopping its generation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from tests.support.metrics import metric
from tests.support.queries import BASE_INFO as PATH
from tests.support.queries import QUERY, SSE, as_user
from tests.support.service_process import ServiceProcess
from tests.support.sse import ends_with_one_close, parse_stream


@dataclass
class Results:
    accepted: list[float] = field(default_factory=list)
    first_piece: list[float] = field(default_factory=list)
    rejected: int = 0
    failed: list[str] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, results: Results, user: int) -> None:
    started = time.perf_counter()
    first: float | None = None
    chunks: list[str] = []
    try:
        async with client.stream("GET", PATH, params=QUERY, headers=as_user(user)) as response:
            if response.status_code == 503:
                results.rejected += 1
                return
            async for chunk in response.aiter_text():
                if first is None and "event: challenge" in chunk:
                    first = time.perf_counter() - started
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        results.failed.append(f"transport: {type(exc).__name__}")
        return
    events = parse_stream("".join(chunks))
    names = [name for name, _ in events]
    if not ends_with_one_close(names):
        results.failed.append(f"close events {names.count('close')}, last {names[-1:]}")
        return
    status = json.loads(events[-1][1])["status"]
    if status == 200:
        results.accepted.append(time.perf_counter() - started)
        if first is not None:
            results.first_piece.append(first)
    elif status == 503:
        results.rejected += 1
    else:
        results.failed.append(f"close status {status}")


async def client_loop(base: str, deadline: float, budget: list[int], results: Results, user: int) -> None:
    """One user asking again as soon as an answer ends."""
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(600.0)) as client:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            await one_request(client, results, user)


async def disconnect_probe(base: str) -> float:
    """Seconds from closing a stream mid-answer to the server counting it cancelled."""
    before = metric(base, "leafresh_generations_cancelled_total")
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(600.0)) as client:
        async with client.stream("GET", PATH, params=QUERY, headers=SSE) as response:
            seen = 0
            async for chunk in response.aiter_text():
                seen += chunk.count("event: challenge")
                if seen >= 3:
                    break
        left = time.perf_counter()
    while metric(base, "leafresh_generations_cancelled_total") <= before:
        if time.perf_counter() - left > 30:
            return float("nan")
        await asyncio.sleep(0.005)
    return time.perf_counter() - left


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a loopback address")
    parser.add_argument("--start", action="store_true", help="start the service (embedded model) for the run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to keep sending new requests")
    parser.add_argument("--max-requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    if args.start:
        port = 18500 + os.getpid() % 400
        args.url = f"http://127.0.0.1:{port}"
    host = urlparse(args.url).hostname or ""
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("loadtest sends traffic to loopback addresses only")
    server = (
        ServiceProcess(
            {"HOST": "127.0.0.1", "LEAFRESH_LOG_LEVEL": "WARNING"}, port=int(urlparse(args.url).port or 8000)
        ).wait("/ready")
        if args.start
        else None
    )
    try:
        memory_start = metric(args.url, "process_resident_memory_bytes")
        results = Results()
        budget = [args.max_requests]
        started = time.monotonic()
        deadline = started + args.duration

        async def run_all() -> None:
            await asyncio.gather(*(client_loop(args.url, deadline, budget, results, n) for n in range(args.clients)))

        asyncio.run(run_all())
        elapsed = time.monotonic() - started
        memory_end = metric(args.url, "process_resident_memory_bytes")
        stop_s = asyncio.run(disconnect_probe(args.url))
    finally:
        if server is not None:
            server.stop()

    report: dict[str, Any] = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "accepted": len(results.accepted),
        "rejected_503": results.rejected,
        "failed": len(results.failed),
        "latency_p50_s": percentile(results.accepted, 0.5),
        "latency_p90_s": percentile(results.accepted, 0.9),
        "latency_p99_s": percentile(results.accepted, 0.99),
        "first_piece_p50_s": percentile(results.first_piece, 0.5),
        "first_piece_max_s": max(results.first_piece, default=float("nan")),
        "answers_per_minute": len(results.accepted) / elapsed * 60,
        "memory_start_mib": memory_start / 2**20,
        "memory_end_mib": memory_end / 2**20,
        "disconnect_to_cancel_s": stop_s,
        "failures": results.failed[:20],
        "mean_latency_s": statistics.fmean(results.accepted) if results.accepted else float("nan"),
    }
    for key, value in report.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        sys.stdout.write(f"{key:<24} {shown}\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
