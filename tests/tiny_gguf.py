"""A tiny random-weight llama GGUF, written by the tests themselves (for the quantizer)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny_llama(
    path: Path, dtype: type = np.float16, n_embd: int = 256, n_ff: int = 512, n_layer: int = 2
) -> Path:
    """Dimensions are multiples of 256 so that K-quants apply; the vocabulary is byte tokens
    plus a few words, so any UTF-8 text (and so any answer the grammar allows) can be written."""
    rng = np.random.default_rng(0)
    n_head = 4
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("leafresh-tiny-random")
    writer.add_block_count(n_layer)
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(1 if dtype == np.float16 else 0)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += ["▁".encode() + bytes([c]) for c in range(ord("a"), ord("z") + 1)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * 26)  # unknown, control, byte, normal
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def weight(name: str, rows: int, cols: int) -> None:
        writer.add_tensor(name, (rng.standard_normal((rows, cols)) * 0.02).astype(dtype))

    weight("token_embd.weight", len(tokens), n_embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    weight("output.weight", len(tokens), n_embd)
    for layer in range(n_layer):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            weight(f"blk.{layer}.{name}.weight", n_embd, n_embd)
        weight(f"blk.{layer}.ffn_gate.weight", n_ff, n_embd)
        weight(f"blk.{layer}.ffn_up.weight", n_ff, n_embd)
        weight(f"blk.{layer}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
