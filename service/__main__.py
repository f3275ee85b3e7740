"""``python -m service``: check the settings and the model, load it, then serve.

Everything that can be wrong with the set-up is found before the server binds its port and
reported as one line, not a stack trace (the original team lost hours to those).
"""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import ValidationError

from service.api.app import create_app
from service.api.server import serve
from service.engine.loader import load_engine
from service.logs import configure_logging
from service.recommend import answer
from service.recommend.sessions import open_session_store
from service.settings import Settings, describe_settings_error
from service.startup import StartupError

logger = logging.getLogger("service")


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
    except StartupError as exc:  # a model file, a grammar, Redis, the context: one line each
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
