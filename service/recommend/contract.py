"""The wire contract (../shared/CONTRACT.md) in one place: bodies, event names, Korean messages
and the domain errors, each of which knows its status and message.

Every body, success or error, is ``{"status": int, "message": str, "data": ...}``: flat, never
an error object nested inside ``message``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

# Event names the consumers listen for.
EVENT_CHALLENGE = "challenge"
EVENT_ERROR = "error"
EVENT_CLOSE = "close"

MSG_TOKEN = "토큰 생성"
MSG_ALL_DONE = "모든 챌린지 추천 완료"
# The close of a guide answer (blocked words): the contract gives it a message of its own, so a
# consumer can tell it, and its empty challenges list, from an answer with three challenges.
MSG_GUIDE_DONE = "챌린지 대신 안내 메시지를 보냈습니다"
MSG_BASE_INFO_ANSWER = "사용자 기본 정보 키워드 선택을 기반으로 챌린지를 추천합니다."
MSG_FREE_TEXT_ANSWER = "사용자 자유 메시지를 기반으로 챌린지를 추천합니다."

MSG_INVALID_CHOICE = "유효하지 않은 선택 항목이 포함되어 있습니다."
MSG_MESSAGE_REQUIRED = "message는 필수입니다."
MSG_REPEATED_FIELD = "같은 항목이 여러 번 들어 있습니다. 항목마다 한 번씩만 보내 주세요."
MSG_MESSAGE_TOO_SHORT = "message는 문자열이어야 하며, 최소 5자 이상의 문자열이어야 합니다."
MSG_BAD_REQUEST = "요청 형식이 올바르지 않습니다. 각 항목을 문자열로 보내 주세요."
MSG_MODEL_FAILED = "챌린지 추천을 만드는 중 문제가 발생했습니다. 잠시 후 다시 시도해 주세요."
MSG_INTERNAL = "서버 내부 오류가 발생했습니다. 잠시 후 다시 시도해 주세요."
MSG_SESSION_STORE_DOWN = "대화 기록 저장소에 연결할 수 없습니다. 잠시 후 다시 시도해 주세요."
MSG_GUIDE = (
    "저는 리프레시 챗봇이에요. 생활 속에서 실천할 수 있는 친환경 챌린지를 추천해 드려요. "
    "예를 들어 '사무실에서 할 수 있는 제로웨이스트 챌린지 알려줘'처럼 편하게 말씀해 주세요."
)
MSG_OVERLOADED = "지금 요청이 많아 추천을 만들 수 없습니다. 잠시 후 다시 시도해 주세요."
MSG_DEADLINE = "추천을 만드는 데 시간이 너무 오래 걸려 중단했습니다. 잠시 후 다시 시도해 주세요."
MSG_SHUTTING_DOWN = "서버가 재시작 중입니다. 잠시 후 다시 시도해 주세요."
MSG_NOT_READY = "서버가 아직 준비 중입니다. 잠시 후 다시 시도해 주세요."
# /ready while a replica drains after SIGTERM: for the load balancer and the operator.
MSG_DRAINING = "이 서버는 종료를 준비하고 있어 새 요청을 받지 않습니다(draining). 진행 중인 답변만 마칩니다."
# The framework's own errors, in Korean.
HTTP_MESSAGES = {
    400: MSG_BAD_REQUEST,
    404: "요청한 주소를 찾을 수 없습니다.",
    408: "요청을 보내는 데 시간이 너무 오래 걸렸습니다. 다시 시도해 주세요.",
    405: "이 주소에서 지원하지 않는 요청 방식입니다.",
    413: "요청 본문이 너무 큽니다.",
    415: "지원하지 않는 요청 형식입니다. JSON으로 보내 주세요.",
}
MSG_PROMPT_TOO_LONG = "요청이 너무 길어 추천을 만들 수 없습니다. 더 짧게 입력해 주세요."
MSG_ENGINE_STOPPED = "추천 엔진이 멈춰 이 서버를 다시 시작해야 합니다. 잠시 후 다시 시도해 주세요."
MSG_UNAUTHORIZED = "인증 토큰이 없거나 올바르지 않습니다."
MSG_TOO_MANY_TOKENS = "짧은 시간에 너무 많은 내용을 보냈습니다. 잠시 후 다시 시도해 주세요."
MSG_TURN_IN_PROGRESS = "이 대화의 이전 답변을 아직 작성하고 있습니다. 답변이 끝난 뒤 다시 보내 주세요."


# Spelled exactly as the contract's table has them (the particle follows how each name is read).
MSG_REQUIRED = {
    "location": "location은 필수입니다.",
    "workType": "workType은 필수입니다.",
    "category": "category는 필수입니다.",
    "message": MSG_MESSAGE_REQUIRED,
}


def message_too_long(limit: int) -> str:
    return f"message는 최대 {limit}자까지 입력할 수 있습니다."


class Body(BaseModel):
    """The envelope of every answer and every event."""

    model_config = ConfigDict(frozen=True)

    status: int
    message: str
    data: Any = None

    def to_json(self) -> str:
        # ensure_ascii=False: consumers read Korean as UTF-8, not \\uXXXX escapes.
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))


class ServiceError(Exception):
    """An error a user can act on: it carries its own status and Korean message."""

    status: int = 500
    message: str = MSG_INTERNAL

    def __init__(
        self, message: str | None = None, data: Any = None, *, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self.message = message or type(self).message
        self.data = data
        # Extra response headers (Retry-After on 503).
        self.headers = headers or {}
        # For the log only; never sent to the client.
        self.detail = detail
        super().__init__(detail or self.message)

    def body(self) -> Body:
        return Body(status=self.status, message=self.message, data=self.data)


class InvalidInput(ServiceError):
    status = 400
    message = MSG_BAD_REQUEST


class UnprocessableInput(ServiceError):
    status = 422
    message = MSG_MESSAGE_TOO_SHORT


class ModelFailure(ServiceError):
    """The model produced no valid answer (never expected: the grammar forbids it)."""

    status = 500
    message = MSG_MODEL_FAILED


class StoreUnavailable(ServiceError):
    status = 503
    message = MSG_SESSION_STORE_DOWN


class Overloaded(ServiceError):
    status = 503
    message = MSG_OVERLOADED


class QueueTimeout(ServiceError):
    status = 503
    message = MSG_OVERLOADED


class DeadlineExceeded(ServiceError):
    status = 504
    message = MSG_DEADLINE


class ShuttingDown(ServiceError):
    status = 503
    message = MSG_SHUTTING_DOWN


class NotReady(ServiceError):
    status = 503
    message = MSG_NOT_READY


class Unauthorized(ServiceError):
    """LEAFRESH_API_TOKEN is set and the request did not carry it."""

    status = 401
    message = MSG_UNAUTHORIZED


class EngineDown(ServiceError):
    """The engine can generate nothing more (its decode thread died): the process must restart."""

    status = 503
    message = MSG_ENGINE_STOPPED


class PromptBudgetSpent(ServiceError):
    """A client sent more message tokens than its budget per minute allows (issue #21)."""

    status = 429
    message = MSG_TOO_MANY_TOKENS


class TurnInProgress(ServiceError):
    """A second turn of a conversation while its first is still being written (issue #20)."""

    status = 409
    message = MSG_TURN_IN_PROGRESS


class PromptTooLong(ServiceError):
    status = 422
    message = MSG_PROMPT_TOO_LONG


def error_then_close(error: ServiceError) -> tuple[tuple[str, Body], tuple[str, Body]]:
    """How a failure ends a stream, everywhere: one error event, then the close event, both with
    the error's body (the relay ends the browser's stream only on close)."""
    body = error.body()
    return (EVENT_ERROR, body), (EVENT_CLOSE, body)


def token_body(text: str) -> Body:
    return Body(status=200, message=MSG_TOKEN, data=text)


def close_body(answer: dict[str, Any], message: str = MSG_ALL_DONE) -> Body:
    return Body(status=200, message=message, data=answer)
