"""The page at ``/``: a small self-contained client to try the service in a browser (issue #7).

One HTML file, no CDN and no build step. Rendered once with the choices from the catalog, so
the page never offers a value the API would refuse, and with a Content-Security-Policy that
allows exactly its own inline script and style (by hash) and requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from pathlib import Path

from service.recommend.catalog import CATEGORIES, LOCATIONS, WORK_TYPES

PAGE_PATH = Path(__file__).with_name("index.html")
_OPTIONS_SLOT = re.compile(r"/\*LEAFRESH_OPTIONS\*/\{[^\n]*\};")


def page_options() -> dict[str, list[str]]:
    return {
        "locations": list(dict.fromkeys(LOCATIONS.values())),
        "workTypes": list(dict.fromkeys(WORK_TYPES.values())),
        "categories": [category.label for category in CATEGORIES],
    }


def _hash_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@cache
def render_page() -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy header."""
    template = PAGE_PATH.read_text(encoding="utf-8")
    options = json.dumps(page_options(), ensure_ascii=False)
    html, count = _OPTIONS_SLOT.subn(lambda _: options + ";", template, count=1)
    if count != 1:
        raise RuntimeError(f"{PAGE_PATH}: the options slot is missing")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_hash_source(text) for text in scripts),
            "style-src " + " ".join(_hash_source(text) for text in styles),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, policy
