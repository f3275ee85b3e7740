"""The catalog accepts every value CONTRACT.md lists, and nothing else."""

from __future__ import annotations

import pytest

from service.recommend.catalog import CATEGORIES, category_by_code, find_category, find_location, find_work_type

CONTRACT_CATEGORIES = {
    "제로웨이스트": ("ZERO_WASTE", "제로웨이스트"),
    "플로깅": ("PLOGGING", "플로깅"),
    "탄소발자국": ("CARBON_FOOTPRINT", "탄소 발자국"),
    "탄소 발자국": ("CARBON_FOOTPRINT", "탄소 발자국"),
    "에너지 절약": ("ENERGY_SAVING", "에너지 절약"),
    "업사이클": ("UPCYCLING", "업사이클"),
    "문화 공유": ("MEDIA", "문화 공유"),
    "디지털 탄소": ("DIGITAL_CARBON", "디지털 탄소"),
    "비건": ("VEGAN", "비건"),
}


@pytest.mark.parametrize(("value", "expected"), CONTRACT_CATEGORIES.items())
def test_every_contract_category_value_is_found(value: str, expected: tuple[str, str]) -> None:
    category = find_category(value)
    assert category is not None
    assert (category.code, category.label) == expected


def test_english_codes_are_accepted_too() -> None:
    for category in CATEGORIES:
        assert find_category(category.code) == category
        assert find_category(f" {category.code.lower()} ") == category
    assert category_by_code("MEDIA").label == "문화 공유"


@pytest.mark.parametrize("value", ["", "환경", "VEGANISM", "비 건"])
def test_unknown_categories_are_not_found(value: str) -> None:
    assert find_category(value) is None


def test_locations_and_work_types() -> None:
    assert [find_location(v) for v in ("도시", "바닷가", "해안가", " 산 ", "농촌")] == [
        "도시",
        "바닷가",
        "바닷가",
        "산",
        "농촌",
    ]
    assert find_location("우주") is None
    assert [find_work_type(v) for v in ("사무직", "현장직", "영업직", "재택근무")] == [
        "사무직",
        "현장직",
        "영업직",
        "재택근무",
    ]
    assert find_work_type("학생") is None


def test_every_category_has_what_the_prompt_needs() -> None:
    assert len({c.code for c in CATEGORIES}) == 8
    assert all(c.focus and c.keywords for c in CATEGORIES)
