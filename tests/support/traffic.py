"""Traffic for benchmarks, in waves of simultaneous requests (issue #22).

Two kinds, both seeded and the same for every server measured:
- *rotating*: base-info only, each request a different combination from the one before
  (queries.rotating_queries), so nothing but the shared instructions is ever cached;
- *production-like*: real users cluster. Base-info combinations are drawn from a Zipf law
  over the 128 (weight 1/rank**ZIPF_EXPONENT, the ranks a seeded shuffle), every base-info
  starts a session, and about a third of requests are free-text turns continuing an earlier
  session, 2 to 4 turns deep, its history growing.

A free-text turn only continues a session whose last turn was in an earlier wave: a
conversation's next message comes after its answer, never beside it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.support.queries import COMBINATIONS, rotating_queries

# About Zipf's law for word and query frequencies: the top combination takes ~18% of the
# base-info requests, the top 10 ~55%, and the other 118 the rest.
ZIPF_EXPONENT = 1.1
FREE_TEXT_SHARE = 1 / 3
TURNS = (2, 4)  # a continued conversation's length in turns, base-info included
CONTINUED = 0.5  # the share of sessions that go on (with 1 to 3 more turns, 2 on average)

# What users type after a first answer: some follow the category, some change it, the place or
# the kind of work (service.recommend.conversation steers on these).
FOLLOW_UPS = (
    "좀 더 쉬운 챌린지로 다시 추천해 주세요",
    "회사에서 점심시간에 할 수 있는 걸로 알려줘",
    "플라스틱을 줄이는 방법을 더 알려주세요",
    "주말에 가족이랑 같이 할 수 있는 건 없을까요?",
    "바닷가에 놀러 가는데 거기서 할 만한 챌린지 있어?",
    "돈이 들지 않는 방법으로만 추천해 줘",
    "운동하면서 할 수 있는 친환경 활동 알려줘",
    "에너지 절약 챌린지를 더 추천해 주세요",
    "비건 식단으로 시작하려면 뭐부터 해야 할까요?",
    "아이와 함께 할 수 있는 걸로 바꿔 주세요",
)


@dataclass(frozen=True)
class Request:
    """One request of a wave: base-info (``query``) or a free-text turn (``message``)."""

    number: int  # its place in the whole traffic, from 0
    session: str | None
    turn: int  # 1 for base-info
    query: dict[str, str] | None = None
    message: str | None = None

    @property
    def route(self) -> str:
        return "base-info" if self.query is not None else "free-text"

    def params(self) -> dict[str, str]:
        """Its query string, as the relay sends it."""
        given = dict(self.query) if self.query is not None else {"message": self.message or ""}
        return {**given, "sessionId": self.session} if self.session is not None else given


def rotating_waves(sizes: list[int], offset: int = 0) -> list[list[Request]]:
    queries = iter(rotating_queries(sum(sizes), offset))
    waves, number = [], 0
    for size in sizes:
        waves.append([Request(number + i, None, 1, next(queries)) for i in range(size)])
        number += size
    return waves


@dataclass
class _Conversation:
    session: str
    turns: int  # how many it will have
    done: int = 1
    last_wave: int = 0


@dataclass
class _ProductionDraw:
    rng: random.Random
    ranked: list[dict[str, str]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    open: list[_Conversation] = field(default_factory=list)
    sessions: int = 0
    follow_ups: int = 0

    def base_info(self, number: int, wave: int, tag: str, continued: float = CONTINUED) -> Request:
        (query,) = self.rng.choices(self.ranked, self.weights)
        self.sessions += 1
        session = f"bench-{tag}-{self.sessions:04d}"
        # A third of requests being follow-ups needs half a follow-up per base-info; more
        # conversations open than that (some users leave unanswered), so the draw seldom starves.
        if self.rng.random() < continued:
            self.open.append(_Conversation(session, self.rng.randint(*TURNS), last_wave=wave))
        return Request(number, session, 1, dict(query))

    def follow_up(self, number: int, wave: int) -> Request | None:
        ready = [c for c in self.open if c.last_wave < wave]
        # The first waves have no conversation to continue yet: later ones catch up, so that
        # the whole traffic holds about FREE_TEXT_SHARE of follow-ups.
        owed = FREE_TEXT_SHARE * (number + 1) - self.follow_ups
        if not ready or self.rng.random() >= owed:
            return None
        self.follow_ups += 1
        conversation = self.rng.choice(ready)
        conversation.done += 1
        conversation.last_wave = wave
        if conversation.done >= conversation.turns:
            self.open.remove(conversation)
        return Request(number, conversation.session, conversation.done, message=self.rng.choice(FOLLOW_UPS))


def production_waves(sizes: list[int], seed: int, prelude: int = 8) -> list[list[Request]]:
    """Seeded production-like waves: the same ``sizes`` and ``seed`` give the same requests.
    The first wave is a prelude of ``prelude`` base-info requests whose sessions all go on, as
    a running service has conversations under way; a benchmark sends it unmeasured."""
    rng = random.Random(seed)
    ranked = list(COMBINATIONS)
    rng.shuffle(ranked)
    draw = _ProductionDraw(rng, ranked, [1 / rank**ZIPF_EXPONENT for rank in range(1, len(ranked) + 1)])
    tag = str(seed)
    waves = [[draw.base_info(n, 0, tag, continued=1.0) for n in range(prelude)]]
    number = prelude
    draw.follow_ups = round(FREE_TEXT_SHARE * prelude)  # the prelude is owed none
    for wave, size in enumerate(sizes, start=1):
        requests = []
        for _ in range(size):
            request = draw.follow_up(number, wave) or draw.base_info(number, wave, tag)
            requests.append(request)
            number += 1
        waves.append(requests)
    return waves
