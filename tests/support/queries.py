"""The requests we send: the routes, and base-info queries as production sends them."""

from __future__ import annotations

from service.recommend.catalog import CATEGORIES

BASE = "/ai/chatbot/recommendation"
BASE_INFO = f"{BASE}/base-info"
SSE = {"Accept": "text/event-stream"}
QUERY = {"location": "도시", "workType": "사무직", "category": "비건"}


def rotating_queries(count: int, offset: int = 0) -> list[dict[str, str]]:
    """Base-info queries with a different category each time, as production sends them."""
    return [{**QUERY, "category": CATEGORIES[(offset + i) % len(CATEGORIES)].label} for i in range(count)]
