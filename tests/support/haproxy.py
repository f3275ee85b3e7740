"""deploy/haproxy.cfg run for real on loopback, in front of replicas started by the tests.

Only the addresses change: the listening address and one ``server`` line per replica replace
the compose host names. Every other line (health checks, balancing, retries, timeouts) is the
shipped file's, so the tests prove what an operator deploys. A stats socket is added so tests
can read which replicas HAProxy considers up.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.service_process import ROOT, free_port, stop_process, wait_until_answers

SHIPPED = ROOT / "deploy" / "haproxy.cfg"


def loopback_config(listen_port: int, replica_ports: list[int], stats_socket: Path) -> str:
    text = SHIPPED.read_text(encoding="utf-8")
    text, binds = re.subn(r"^(\s+)bind \S+$", rf"\1bind 127.0.0.1:{listen_port}", text, flags=re.MULTILINE)
    servers = "".join(f"    server replica{n} 127.0.0.1:{port}\n" for n, port in enumerate(replica_ports, start=1))
    text, found = re.subn(r"(^\s+server replica\S* \S+\n)+", servers, text, flags=re.MULTILINE)
    text, globals_ = re.subn(
        r"^global\n", f"global\n    stats socket {stats_socket} level operator\n", text, flags=re.M
    )
    assert (binds, found, globals_) == (1, 1, 1), "deploy/haproxy.cfg no longer has the shape this test edits"
    return text


class LoadBalancer:
    """HAProxy with the shipped configuration on a free loopback port; its log in ``workdir``."""

    def __init__(self, replica_ports: list[int], workdir: Path) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy is not installed: run `make test`, which installs it (Debian package haproxy)")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stats_socket = workdir / "haproxy.sock"
        config = workdir / "haproxy.cfg"
        config.write_text(loopback_config(self.port, replica_ports, self.stats_socket), encoding="utf-8")
        self.log_path = workdir / "haproxy.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_until_answers(self.process, f"{self.base_url}/lb-health", 30, self.log)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def server_states(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it: UP, DOWN, or a transition such as 'UP 1/2'."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        rows = b"".join(chunks).decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        states = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") == "leafresh" and fields.get("svname", "").startswith("replica"):
                states[fields["svname"]] = fields["status"]
        return states

    def wait_for(self, replica: str, state: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.server_states().get(replica) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica} not {state} in {timeout_s:.0f} s: {self.server_states()}\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)
