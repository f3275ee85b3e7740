"""Checking the model's output and adding the catalog's category."""

from __future__ import annotations

import pytest

from service.recommend.answer import parse_model_output
from service.recommend.catalog import category_by_code
from service.recommend.contract import ModelFailure
from tests.fakes import GOOD_OUTPUT as RAW


def test_server_adds_category_code_and_label_from_the_catalog() -> None:
    answer = parse_model_output(RAW, category_by_code("CARBON_FOOTPRINT"))
    assert [c.category for c in answer.challenges] == ["CARBON_FOOTPRINT"] * 3
    assert [c.label for c in answer.challenges] == ["탄소 발자국"] * 3
    assert [c.title[:3] for c in answer.challenges] == ["1. ", "2. ", "3. "]


@pytest.mark.parametrize(
    "raw",
    [
        RAW[:-2],  # cut off by the token limit
        RAW.replace("오늘 하루", "오늘\n하루"),  # raw control character: strict JSON refuses it
        RAW.replace('"1. ', '"7. '),
        '{"recommend":"x"}',
        "",
    ],
)
def test_output_that_is_not_a_valid_answer_is_a_model_failure(raw: str) -> None:
    with pytest.raises(ModelFailure) as caught:
        parse_model_output(raw, category_by_code("VEGAN"))
    assert caught.value.status == 500
    assert caught.value.detail
