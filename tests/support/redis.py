"""A real redis-server for the session-store tests."""

from __future__ import annotations

import subprocess


class RedisServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
