"""The production model's stand-in: made offline, with Mistral-7B-Instruct-v0.3's tensor table,
tokenizer and templates (leafresh-standin, service/tools/standin.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from gguf import GGUFReader

from service.engine.memory_plan import MISTRAL_7B_INSTRUCT_V03_Q4_K_M
from service.tools.modelhub import FetchError, fetch, load_catalog
from service.tools.standin import StandinError, chat_template, compare, load_standin, tensor_plan
from tests.support.models import STANDIN_ID, STANDIN_LAYERS, STANDIN_WIDTH


def test_the_full_size_recipe_is_the_published_q4_k_m_table() -> None:
    spec = load_standin(STANDIN_ID)
    plans = tensor_plan(spec)
    assert len(plans) == 291  # the published file's tensor count: 9 per layer, 32 layers, 3 more
    assert Counter(plan.expected_type for plan in plans) == {"Q4_K": 193, "Q6_K": 33, "F32": 65}
    # The same recipe our memory plan derives the published 4.37 GB from.
    published = MISTRAL_7B_INSTRUCT_V03_Q4_K_M.weight_bytes
    assert abs(published - spec.published_size_bytes) / spec.published_size_bytes < 0.01


def test_a_scaled_down_standin_has_the_real_vocabulary_template_and_recipe(standin_path: Path) -> None:
    spec = load_standin(STANDIN_ID).scaled(STANDIN_LAYERS, STANDIN_WIDTH)
    comparison = compare(standin_path, spec)
    assert comparison.mismatches == []
    assert comparison.size_bytes < 20 * 2**20
    reader = GGUFReader(str(standin_path))
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 32768
    types = Counter(
        int(fields["tokenizer.ggml.token_type"].parts[index][0]) for index in fields["tokenizer.ggml.token_type"].data
    )
    # SentencePiece's own classes, as llama.cpp's converter writes them: 1 unknown, BOS/EOS and
    # the [INST]-style pieces as control, 256 byte pieces.
    assert (types[2], types[3], types[6]) == (1, 750, 256)
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode("utf-8")
    assert template == chat_template(spec, "later")
    assert bool(fields["tokenizer.ggml.add_bos_token"].parts[-1][0])


def test_scaling_keeps_k_quant_sizes_and_refuses_the_rest() -> None:
    spec = load_standin(STANDIN_ID).scaled(2, 512)
    assert (spec.n_embd, spec.n_head, spec.n_head_kv, spec.n_ff, spec.n_vocab) == (512, 4, 1, 1792, 32768)
    assert spec.scaled_down and not load_standin(STANDIN_ID).scaled_down
    with pytest.raises(StandinError, match="256의 배수"):
        load_standin(STANDIN_ID).scaled(width=300)


def test_an_unknown_template_variant_or_model_is_one_line() -> None:
    with pytest.raises(StandinError, match="first, later"):
        chat_template(load_standin(STANDIN_ID), "newest")
    with pytest.raises(StandinError, match=STANDIN_ID):
        load_standin("smollm2-135m-instruct-q4_1")


def test_fetching_a_standin_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"leafresh-standin"):
        fetch(load_catalog()[STANDIN_ID], tmp_path)
