"""The choices a user can make: eco categories, places and kinds of work.

One table per choice, so adding a synonym or a category is a one-line change here. Request
values are matched after trimming; category codes also match case-insensitively.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Category:
    code: str
    label: str
    # Request values accepted besides the label and the code.
    synonyms: tuple[str, ...] = ()
    # What the category is about, for the model's instructions.
    focus: str = ""
    # Words in a free-text message that point at this category.
    keywords: tuple[str, ...] = field(default=())


CATEGORIES: tuple[Category, ...] = (
    Category(
        "ZERO_WASTE",
        "제로웨이스트",
        focus="일회용품과 쓰레기를 줄이는 생활",
        keywords=("쓰레기", "일회용", "텀블러", "포장", "분리수거", "재사용"),
    ),
    Category(
        "PLOGGING",
        "플로깅",
        focus="걷거나 달리면서 쓰레기를 줍는 활동",
        keywords=("운동", "조깅", "러닝", "산책", "줍깅"),
    ),
    Category(
        "CARBON_FOOTPRINT",
        "탄소 발자국",
        synonyms=("탄소발자국",),
        focus="이동과 소비에서 나오는 탄소 배출 줄이기",
        keywords=("탄소", "대중교통", "자전거", "자동차", "출퇴근"),
    ),
    Category(
        "ENERGY_SAVING",
        "에너지 절약",
        synonyms=("에너지절약",),
        focus="전기와 난방, 냉방 에너지 아끼기",
        keywords=("전기", "에어컨", "난방", "전등", "콘센트", "절전"),
    ),
    Category(
        "UPCYCLING",
        "업사이클",
        synonyms=("업사이클링",),
        focus="버려질 물건에 새 쓸모를 주는 업사이클",
        keywords=("재활용", "리폼", "중고", "수선"),
    ),
    Category(
        "MEDIA",
        "문화 공유",
        synonyms=("문화공유",),
        focus="환경을 주제로 한 책, 영상, 전시를 나누는 활동",
        keywords=("책", "영화", "다큐", "전시", "공유"),
    ),
    Category(
        "DIGITAL_CARBON",
        "디지털 탄소",
        synonyms=("디지털탄소",),
        focus="이메일, 스트리밍, 클라우드 같은 디지털 사용의 탄소 줄이기",
        keywords=("이메일", "메일", "스트리밍", "클라우드", "유튜브", "디지털"),
    ),
    Category(
        "VEGAN",
        "비건",
        focus="채식과 동물성 제품을 줄이는 식생활",
        keywords=("채식", "고기", "식단", "비건", "두유"),
    ),
)

# The label a place or kind of work is shown as, by every value a request may use for it.
LOCATIONS: dict[str, str] = {"도시": "도시", "바닷가": "바닷가", "해안가": "바닷가", "산": "산", "농촌": "농촌"}
WORK_TYPES: dict[str, str] = {"사무직": "사무직", "현장직": "현장직", "영업직": "영업직", "재택근무": "재택근무"}

DEFAULT_CATEGORY_CODE = "ZERO_WASTE"

# Free-text words that steer the conversation (CONTRACT.md, Sessions). Matched at a word start
# with spaces removed, so "다른 거" and "다른거" are the same.
BACK_TO_BASE_WORDS: tuple[str, ...] = ("원래대로", "원래", "처음", "이전", "기존")
SOMETHING_ELSE_WORDS: tuple[str, ...] = ("아무거나", "다른거", "새로운거", "딴거")

# How a place or kind of work is mentioned in a message, by its label. A place word counts only
# as a whole word or followed by a particle: "도시락" is not 도시 and "산책" is not 산.
LOCATION_WORDS: dict[str, tuple[str, ...]] = {
    "도시": ("도시",),
    "바닷가": ("바닷가", "해안가", "바다"),
    "산": ("산",),
    "농촌": ("농촌", "시골"),
}
WORK_TYPE_WORDS: dict[str, tuple[str, ...]] = {
    "사무직": ("사무직", "회사", "사무실"),
    "현장직": ("현장직", "현장"),
    "영업직": ("영업직", "영업"),
    "재택근무": ("재택근무", "재택", "집에서"),
}


# Ordinary words that only begin like a category keyword or a blocked word: where the message
# has one of these, that keyword or blocked word is not there (service/recommend/korean.py).
# Keyed by the word in its normal form; a phrase with a space also matches without it.
ORDINARY_WORDS: dict[str, tuple[str, ...]] = {
    # blocked words
    "시발": ("시발역", "시발점", "시발택시"),
    "꺼져": ("꺼져 있", "꺼져서", "꺼져요", "꺼져가", "꺼져 버", "꺼져도", "꺼져야", "꺼져 가"),
    "닥쳐": ("닥쳐오", "닥쳐온", "닥쳐올", "닥쳐와"),
    # category keywords
    "책": ("책상", "책임", "책정", "책략", "책망"),
    "고기": ("고기압",),
    "포장": ("포장마차",),
    "공유": ("공유기",),
    "중고": ("중고등", "중고생"),
    "수선": ("수선화",),
    # kinds of work
    "영업": ("영업시간", "영업일"),
}


def _category_index() -> dict[str, Category]:
    index: dict[str, Category] = {}
    for category in CATEGORIES:
        for value in (category.label, category.code, *category.synonyms):
            index[_fold(value)] = category
    return index


def _fold(value: str) -> str:
    """A request value as it is looked up: NFKC (full-width and decomposed forms of a valid value
    are that value) and trimmed; English codes in any case, but only in ASCII, so a look-alike
    letter (dotless ı in dıgıtal_carbon) is not a code (issue #21)."""
    value = unicodedata.normalize("NFKC", value).strip()
    return value.upper() if value.isascii() else value


_BY_VALUE = _category_index()


def find_category(value: str) -> Category | None:
    """The category a request value names (Korean label, synonym or English code), if any."""
    return _BY_VALUE.get(_fold(value))


def category_by_code(code: str) -> Category:
    category = find_category(code)
    if category is None or category.code != code:
        raise KeyError(code)
    return category


def find_location(value: str) -> str | None:
    return LOCATIONS.get(unicodedata.normalize("NFKC", value).strip())


def find_work_type(value: str) -> str | None:
    return WORK_TYPES.get(unicodedata.normalize("NFKC", value).strip())
