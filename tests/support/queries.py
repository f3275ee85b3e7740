"""The requests we send: the routes, and base-info queries as production sends them."""

from __future__ import annotations

from itertools import product

from service.recommend.catalog import CATEGORIES, LOCATIONS, WORK_TYPES

BASE = "/ai/chatbot/recommendation"
BASE_INFO = f"{BASE}/base-info"
SSE = {"Accept": "text/event-stream"}
# The header the relay names its logged-in user in (LEAFRESH_CLIENT_HEADER's default).
CLIENT_HEADER = "X-Leafresh-Client"


def as_user(number: int) -> dict[str, str]:
    """Stream headers of one of many users, as production traffic comes: the fair share of the
    engine is per user, so simulated users must not all look like one client."""
    return {**SSE, CLIENT_HEADER: f"user-{number}"}


QUERY = {"location": "도시", "workType": "사무직", "category": "비건"}

# Every base-info combination a user can pick: 4 places x 4 kinds of work x 8 categories.
COMBINATIONS: tuple[dict[str, str], ...] = tuple(
    {"location": place, "workType": work, "category": category.label}
    for place, work, category in product(
        dict.fromkeys(LOCATIONS.values()), dict.fromkeys(WORK_TYPES.values()), CATEGORIES
    )
)
# A stride coprime with the number of combinations visits each once before repeating, and
# makes neighbours differ in category and, mostly, in place or kind of work too.
_STRIDE = 37


def rotating_queries(count: int, offset: int = 0) -> list[dict[str, str]]:
    """Base-info queries as production sends them: each a different place, kind of work and
    category from the one before."""
    return [dict(COMBINATIONS[((offset + i) * _STRIDE) % len(COMBINATIONS)]) for i in range(count)]
