"""The grammar and the schema describe the same answers, and the grammar is bounded."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.recommend import answer
from service.recommend.gbnf import Grammar, GrammarError
from tests.support.gbnf_regex import compiled, matches, max_chars

GRAMMAR = answer.grammar()
SCHEMA = answer.load_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

VALID = (
    '{"recommend":"오늘 하루 비건 챌린지!","challenges":['
    '{"title":"1. 채식 도시락","description":"점심에 채식 도시락을 싸 가요."},'
    '{"title":"2. 두유 라떼","description":"우유 대신 두유를 골라요."},'
    '{"title":"3. 고기 없는 날","description":"일주일에 하루 고기 없이 지내요."}]}'
)


def schema_accepts(text: str) -> bool:
    try:
        document = json.loads(text, strict=True)
    except ValueError:
        return False
    return bool(VALIDATOR.is_valid(document))


def test_valid_example_is_accepted_by_both() -> None:
    assert matches(GRAMMAR, VALID)
    assert schema_accepts(VALID)


@pytest.mark.parametrize(
    ("name", "broken"),
    [
        ("raw newline in a string", VALID.replace("오늘 하루", "오늘\n하루")),
        ("emoji", VALID.replace("챌린지!", "챌린지🌱")),
        ("doubled space", VALID.replace("오늘 하루", "오늘  하루")),
        ("leading space", VALID.replace('"오늘', '" 오늘')),
        ("trailing space", VALID.replace('챌린지!"', '챌린지! "')),
        ("empty recommend", re.sub(r'"recommend":"[^"]*"', '"recommend":""', VALID)),
        ("wrong number", VALID.replace('"2. 두유', '"4. 두유')),
        ("missing number", VALID.replace('"1. 채식', '"채식')),
        ("word longer than 8 characters", VALID.replace("도시락을", "도시락을가져가서꼭")),
        ("lower-case English", VALID.replace("두유 라떼", "soy latte")),
        ("escaped quote", VALID.replace("오늘 하루", 'oh\\"')),
        (
            "two challenges",
            VALID.replace(',{"title":"3. 고기 없는 날","description":"일주일에 하루 고기 없이 지내요."}', ""),
        ),
        (
            "four challenges",
            VALID.replace("]}", ',{"title":"3. 하나 더","description":"하나 더 해요."}]}'),
        ),
        ("fifteen words", VALID.replace("오늘 하루 비건 챌린지!", " ".join(["가"] * 15))),
        # Python's $ matches before a final newline: the schema must not accept one (escaped here).
        ("escaped newline at the end of a string", VALID.replace('챌린지!"', '챌린지!\\n"')),
        ("escaped newline at the end of a title", VALID.replace('채식 도시락"', '채식 도시락\\n"')),
    ],
)
def test_broken_answers_are_rejected_by_both(name: str, broken: str) -> None:
    assert not matches(GRAMMAR, broken), name
    assert not schema_accepts(broken), name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(compiled(GRAMMAR), fullmatch=True))
def test_every_text_the_grammar_allows_is_strict_json_that_the_schema_accepts(text: str) -> None:
    assert schema_accepts(text), text


def _schema_pattern(definition: str) -> str:
    node = SCHEMA["$defs"][definition]
    pattern = str(node["properties"]["title"]["pattern"] if definition == "challenge" else node["pattern"])
    return pattern.removesuffix("(?!\\n)$") + "$"


_sentence = st.from_regex(_schema_pattern("sentence"), fullmatch=True)
_title_rest = st.from_regex(_schema_pattern("challenge").removeprefix("^[123]\\. "), fullmatch=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sentence, st.lists(st.tuples(_title_rest, _sentence), min_size=3, max_size=3))
def test_every_answer_the_schema_allows_is_allowed_by_the_grammar(recommend: str, items: list[tuple[str, str]]) -> None:
    document = {
        "recommend": recommend,
        "challenges": [
            {"title": f"{number}. {title}", "description": description}
            for number, (title, description) in enumerate(items, start=1)
        ],
    }
    assert VALIDATOR.is_valid(document)
    # The grammar also fixes key order and allows no whitespace: compare the compact form.
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    assert matches(GRAMMAR, text), text


def test_schema_length_bounds_equal_the_grammar_bounds() -> None:
    sentence = SCHEMA["$defs"]["sentence"]
    title = SCHEMA["$defs"]["challenge"]["properties"]["title"]
    assert sentence["maxLength"] == max_chars(GRAMMAR, "sentence")
    assert title["maxLength"] == len("1. ") + max_chars(GRAMMAR, "title")


def test_token_budget_covers_the_longest_answer_in_bytes() -> None:
    # Every generated token carries at least one byte; plus one end-of-generation token.
    assert answer.max_tokens() == GRAMMAR.max_bytes() + 1
    longest_word = "힣" * 8
    longest_sentence = " ".join([longest_word] * 14)
    longest_title = " ".join([longest_word] * 6)
    longest = json.dumps(
        {
            "recommend": longest_sentence,
            "challenges": [{"title": f"{n}. {longest_title}", "description": longest_sentence} for n in (1, 2, 3)],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert matches(GRAMMAR, longest)
    assert len(longest.encode("utf-8")) == GRAMMAR.max_bytes()


def test_recursive_or_unbounded_grammars_are_refused() -> None:
    with pytest.raises(GrammarError, match="recursive"):
        Grammar('root ::= "(" root ")" | "x"')
    with pytest.raises(GrammarError, match="bound"):
        Grammar('root ::= "a"*').max_bytes()
    with pytest.raises(GrammarError, match="undefined"):
        Grammar("root ::= missing")
