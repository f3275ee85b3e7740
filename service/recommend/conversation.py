"""How a free-text message moves the conversation: category, place and kind of work.

Rules from CONTRACT.md (Sessions), in this order:
1. a category named by its label, code or one of its keywords switches to it; when several are
   named, the last one wins ("채식 말고 운동" -> 플로깅);
2. 원래/처음/이전/원래대로/기존 go back to the session's base category;
3. 아무거나/다른거/새로운거/딴거 move to a category other than the current one (the next one in
   catalog order, so asking again keeps showing new ones);
4. otherwise the category stays.
Places and kinds of work named in the message replace the session's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.recommend.catalog import (
    BACK_TO_BASE_WORDS,
    CATEGORIES,
    LOCATION_WORDS,
    ORDINARY_WORDS,
    SOMETHING_ELSE_WORDS,
    WORK_TYPE_WORDS,
    Category,
    category_by_code,
)
from service.recommend.korean import Words, normalise

# Particles and endings that may follow a place word ("산에서", "도시의", "바다로").
_PARTICLES = (
    "",
    "은",
    "는",
    "이",
    "가",
    "을",
    "를",
    "에",
    "에서",
    "에서는",
    "에서도",
    "으로",
    "로",
    "의",
    "도",
    "만",
    "과",
    "와",
    "이랑",
    "랑",
    "에서의",
    "근처",
    "쪽",
)
_WORD = re.compile(r"[가-힣a-z0-9_]+")


@dataclass(frozen=True)
class Steering:
    category: Category
    location: str | None
    work_type: str | None


def mentioned_category(message: str) -> Category | None:
    """The category the message names last, by label, code or keyword, each at a word start."""
    words = Words.of(message)
    best: tuple[int, int, Category] | None = None
    for category in CATEGORIES:
        for word in (category.label, category.code, *category.synonyms, *category.keywords):
            end = words.last_end(word, ORDINARY_WORDS)
            if end < 0:
                continue
            # Later mention wins; where two end together, the longer word (디지털 탄소 over 탄소).
            key = (end, len(word), category)
            if best is None or key[:2] > best[:2]:
                best = key
    return best[2] if best else None


def _mentions_place(message: str, word: str) -> bool:
    return any(token.startswith(word) and token[len(word) :] in _PARTICLES for token in _WORD.findall(message))


def mentioned_location(message: str) -> str | None:
    normal = normalise(message)
    for label, words in LOCATION_WORDS.items():
        if any(_mentions_place(normal, word) for word in words):
            return label
    return None


def mentioned_work_type(message: str) -> str | None:
    words = Words.of(message)
    for label, names in WORK_TYPE_WORDS.items():
        if any(words.mentions(name, ORDINARY_WORDS) for name in names):
            return label
    return None


def has_blocked_word(message: str, blocked: tuple[str, ...]) -> bool:
    """Whether the message uses one of the blocked words, read as Korean (service.recommend.korean)."""
    words = Words.of(message)
    return any(words.mentions(word, ORDINARY_WORDS) for word in blocked)


def _next_category(current: Category) -> Category:
    index = CATEGORIES.index(current)
    return CATEGORIES[(index + 1) % len(CATEGORIES)]


def steer(message: str, current_code: str, base_code: str, location: str | None, work_type: str | None) -> Steering:
    current = category_by_code(current_code)
    words = Words.of(message)
    named = mentioned_category(message)
    if named is not None:
        category = named
    elif any(words.mentions(word, ORDINARY_WORDS) for word in BACK_TO_BASE_WORDS):
        category = category_by_code(base_code)
    elif any(words.mentions(word, ORDINARY_WORDS) for word in SOMETHING_ELSE_WORDS):
        category = _next_category(current)
    else:
        category = current
    return Steering(
        category=category,
        location=mentioned_location(message) or location,
        work_type=mentioned_work_type(message) or work_type,
    )
