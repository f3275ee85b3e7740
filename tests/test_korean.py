"""Korean text read as Korean (issue #21): blocked words and keywords at word starts of the
normal form, request values in NFKC, and characters nobody types refused."""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.recommend.conversation import has_blocked_word, mentioned_category, mentioned_work_type
from service.settings import Settings
from tests.fakes import ScriptedEngine
from tests.support.queries import BASE, BASE_INFO
from tests.support.sse import app_client

BLOCKED = Settings(_env_file=None).blocked_word_list

# Ordinary messages a user of a recycling chatbot writes; several hold a blocked word's or a
# keyword's letters inside an ordinary word.
ORDINARY = [
    "사무실 전등이 꺼져 있는지 퇴근 전에 확인하고 싶어요",
    "출근길 시발역 근처에서 할 수 있는 챌린지 알려줘",
    "정전이 돼서 불이 꺼져서 냉장고가 걱정돼요",
    "모니터가 자꾸 꺼져요 절전 모드 때문인가요",
    "기후 위기가 닥쳐오기 전에 할 수 있는 일을 알려줘",
    "이 프로젝트의 시발점이 된 환경 캠페인이 궁금해요",
    "캠프파이어 불이 꺼져가는데 쓰레기는 어떻게 치우죠",
    "사무실 책상 위 일회용 컵을 줄이고 싶어요",
    "머신러닝 공부하면서 할 수 있는 친환경 습관",
    "책임감 있게 분리수거하는 방법이 궁금해요",
    "고기압 때문에 날씨가 더운데 에어컨을 덜 쓰는 법",
    "포장마차에서 일회용품 안 쓰는 방법",
    "중고등학생도 할 수 있는 챌린지 추천해 줘",
    "공유기 전원을 밤에 끄면 전기가 아껴지나요",
    "재택근무 중에 전기를 아끼는 방법을 알려 줘",
    "회사 탕비실에서 종이컵을 없애고 싶어요",
    "바닷가 근처에 살아서 해변 쓰레기를 줍고 싶어요",
    "산책하면서 쓰레기를 줍는 플로깅을 해 보고 싶어요",
    "채식 위주로 식단을 바꾸고 싶어요",
    "이메일 정리로 디지털 탄소를 줄이는 법",
    "텀블러를 들고 다니는 습관을 만들고 싶어요",
    "아이와 함께 할 수 있는 업사이클 만들기",
    "유튜브 화질을 낮추면 탄소가 줄어드나요",
    "대중교통으로 출퇴근하면 얼마나 줄어요",
    "헌 옷을 리폼해서 가방을 만들고 싶어요",
    "환경 다큐멘터리 추천해 주세요",
    "주말에 가족과 할 수 있는 친환경 활동",
    "원래 하던 제로웨이스트로 다시 추천해 줘",
    "아무거나 새로운 걸로 추천해 줘",
    "수선화 화분을 재활용 용기로 키우고 싶어요",
    "영업시간이 끝난 가게 간판 불을 끄자고 말하고 싶어요",
    "현장에서 일하면서 물을 아끼는 방법",
]

# What the guide must keep answering: the words themselves, and the tricks used to slip past.
ABUSIVE = [
    "야 이 병신아 추천해",
    "씨발 뭐 이런 게 다 있어",
    "씨\u200b발 진짜",  # a zero-width space inside
    "ｆｕｃｋ this chatbot",  # full-width letters
    unicodedata.normalize("NFD", "병신 같은 추천"),  # decomposed Hangul
    "꺼져 진짜 꺼져",
    "닥쳐 그냥",
    "FUCKING useless",
    "개새끼들 같으니",
]


@pytest.mark.parametrize("message", ORDINARY)
def test_ordinary_messages_are_never_taken_for_abuse(message: str) -> None:
    assert not has_blocked_word(message, BLOCKED)


@pytest.mark.parametrize("message", ABUSIVE)
def test_abusive_messages_are_caught_in_any_form(message: str) -> None:
    assert has_blocked_word(message, BLOCKED)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("사무실 책상 위 일회용 컵을 줄이고 싶어요", "ZERO_WASTE"),  # not 문화 공유 (책)
        ("머신러닝 공부하면서 할 수 있는 습관", None),  # not 플로깅 (러닝)
        ("책을 읽고 나누는 모임", "MEDIA"),
        ("퇴근하고 러닝하면서 할 수 있는 것", "PLOGGING"),
        ("디지털 탄소 줄이기", "DIGITAL_CARBON"),
        ("채식 말고 운동", "PLOGGING"),
        ("ｖｅｇａｎ 식단", "VEGAN"),
        (unicodedata.normalize("NFD", "채식 위주로"), "VEGAN"),
    ],
)
def test_keywords_count_only_where_a_word_begins(message: str, code: str | None) -> None:
    found = mentioned_category(message)
    assert (found.code if found else None) == code


def test_ordinary_words_that_begin_like_a_work_keyword_do_not_move_the_kind_of_work() -> None:
    assert mentioned_work_type("영업시간이 끝난 가게") is None
    assert mentioned_work_type("영업 일을 해요") == "영업직"


def _get(path: str, params: Any) -> httpx.Response:
    async def scenario() -> httpx.Response:
        async with app_client(create_app(Settings(), ScriptedEngine())) as client:
            return await client.get(f"{BASE}{path}", params=params)

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "query",
    [
        {"location": unicodedata.normalize("NFD", "도시"), "workType": "사무직", "category": "비건"},
        {"location": "도시", "workType": "사무직", "category": "ＶＥＧＡＮ"},
        {"location": "도시", "workType": unicodedata.normalize("NFD", "재택근무"), "category": "digital_carbon"},
    ],
)
def test_valid_values_in_other_unicode_forms_are_accepted(query: dict[str, str]) -> None:
    assert _get("/base-info", query).status_code == 200


def test_look_alike_letters_are_not_a_category_code() -> None:
    refused = _get("/base-info", {"location": "도시", "workType": "사무직", "category": "dıgıtal_carbon"})
    assert refused.status_code == 400 and refused.json()["data"] == {"invalidFields": ["category"]}


@pytest.mark.parametrize("message", ["\u200b" * 5, "\x00" * 5, "안녕\u200b하세요 추천", "좋아요\x1b[31m 빨강"])
def test_characters_nobody_types_are_refused(message: str) -> None:
    refused = _get("/free-text", {"message": message})
    assert refused.status_code == 400 and refused.json()["data"] == {"invalidFields": ["message"]}


def test_a_query_key_given_twice_is_refused_naming_it() -> None:
    twice = [("location", "도시"), ("workType", "사무직"), ("category", "비건"), ("category", "플로깅")]
    refused = _get("/base-info", twice)
    assert refused.status_code == 400 and refused.json()["data"] == {"invalidFields": ["category"]}
    assert _get("/free-text", [("message", "채식 추천해 줘"), ("message", "운동 추천")]).json()["data"] == {
        "invalidFields": ["message"]
    }
    assert BASE_INFO.endswith("/base-info")
