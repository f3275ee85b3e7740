"""Request validation, exactly as CONTRACT.md's table says."""

from __future__ import annotations

import pytest

from service.recommend.contract import InvalidInput
from service.recommend.protocol import decode_twice_encoded, parse_base_info

GOOD = {"sessionId": "user123", "location": "도시", "workType": "사무직", "category": "비건"}


def test_a_good_request_is_checked_into_catalog_values() -> None:
    checked = parse_base_info({**GOOD, "location": "해안가", "category": "탄소 발자국"})
    assert (checked.location, checked.work_type, checked.category.code) == ("바닷가", "사무직", "CARBON_FOOTPRINT")
    assert checked.session_id == "user123"


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("location", "location은 필수입니다."),
        ("workType", "workType은 필수입니다."),
        ("category", "category는 필수입니다."),
    ],
)
@pytest.mark.parametrize("missing", [None, "", "   "])
def test_missing_or_blank_fields_have_the_contract_message(field: str, message: str, missing: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_base_info({**GOOD, field: missing})
    assert caught.value.body().model_dump() == {"status": 400, "message": message, "data": None}


def test_the_first_missing_field_is_reported_in_contract_order() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_base_info({"category": None, "workType": None, "location": None})
    assert caught.value.message == "location은 필수입니다."


def test_values_outside_the_lists_are_all_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_base_info({**GOOD, "location": "우주", "category": "환경"})
    assert caught.value.body().model_dump() == {
        "status": 400,
        "message": "유효하지 않은 선택 항목이 포함되어 있습니다.",
        "data": {"invalidFields": ["location", "category"]},
    }


@pytest.mark.parametrize(
    ("arrived", "understood"),
    [
        ("도시", "도시"),
        ("%EB%8F%84%EC%8B%9C", "도시"),  # encoded twice by the client, decoded once by the server
        ("%ED%83%84%EC%86%8C%20%EB%B0%9C%EC%9E%90%EA%B5%AD", "탄소 발자국"),
        ("100%", "100%"),
        ("%FF%FE", "%FF%FE"),  # not UTF-8 once decoded: left as it came
        ("50%ab", "50%ab"),
    ],
)
def test_twice_encoded_query_values_are_understood(arrived: str, understood: str) -> None:
    assert decode_twice_encoded(arrived) == understood
