"""Reading the service's Prometheus metrics."""

from __future__ import annotations

import httpx


def metric(base_url: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` (0.0 before its first observation)."""
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
