"""What stops the service before it serves: shared by every layer, importing none."""

from __future__ import annotations


class StartupError(Exception):
    """The service cannot run as configured; ``str()`` is the one line for the operator, who
    sees it instead of a stack trace (``python -m service`` exits with status 2)."""
