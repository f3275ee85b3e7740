"""The answer format, in one place (issue #23): its grammar's name, the GBNF text the engine
compiles, the JSON schema the answer is checked against, the ``max_tokens`` bound derived from
the grammar, and what the consumers receive. The engine knows none of it: whoever builds the
engine hands it ``grammars()``, and requests name ``GRAMMAR_NAME``."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict

from service.recommend.catalog import Category
from service.recommend.contract import ModelFailure
from service.recommend.gbnf import Grammar

# A link to the top-level grammars/ in the source tree; a copy of it in an installed wheel.
GRAMMAR_DIR = Path(__file__).parent / "grammars"
GRAMMAR_PATH = GRAMMAR_DIR / "challenge.gbnf"
SCHEMA_PATH = GRAMMAR_DIR / "challenge.schema.json"
GRAMMAR_NAME = "challenge"  # what a generation request names; the engine compiles it by this name


def grammar_text() -> str:
    return GRAMMAR_PATH.read_text(encoding="utf-8")


def grammars() -> dict[str, str]:
    """The grammars an engine built for this service compiles, by name."""
    return {GRAMMAR_NAME: grammar_text()}


@cache
def grammar() -> Grammar:
    return Grammar(grammar_text())


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def max_tokens() -> int:
    """max_tokens that always fits a complete answer: every token adds at least one byte, so
    the grammar's longest answer in bytes, plus the end-of-generation token."""
    return grammar().max_bytes() + 1


class Challenge(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str
    description: str
    # Added by the server from the catalog, never written by the model.
    category: str
    label: str


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)

    recommend: str
    challenges: list[Challenge]

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def check_schema_loads() -> None:
    """Fail at start-up, not at the first request, if the schema file is broken."""
    _validator()


def parse_model_output(text: str, category: Category) -> Answer:
    """The model's raw JSON text as an answer for ``category``, or ModelFailure.

    Strict JSON (no control characters in strings) and the schema: the grammar makes both
    true by construction, and this check proves it for every answer before ``close`` is sent.
    """
    try:
        raw = json.loads(text, strict=True)
    except ValueError as exc:
        raise ModelFailure(detail=f"model output is not JSON: {exc}") from exc
    errors = sorted(_validator().iter_errors(raw), key=lambda error: list(error.path))
    if errors:
        raise ModelFailure(detail=f"model output breaks the schema: {errors[0].message}")
    return Answer(
        recommend=raw["recommend"],
        challenges=[
            Challenge(
                title=item["title"],
                description=item["description"],
                category=category.code,
                label=category.label,
            )
            for item in raw["challenges"]
        ],
    )


def render(answer: Answer) -> str:
    """The readable answer that the ``challenge`` events add up to (CONTRACT.md)."""
    blocks = [answer.recommend] + [f"{item.title}\n{item.description}" for item in answer.challenges]
    return "\n\n".join(blocks)
