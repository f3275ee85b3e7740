"""``python -m service`` as a child process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """A service started with ``env`` over the caller's environment. ``log_path``: its output
    goes there (else it shares the caller's). ``cpus``: the cores it may run on (taskset's list,
    e.g. "1"), so that replicas on one machine do not fight for a core. Ready to use when
    ``wait`` returns."""

    def __init__(
        self, env: dict[str, str], log_path: Path | None = None, port: int | None = None, cpus: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if k != "HOST"}  # the default, 0.0.0.0, unless env says
        full_env = {**inherited, "PORT": str(self.port), "PYTHONUNBUFFERED": "1", **env}
        command = [*(["taskset", "-c", cpus] if cpus else []), sys.executable, "-m", "service"]
        if log_path is None:
            self.process = subprocess.Popen(command, cwd=ROOT, env=full_env)
        else:
            with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(
                    command, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
                )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""

    def wait(self, path: str = "/ready", timeout_s: float = 300.0) -> ServiceProcess:
        """Until ``path`` answers 200: ``/health`` once it listens, ``/ready`` once the model
        is loaded and warm (what a user or a benchmark wants)."""
        wait_until_answers(self.process, f"{self.base_url}{path}", timeout_s, self.log)
        return self

    def stop(self) -> None:
        stop_process(self.process)


def wait_until_answers(process: subprocess.Popen[bytes], url: str, timeout_s: float, log: Callable[[], str]) -> None:
    """Until ``url`` answers 200; the child exiting or the time running out stops it with its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"{url} did not answer 200 in {timeout_s:.0f} s:\n{log()}")
        time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
