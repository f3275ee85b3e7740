"""How free-text messages steer the conversation (CONTRACT.md, Sessions)."""

from __future__ import annotations

import pytest

from service.recommend.conversation import mentioned_category, mentioned_location, mentioned_work_type, steer


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("채식 위주로 추천해줘", "VEGAN"),
        ("고기 줄이는 식단 알려줘", "VEGAN"),
        ("퇴근하고 조깅할 때 할 만한 거", "PLOGGING"),
        ("산책하면서 할 수 있는 거", "PLOGGING"),
        ("에어컨 전기 아끼는 법", "ENERGY_SAVING"),
        ("이메일 정리하는 챌린지", "DIGITAL_CARBON"),
        ("디지털 탄소 줄이기", "DIGITAL_CARBON"),
        ("탄소 발자국 줄이는 법", "CARBON_FOOTPRINT"),
        ("UPCYCLING 챌린지 줘", "UPCYCLING"),
        ("채식 말고 운동으로 해줘", "PLOGGING"),
    ],
)
def test_category_names_and_keywords_switch(message: str, code: str) -> None:
    category = mentioned_category(message)
    assert category is not None and category.code == code


def test_words_for_going_back_return_to_the_base_category() -> None:
    for message in ("원래대로 해줘", "처음 거로 다시", "이전 카테고리로", "기존 거 보여줘", "원래 거"):
        assert steer(message, "VEGAN", "PLOGGING", None, None).category.code == "PLOGGING"


def test_words_for_something_else_pick_another_category() -> None:
    for message in ("아무거나 추천해줘", "다른 거 없어?", "새로운거 보여줘", "딴거요 딴거"):
        steering = steer(message, "VEGAN", "VEGAN", None, None)
        assert steering.category.code != "VEGAN"
    first = steer("다른거 줘", "ZERO_WASTE", "ZERO_WASTE", None, None).category
    second = steer("다른거 줘", first.code, "ZERO_WASTE", None, None).category
    assert len({"ZERO_WASTE", first.code, second.code}) == 3


def test_a_message_without_a_hint_keeps_the_category() -> None:
    assert steer("오늘 할 수 있는 걸로 알려줘", "MEDIA", "VEGAN", "산", "영업직").category.code == "MEDIA"


def test_places_and_work_types_are_picked_up() -> None:
    assert mentioned_location("바다 근처에서 할 수 있는 거") == "바닷가"
    assert mentioned_location("해안가에서") == "바닷가"
    assert mentioned_location("주말에 산에 가요") == "산"
    assert mentioned_location("시골 농촌 생활") == "농촌"
    assert mentioned_work_type("회사에서 할 수 있는 거") == "사무직"
    assert mentioned_work_type("재택 중이에요") == "재택근무"
    steering = steer("주말에 산에서 할 수 있는 거", "VEGAN", "VEGAN", "도시", "사무직")
    assert (steering.location, steering.work_type) == ("산", "사무직")


def test_look_alike_words_are_not_places() -> None:
    # 도시락 (lunch box) is not 도시; 산책 (a walk) is not 산.
    assert mentioned_location("도시락 싸서 산책 가요") is None
