"""The answer: what the model writes, how it is checked, and what the consumers receive."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict

from service.engine.grammar import load_challenge_schema
from service.recommend.catalog import Category
from service.recommend.contract import ModelFailure


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
    schema = load_challenge_schema()
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
