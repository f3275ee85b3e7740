"""Requests as the consumers send them, checked into typed values.

Validation follows CONTRACT.md's table exactly: the first missing field in the order
location, workType, category; then every value outside the lists at once, in
``data.invalidFields``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field

from service.catalog import Category, find_category, find_location, find_work_type
from service.contract import MSG_INVALID_CHOICE, MSG_REQUIRED, InvalidInput

BASE_INFO_FIELDS = ("location", "workType", "category")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


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


def decode_twice_encoded(value: str) -> str:
    """A query value some client percent-encoded twice ("%25EB%258F…" arrives as "%EB%8F…"
    after the framework's one decoding): decode once more when that gives valid UTF-8."""
    if not _PERCENT_ESCAPE.search(value):
        return value
    try:
        return unquote(value, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return value


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
    session_id = values.get("sessionId")
    return BaseInfoRequest(
        session_id=session_id.strip() if session_id and session_id.strip() else None,
        location=location,
        work_type=work_type,
        category=category,
    )
