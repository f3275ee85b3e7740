"""Requests as the consumers send them, checked into typed values.

Validation follows CONTRACT.md's table exactly: the first missing field in the order
location, workType, category; then every value outside the lists at once, in
``data.invalidFields``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field

from service.recommend.catalog import Category, find_category, find_location, find_work_type
from service.recommend.contract import (
    MSG_INVALID_CHOICE,
    MSG_MESSAGE_REQUIRED,
    MSG_MESSAGE_TOO_SHORT,
    MSG_REPEATED_FIELD,
    MSG_REQUIRED,
    InvalidInput,
    UnprocessableInput,
    message_too_long,
)
from service.recommend.korean import has_hidden_characters

BASE_INFO_FIELDS = ("location", "workType", "category")
MIN_MESSAGE_CHARS = 5
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# The one rule for a session id, GET or POST: ids, UUIDs, base64 tokens; nothing that could
# reach a log line or a storage key as anything but itself.
SESSION_ID_MAX_CHARS = 200
SESSION_ID = re.compile(rf"[A-Za-z0-9._:@+/=-]{{1,{SESSION_ID_MAX_CHARS}}}")


class BaseInfoBody(BaseModel):
    """POST /base-info body. Fields are optional here so that a missing one gets the contract's
    Korean message rather than a framework error."""

    model_config = ConfigDict(extra="ignore")

    sessionId: str | None = Field(default=None, examples=["user123"])
    location: str | None = Field(default=None, examples=["도시"])
    workType: str | None = Field(default=None, examples=["사무직"])
    category: str | None = Field(default=None, examples=["제로웨이스트"])


@dataclass(frozen=True)
class BaseInfoRequest:
    session_id: str | None
    location: str
    work_type: str
    category: Category
    # Who is asking, for the fair share of the engine (service.recommend.admission); set by the
    # route from the transport, never from the body.
    client: str = "anonymous"


def decode_twice_encoded(value: str) -> str:
    """A query value some client percent-encoded twice ("%25EB%258F…" arrives as "%EB%8F…"
    after the framework's one decoding): decode once more when that gives valid UTF-8."""
    if not _PERCENT_ESCAPE.search(value):
        return value
    try:
        return unquote(value, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return value


def parse_session_id(value: str | None) -> str | None:
    """A session id, or None for none; anything else outside the rule is an invalid field."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not SESSION_ID.fullmatch(value):
        raise InvalidInput(MSG_INVALID_CHOICE, data={"invalidFields": ["sessionId"]})
    return value


def _readable(value: str) -> bool:
    # A lone surrogate (JSON "\ud800") is a str that cannot be written as UTF-8, so it could
    # never reach the model's tokenizer.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def parse_base_info(values: Mapping[str, str | None]) -> BaseInfoRequest:
    for field in BASE_INFO_FIELDS:
        if not _present(values.get(field)):
            raise InvalidInput(MSG_REQUIRED[field])
    location = find_location(values["location"] or "")
    work_type = find_work_type(values["workType"] or "")
    category = find_category(values["category"] or "")
    invalid = [
        field
        for field, found in (("location", location), ("workType", work_type), ("category", category))
        if found is None
    ]
    if invalid or location is None or work_type is None or category is None:
        raise InvalidInput(MSG_INVALID_CHOICE, data={"invalidFields": invalid})
    return BaseInfoRequest(
        session_id=parse_session_id(values.get("sessionId")),
        location=location,
        work_type=work_type,
        category=category,
    )


class FreeTextBody(BaseModel):
    """POST /free-text body."""

    model_config = ConfigDict(extra="ignore")

    sessionId: str | None = Field(default=None, examples=["user123"])
    message: str | None = Field(default=None, examples=["채식 위주로 추천해줘"])


@dataclass(frozen=True)
class FreeTextRequest:
    session_id: str | None
    message: str
    client: str = "anonymous"


def parse_free_text(values: Mapping[str, str | None], max_chars: int) -> FreeTextRequest:
    message = values.get("message")
    if message is None or not message.strip():
        raise InvalidInput(MSG_MESSAGE_REQUIRED)
    if not _readable(message) or has_hidden_characters(message):
        # NULs or zero-width spaces passed the length check as characters nobody sees (issue #21).
        raise InvalidInput(MSG_INVALID_CHOICE, data={"invalidFields": ["message"]})
    # One normal form for everything after this: the model, the matching, the stored turn.
    message = unicodedata.normalize("NFKC", message).strip()
    if len(message) < MIN_MESSAGE_CHARS:
        raise UnprocessableInput(MSG_MESSAGE_TOO_SHORT)
    if len(message) > max_chars:
        raise UnprocessableInput(message_too_long(max_chars))
    return FreeTextRequest(session_id=parse_session_id(values.get("sessionId")), message=message)


def single_values(query: Mapping[str, list[str]], names: tuple[str, ...]) -> None:
    """A query key given twice is refused, naming it: silently taking the last value hid a
    client's bug, or let a proxy and the service read different values (issue #21)."""
    repeated = [name for name in names if len(query.get(name, ())) > 1]
    if repeated:
        raise InvalidInput(MSG_REPEATED_FIELD, data={"invalidFields": repeated})
