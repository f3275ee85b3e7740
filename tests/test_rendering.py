"""The incremental renderer: readable text only, pieces that add up to the final rendering."""

from __future__ import annotations

import json
import random

import pytest

from service.engine.text import IncompleteText, Utf8PieceDecoder
from service.recommend.answer import parse_model_output, render
from service.recommend.catalog import category_by_code
from service.recommend.rendering import AnswerRenderer
from tests.fakes import GOOD_OUTPUT

RAW = GOOD_OUTPUT  # a valid model answer
CATEGORY = category_by_code("VEGAN")


def render_in_chunks(raw: str, chunks: list[str]) -> list[str]:
    assert "".join(chunks) == raw
    renderer = AnswerRenderer()
    return [renderer.feed(chunk) for chunk in chunks]


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 40))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def test_pieces_add_up_to_the_rendering_of_the_final_answer() -> None:
    expected = render(parse_model_output(RAW, CATEGORY))
    assert expected == (
        "오늘 하루 비건 챌린지!\n\n1. 채식 도시락\n점심에 채식 도시락을 싸 가요.\n\n"
        "2. 두유 라떼\n우유 대신 두유를 골라요.\n\n3. 고기 없는 날\n일주일에 하루 고기 없이 지내요."
    )
    assert "".join(render_in_chunks(RAW, list(RAW))) == expected
    rng = random.Random(7)
    for _ in range(200):
        assert "".join(render_in_chunks(RAW, random_chunks(RAW, rng))) == expected


def test_no_json_syntax_reaches_the_reader() -> None:
    pieces = render_in_chunks(RAW, list(RAW))
    joined = "".join(pieces)
    for syntax in ('"', "{", "}", "[", "]", "recommend", "challenges", "title", "description"):
        assert syntax not in joined


def test_separators_come_when_a_field_opens() -> None:
    renderer = AnswerRenderer()
    assert renderer.feed('{"recommend":"추천') == "추천"
    assert renderer.feed('","challenges":[{"title":"') == "\n\n"
    assert renderer.feed('1. 제목","description":"') == "1. 제목\n"


def test_escapes_are_decoded_even_though_the_grammar_forbids_them() -> None:
    raw = json.dumps({"recommend": 'a"b\\c\nd \U0001f331 é'}, ensure_ascii=True)
    renderer = AnswerRenderer()
    assert "".join(renderer.feed(ch) for ch in raw) == 'a"b\\c\nd \U0001f331 é'


def test_korean_split_across_byte_tokens_comes_out_whole() -> None:
    # What a byte-level tokenizer does to "챌린지": each syllable is 3 bytes, cut anywhere.
    data = RAW.encode("utf-8")
    rng = random.Random(3)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(data)), k=60))
        byte_tokens = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        decoder = Utf8PieceDecoder()
        renderer = AnswerRenderer()
        pieces = [renderer.feed(decoder.feed(token)) for token in byte_tokens]
        decoder.finish()
        assert all("\ufffd" not in piece for piece in pieces)
        assert "".join(pieces) == render(parse_model_output(RAW, CATEGORY))


def test_decoder_holds_half_a_syllable_until_the_rest_arrives() -> None:
    decoder = Utf8PieceDecoder()
    syllable = "챌".encode()
    assert decoder.feed(syllable[:1]) == ""
    assert decoder.feed(syllable[1:2]) == ""
    assert decoder.feed(syllable[2:]) == "챌"
    decoder.finish()


def test_decoder_reports_a_generation_that_ends_inside_a_character() -> None:
    decoder = Utf8PieceDecoder()
    decoder.feed("챌".encode()[:2])
    with pytest.raises(IncompleteText):
        decoder.finish()


def test_decoder_reports_invalid_bytes_instead_of_replacing_them() -> None:
    with pytest.raises(IncompleteText):
        Utf8PieceDecoder().feed(b"\xff")
