"""The grammar automaton says exactly which text is forced, and agrees with the grammar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.forced_text import ForcedTextTracker, GrammarAutomaton
from service.engine.grammar import Grammar, load_challenge_grammar
from tests.fakes import GOOD_OUTPUT

AUTOMATON = GrammarAutomaton(load_challenge_grammar())


def tracker_after(text: str) -> ForcedTextTracker:
    tracker = ForcedTextTracker(AUTOMATON)
    tracker.feed(text)
    return tracker


def test_the_opening_of_the_answer_is_forced() -> None:
    assert tracker_after("").forced() == '{"recommend":"'


def test_inside_a_sentence_nothing_is_forced() -> None:
    assert tracker_after('{"recommend":"오늘 하루').forced() == ""


def test_after_a_closing_quote_the_keys_and_the_number_are_forced() -> None:
    assert tracker_after('{"recommend":"오늘 하루"').forced() == ',"challenges":[{"title":"1. '
    title_done = '{"recommend":"오늘","challenges":[{"title":"1. 채식"'
    assert tracker_after(title_done).forced() == ',"description":"'


def test_after_the_last_description_the_end_is_forced_and_then_complete() -> None:
    before_end = GOOD_OUTPUT[: -len("}]}")]
    tracker = tracker_after(before_end)
    assert tracker.forced() == "}]}"
    assert not tracker.complete
    tracker.feed("}]}")
    assert tracker.complete
    assert tracker.forced() == ""


def test_text_outside_the_grammar_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the grammar"):
        tracker_after('{"recommend":"hello')


def test_a_forced_text_runs_through_a_shared_start_and_stops_at_a_choice() -> None:
    # Both options start with "1"; after it the grammar allows "2" or "b": nothing is forced.
    automaton = GrammarAutomaton(Grammar('root ::= "a" ("1" | "12") "b"'))
    tracker = ForcedTextTracker(automaton)
    assert tracker.forced() == "a1"
    tracker.feed("a1")
    assert tracker.forced() == ""
    tracker.feed("2")
    assert tracker.forced() == "b"


def test_unbounded_repetition_is_followed() -> None:
    automaton = GrammarAutomaton(Grammar('root ::= "x" [a-z]+ "!"'))
    tracker = ForcedTextTracker(automaton)
    tracker.feed("xabc")
    assert tracker.forced() == ""
    tracker.feed("!")
    assert tracker.complete


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='{}[]":,.1234 가나다ABCrecommendtilsp', max_size=120))
def test_the_automaton_accepts_exactly_the_prefixes_of_grammar_texts(text: str) -> None:
    """Whole answers match the grammar's regex exactly when the automaton ends complete."""
    states = AUTOMATON.start
    for char in text:
        states = AUTOMATON.step(states, char)
    assert AUTOMATON.is_final(states) == load_challenge_grammar().matches(text)


def test_following_forced_text_from_any_point_of_a_valid_answer_stays_valid() -> None:
    for cut in range(len(GOOD_OUTPUT)):
        tracker = tracker_after(GOOD_OUTPUT[:cut])
        forced = tracker.forced()
        assert GOOD_OUTPUT[cut:].startswith(forced), (cut, forced)
