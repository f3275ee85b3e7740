"""``python -m service``: check the settings and the model, load it, then serve.

Everything that can be wrong with the set-up is found before the server binds its port and
reported as one line, not a stack trace (the original team lost hours to those).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from service.api.app import create_app, memory_sessions
from service.api.server import serve
from service.engine.loader import load_engine
from service.engine.model_files import ModelFileError
from service.logs import configure_logging, redact_url
from service.recommend import answer
from service.recommend.serving import StartupError
from service.recommend.sessions import SessionStore
from service.settings import Settings, describe_settings_error

logger = logging.getLogger("service")


def open_session_store(settings: Settings) -> SessionStore:
    """The configured store; an unreachable Redis stops start-up with one line."""
    if settings.session_url is None:
        return memory_sessions(settings)
    from service.recommend.sessions import RedisSessionStore

    def store() -> RedisSessionStore:
        return RedisSessionStore(
            settings.session_url or "",
            settings.max_turns,
            settings.session_idle_s,
            turn_lease_s=settings.session_lock_s,
            timeout_s=settings.session_timeout_s,
        )

    async def ping() -> None:
        # A throwaway client: connections belong to the event loop that made them, and the
        # server runs its own loop later.
        probe = store()
        try:
            await probe.ping()
        finally:
            await probe.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:
        raise StartupError(
            f"세션 저장소(Redis)에 연결할 수 없습니다: {redact_url(settings.session_url)} ({type(exc).__name__}) — "
            "Redis가 실행 중인지, LEAFRESH_SESSION_URL이 맞는지 확인하세요"
        ) from exc
    return store()


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"leafresh: {describe_settings_error(exc)}\n")
        return 2
    configure_logging(settings.log_level)
    try:
        sessions = open_session_store(settings)
        engine = load_engine(settings, answer.grammars())
        app = create_app(settings, engine, sessions)
    except (ModelFileError, StartupError) as exc:
        sys.stderr.write(f"leafresh: {exc}\n")
        return 2
    logger.info("serving on http://%s:%d", settings.host, settings.port)
    if settings.api_token is None:
        logger.warning(
            "LEAFRESH_API_TOKEN is not set: anyone who can reach %s:%d can use every endpoint and read or steer any "
            "conversation by its sessionId; set a token, or keep the port reachable by the relay alone",
            settings.host,
            settings.port,
        )
    # uvicorn re-raises a signal that stopped it to the handler it found: with this one, a
    # shutdown ends with exit status 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    serve(
        app,
        settings.host,
        settings.port,
        app.state.drain,
        lambda: app.state.service.shutdown_grace_s,
        settings.request_timeout_s,
    )
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
