"""``python -m service``: check the settings and the model, load it, then serve.

Everything that can be wrong with the set-up is found before the server binds its port and
reported as one line, not a stack trace (the original team lost hours to those).
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.engine.loader import load_engine
from service.logs import configure_logging
from service.model_files import ModelFileError
from service.serving import StartupError
from service.settings import Settings, describe_settings_error

logger = logging.getLogger("service")


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"leafresh: {describe_settings_error(exc)}\n")
        return 2
    configure_logging(settings.log_level)
    try:
        engine = load_engine(settings)
        app = create_app(settings, engine)
    except (ModelFileError, StartupError) as exc:
        sys.stderr.write(f"leafresh: {exc}\n")
        return 2
    logger.info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
