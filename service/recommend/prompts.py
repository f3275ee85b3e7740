"""What the model is told. The grammar fixes the answer's shape; the prompt steers its content."""

from __future__ import annotations

import json
from collections.abc import Sequence

from service.engine import ChatMessage
from service.recommend.catalog import Category
from service.recommend.sessions import Turn

# The answer the instructions show the model; also the yardstick of a typical answer's length.
EXAMPLE_ANSWER = (
    '{"recommend":"도시에서 일하는 사무직을 위한 제로웨이스트 챌린지를 추천해요.","challenges":['
    '{"title":"1. 텀블러 사용하기","description":"카페에서 일회용 컵 대신 텀블러에 음료를 받아요."},'
    '{"title":"2. 장바구니 챙기기","description":"장을 볼 때 비닐봉투 대신 장바구니를 써요."},'
    '{"title":"3. 종이 영수증 거절","description":"결제할 때 종이 영수증 대신 전자 영수증을 받아요."}]}'
)

INSTRUCTIONS = (
    """너는 친환경 생활 챌린지를 추천하는 한국어 도우미 '리프레시'야.
사용자의 상황에 맞는 구체적인 친환경 챌린지 3개를 추천해.
규칙:
- 모든 문장은 한국어로 쓰고 이모지는 쓰지 마.
- recommend에는 추천을 소개하는 한두 문장을 써.
- 각 챌린지의 title은 번호로 시작하는 짧은 제목이고, description은 오늘 바로 할 수 있는 행동을 한두 문장으로 설명해.
- 답은 JSON 한 줄로만 써.
예시:
"""
    + EXAMPLE_ANSWER
)


def base_info_request(location: str, work_type: str, category: Category) -> str:
    # Only the facts, once each: everything after the shared instructions is evaluated anew for
    # each combination, and the first word waits for it (issue #15). The instructions already
    # say what to do with them.
    return f"장소: {location}\n직업 유형: {work_type}\n카테고리: {category.label} ({category.focus})"


def base_info_messages(location: str, work_type: str, category: Category) -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", INSTRUCTIONS), ChatMessage("user", base_info_request(location, work_type, category)))


def free_text_request(location: str | None, work_type: str | None, category: Category, message: str) -> str:
    return (
        f"장소: {location or '정하지 않음'}\n"
        f"직업 유형: {work_type or '정하지 않음'}\n"
        f"카테고리: {category.label} ({category.focus})\n"
        f"사용자 메시지: {message}\n"
        f"이 메시지와 지금까지의 대화에 맞는 {category.label} 챌린지 3개를 새로 추천해 줘."
    )


def _summary(turn: Turn) -> str:
    """What the model is shown of an earlier answer: its recommend text and titles, in the
    answer's own JSON shape (descriptions left out to save context)."""
    return json.dumps(
        {"recommend": turn.recommend, "challenges": [{"title": title} for title in turn.titles]},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def free_text_messages(history: Sequence[Turn], request: str) -> tuple[ChatMessage, ...]:
    """The conversation so far, then ``request`` (free_text_request). Each earlier turn is
    shown with the request it was asked with, word for word, so a turn's prompt begins with the
    previous turn's prompt: its cells, kept in the prompt cache, are restored rather than
    evaluated again (issue #22). Turns stored before they kept their request show the user's
    message alone."""
    messages = [ChatMessage("system", INSTRUCTIONS)]
    for turn in history:
        messages.append(ChatMessage("user", turn.request or turn.message))
        messages.append(ChatMessage("assistant", _summary(turn)))
    messages.append(ChatMessage("user", request))
    return tuple(messages)
