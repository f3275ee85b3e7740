"""A conversation as stored: its turns, its current category, place and kind of work; the
one interface every store implements; and one turn at a time (``hold``, ``SessionBusy``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.recommend.catalog import DEFAULT_CATEGORY_CODE, find_category, find_location, find_work_type


class Turn(BaseModel):
    """What the model needs to remember of one exchange: the user's words, the request the model
    was given for them (its facts and message, shown again word for word in later turns' history),
    and a short summary of the answer (its recommend text and titles), not the whole answer."""

    model_config = ConfigDict(frozen=True)

    message: str
    recommend: str
    titles: list[str] = Field(default_factory=list)
    category: str
    # Empty in turns stored by a release before issue #22: their history shows ``message``.
    request: str = ""

    @field_validator("category", mode="before")
    @classmethod
    def _known_category(cls, value: object) -> object:
        return _known_code(value)


def _known_code(value: object) -> object:
    """A category code this release knows, else the default: a session written by another release
    during a rolling deploy is repaired, never an error on every call of its user (issue #21)."""
    if isinstance(value, str):
        category = find_category(value)
        return value if category is not None and category.code == value else DEFAULT_CATEGORY_CODE
    return value


class Session(BaseModel):
    model_config = ConfigDict(frozen=True)

    base_category: str = DEFAULT_CATEGORY_CODE
    category: str = DEFAULT_CATEGORY_CODE
    location: str | None = None
    work_type: str | None = None
    turns: list[Turn] = Field(default_factory=list)

    @field_validator("base_category", "category", mode="before")
    @classmethod
    def _known_category(cls, value: object) -> object:
        return _known_code(value)

    @field_validator("location", mode="before")
    @classmethod
    def _known_location(cls, value: object) -> object:
        return find_location(value) if isinstance(value, str) else value

    @field_validator("work_type", mode="before")
    @classmethod
    def _known_work_type(cls, value: object) -> object:
        return find_work_type(value) if isinstance(value, str) else value


class SessionUpdate(BaseModel):
    """Everything one finished turn changes. ``reset`` starts the session again (base-info)."""

    model_config = ConfigDict(frozen=True)

    turn: Turn
    category: str
    location: str | None
    work_type: str | None
    reset: bool = False
    base_category: str | None = None


def unreadable_fields(error: ValidationError) -> list[str]:
    """Where a stored session failed to read: field names only, never their values (a user's
    messages are in them), for the log."""
    return sorted({".".join(str(part) for part in item["loc"]) for item in error.errors()})


class SessionBusy(Exception):
    """Another turn of this conversation is running (on this replica or another)."""


class TurnHold(Protocol):
    async def release(self) -> None:
        """Give the conversation back (safe to call twice)."""
        ...


class SessionStore(Protocol):
    # Called once for each stored session that could not be read and was started again.
    on_reset: Callable[[], None] | None

    async def load(self, session_id: str) -> Session:
        """The session, or a new one (제로웨이스트, no history) if there is none."""
        ...

    async def apply(self, session_id: str, update: SessionUpdate) -> None: ...

    async def hold(self, session_id: str, longest_s: float) -> TurnHold:
        """The conversation for one turn, or SessionBusy at once. ``longest_s`` bounds how long
        the hold may last even if it is never released."""
        ...

    async def aclose(self) -> None: ...
