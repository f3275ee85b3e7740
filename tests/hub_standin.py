"""A stand-in for the Hugging Face Hub on loopback: the file endpoints huggingface_hub calls
(HEAD/GET /{owner}/{repo}/resolve/{revision}/{file}, with Range for resumed downloads), and
the error answers the real hub gives for gated, missing and unauthorised requests."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD_TOKEN = "hf_good_token_for_tests"


@dataclass
class HubFile:
    content: bytes
    gated: bool = False
    private: bool = False
    advertised_size: int | None = None  # lie about the size (to test the disk check)
    advertised_sha256: str | None = None  # lie about the checksum

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.content).hexdigest()


@dataclass
class Hub:
    files: dict[str, HubFile] = field(default_factory=dict)  # "owner/repo/file" -> file
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, authorization


def make_handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _error(self, status: int, code: str | None, message: str) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, with_body: bool) -> None:
            auth = self.headers.get("Authorization", "")
            hub.requests.append((self.command, self.path, auth))
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                self._error(404, None, "Not Found")
                return
            repo, file = "/".join(parts[:2]), "/".join(parts[4:])
            if auth and auth != f"Bearer {GOOD_TOKEN}":
                self._error(401, None, "Invalid credentials in Authorization header")
                return
            repo_files = {key: value for key, value in hub.files.items() if key.startswith(repo + "/")}
            if not repo_files:
                self._error(401, "RepoNotFound", "Repository not found")
                return
            entry = hub.files.get(f"{repo}/{file}")
            if entry is None:
                self._error(404, "EntryNotFound", "Entry not found")
                return
            if (entry.gated or entry.private) and not auth:
                self._error(401, "RepoNotFound", "Repository not found")
                return
            if entry.gated:
                self._error(403, "GatedRepo", "Access to model is restricted")
                return
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged[6:].split("-")[0] or 0)
            body = entry.content[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.advertised_size or len(entry.content)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(entry.content) - 1}/{len(entry.content)}")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._serve(with_body=False)

        def do_GET(self) -> None:
            self._serve(with_body=True)

    return Handler


class RunningHub:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
