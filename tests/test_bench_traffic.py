"""The benchmarks' traffic (tests/support/traffic): what both servers are measured on must be the
production-like mix it claims to be, and the same for every server (issue #22)."""

from __future__ import annotations

from collections import Counter

from service.recommend.protocol import parse_base_info, parse_free_text
from tests.support.queries import COMBINATIONS
from tests.support.traffic import FREE_TEXT_SHARE, TURNS, Request, production_waves, rotating_waves

SIZES = [1, 4, 8, 16] * 4


def _requests(seed: int) -> list[Request]:
    return [r for wave in production_waves(SIZES, seed)[1:] for r in wave]


def test_the_same_seed_gives_the_same_requests_and_another_seed_others() -> None:
    assert production_waves(SIZES, 3) == production_waves(SIZES, 3)
    assert production_waves(SIZES, 3) != production_waves(SIZES, 4)


def test_about_a_third_are_free_text_turns_of_earlier_sessions() -> None:
    for seed in range(5):
        requests = _requests(seed)
        share = sum(r.route == "free-text" for r in requests) / len(requests)
        assert abs(share - FREE_TEXT_SHARE) < 0.05, share


def test_a_turn_continues_its_session_in_a_later_wave_and_no_deeper_than_four() -> None:
    waves = production_waves(SIZES, 0)
    last_turn: dict[str, tuple[int, int]] = {}  # session -> (turn, wave)
    depths: Counter[int] = Counter()
    for index, wave in enumerate(waves):
        for request in wave:
            assert request.session is not None
            if request.route == "base-info":
                assert request.session not in last_turn, "every base-info starts a new session"
            else:
                turn, seen_in = last_turn[request.session]
                assert request.turn == turn + 1
                assert seen_in < index, "the next message comes after the answer, not beside it"
            last_turn[request.session] = (request.turn, index)
            depths[request.turn] += 1
    assert max(depths) <= TURNS[1]
    assert depths[3] > 0, "history grows past one turn"


def test_combinations_cluster_as_users_do() -> None:
    counts = Counter(tuple(r.query.values()) for seed in range(5) for r in _requests(seed) if r.query)
    total = sum(counts.values())
    top_ten = sum(n for _, n in counts.most_common(10))
    assert top_ten / total > 0.4, "a few combinations account for most requests"
    assert len(counts) > 20, "and the long tail still shows"


def test_rotating_waves_never_repeat_a_combination() -> None:
    requests = [r for wave in rotating_waves([1, 4, 8, 16]) for r in wave]
    assert len({tuple(r.query.values()) for r in requests if r.query}) == len(requests) <= len(COMBINATIONS)


def test_every_request_is_one_the_service_accepts() -> None:
    for request in _requests(0):
        if request.query is not None:
            parse_base_info(request.params())
        else:
            parse_free_text(request.params(), 500)
