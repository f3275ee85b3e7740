"""A stand-in for a catalog model whose weights we cannot download: its architecture and
metadata, its real tokenizer and chat template, and random weights, quantized by our own
quantizer (issue #11).

Random weights cost exactly what the real ones cost per token (the same tensors, shapes and
types), so speed and memory measured on a stand-in are the real model's; its tokenizer and
template are the real ones, so everything our code does with tokens (the prompt's BOS, the
system-role handling, jump-forward, the "can ever allow" set, byte-split Korean) meets the
production vocabulary. Only the answers' wording is noise.

The tokenizer is written the way llama.cpp's own converter (``convert_hf_to_gguf.py``,
``_create_vocab_sentencepiece``) writes it from the SentencePiece file: every piece with its
score, and its type from the SentencePiece model (unknown, control, byte, normal).

Scaled down (``layers``, ``width``) the file keeps the real vocabulary and template and is a few
MB, for tests. At full size the F16 intermediate is written tensor by tensor (memory stays at
one tensor) and removed once quantized.
"""

from __future__ import annotations

import importlib.util
import shutil
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from service.engine.memory_plan import q4_k_m_more_bits
from service.tools.modelhub import CATALOG_PATH

TEMPLATES_DIR = CATALOG_PATH.parent / "templates"
# Room to leave on the disk beyond the intermediate and the result.
_DISK_MARGIN_BYTES = 512 * 2**20
# Standard deviation of the random weights: about that of a trained 7B model's matrices.
_WEIGHT_STD = 0.02
# gguf.TokenType values, as llama.cpp's converter assigns them.
_NORMAL, _UNKNOWN, _CONTROL, _UNUSED, _BYTE = 1, 2, 3, 5, 6


class StandinError(Exception):
    """``str()`` is the one line to show."""


@dataclass(frozen=True)
class StandinSpec:
    """What a stand-in copies from the real model (a catalog entry's ``standin`` table)."""

    id: str
    name: str
    file: str
    published_size_bytes: int
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    rope_theta: float
    rms_eps: float
    context_train: int
    tokenizer: str  # "mistral-common:<file in the package's data folder>"
    add_bos: bool
    quant: str
    templates: dict[str, str]  # variant -> file in models/templates
    default_template: str
    # Fewer layers or a narrower width than the real model: only its speed per token is off.
    scaled_down: bool = False

    def scaled(self, layers: int | None = None, width: int | None = None) -> StandinSpec:
        """Fewer layers and/or a narrower model with the same vocabulary, template and head size
        where it fits: heads of 128, 4 query heads per KV head, feed-forward 3.5x the width (all
        as in Mistral-7B), kept to multiples of 256 so that the K-quants apply."""
        spec = replace(self, scaled_down=self.scaled_down or layers is not None or width is not None)
        if layers is not None:
            if layers < 1:
                raise StandinError("--layers는 1 이상이어야 합니다")
            spec = replace(spec, n_layer=layers)
        if width is not None:
            if width < 256 or width % 256:
                raise StandinError("--width는 256의 배수여야 합니다 (K-quant 블록 크기)")
            n_head = max(1, width // (self.n_embd // self.n_head))
            ratio = max(1, self.n_head // self.n_head_kv)
            n_ff = max(256, round(width * self.n_ff / self.n_embd / 256) * 256)
            spec = replace(spec, n_embd=width, n_head=n_head, n_head_kv=max(1, n_head // ratio), n_ff=n_ff)
        return spec


def load_standin(model_id: str, catalog_path: Path = CATALOG_PATH) -> StandinSpec:
    entries = tomllib.loads(catalog_path.read_text(encoding="utf-8"))["models"]
    entry = entries.get(model_id)
    if entry is None or "standin" not in entry:
        known = ", ".join(sorted(name for name, value in entries.items() if "standin" in value))
        raise StandinError(f"스탠드인을 만들 수 있는 카탈로그 id가 아닙니다: {model_id} — 가능한 id: {known}")
    table = entry["standin"]
    return StandinSpec(
        id=model_id,
        name=table["name"],
        file=entry["file"],
        published_size_bytes=int(entry.get("size_bytes", 0)),
        n_layer=int(table["n_layer"]),
        n_embd=int(table["n_embd"]),
        n_ff=int(table["n_ff"]),
        n_head=int(table["n_head"]),
        n_head_kv=int(table["n_head_kv"]),
        n_vocab=int(table["n_vocab"]),
        rope_theta=float(table["rope_theta"]),
        rms_eps=float(table["rms_eps"]),
        context_train=int(entry.get("context_train", 4096)),
        tokenizer=table["tokenizer"],
        add_bos=bool(table.get("add_bos", True)),
        quant=table.get("quant", "Q4_K_M"),
        templates=dict(table["templates"]),
        default_template=table["default_template"],
    )


# -- the tokenizer ---------------------------------------------------------------------------


def tokenizer_path(source: str) -> Path:
    """The SentencePiece file a catalog entry names, found in the installed package that ships
    it (without importing the package: mistral-common's import pulls in far more than a file)."""
    package, _, name = source.partition(":")
    if package != "mistral-common" or not name:
        raise StandinError(f"모르는 토크나이저 출처입니다: {source} (mistral-common:<파일> 형식만 지원)")
    spec = importlib.util.find_spec("mistral_common")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise StandinError("mistral-common 패키지가 없습니다: `make install-dev`로 설치하세요 (개발용 의존성)")
    path = Path(locations[0]) / "data" / name
    if not path.is_file():
        raise StandinError(f"mistral-common에 토크나이저 파일이 없습니다: {path} — 다른 버전의 mistral-common입니다")
    return path


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]


def sentencepiece_vocabulary(path: Path, n_vocab: int) -> Vocabulary:
    """Pieces, scores and types as llama.cpp's converter writes them from a SentencePiece file."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError as exc:
        raise StandinError("sentencepiece 패키지가 없습니다: `make install-dev`로 설치하세요 (개발용 의존성)") from exc
    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(path))
    # Padding past the model's own pieces, as the converter does for a larger vocab_size.
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [_UNUSED] * n_vocab
    for token in range(min(processor.vocab_size(), n_vocab)):
        tokens[token] = processor.IdToPiece(token).encode("utf-8")
        scores[token] = processor.GetScore(token)
        if processor.IsUnknown(token):
            types[token] = _UNKNOWN
        elif processor.IsControl(token):
            types[token] = _CONTROL
        elif processor.IsUnused(token):
            types[token] = _UNUSED
        elif processor.IsByte(token):
            types[token] = _BYTE
        else:
            types[token] = _NORMAL
    return Vocabulary(tokens, scores, types)


def chat_template(spec: StandinSpec, variant: str | None = None) -> str:
    variant = variant or spec.default_template
    if variant not in spec.templates:
        raise StandinError(f"모르는 템플릿입니다: {variant} — 가능한 값: {', '.join(sorted(spec.templates))}")
    return (TEMPLATES_DIR / spec.templates[variant]).read_text(encoding="utf-8")


# -- the tensors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    name: str
    rows: int  # numpy's first axis (ggml's ne[1]): output features
    cols: int  # input features; 0 for a vector
    expected_type: str  # in the quantized file, by llama.cpp's recipe for ``spec.quant``

    @property
    def elements(self) -> int:
        return self.rows * max(self.cols, 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, self.cols) if self.cols else (self.rows,)


def tensor_plan(spec: StandinSpec) -> list[TensorPlan]:
    """Every tensor of a llama-architecture GGUF, in the converter's order, with the type a
    Q4_K_M file gives it (the recipe our memory plan already derives the published size from)."""
    if spec.quant != "Q4_K_M":
        raise StandinError("Q4_K_M만 지원합니다")
    head_dim = spec.n_embd // spec.n_head
    kv = spec.n_head_kv * head_dim
    plans = [TensorPlan("token_embd.weight", spec.n_vocab, spec.n_embd, "Q4_K")]
    for layer in range(spec.n_layer):
        more = "Q6_K" if q4_k_m_more_bits(layer, spec.n_layer) else "Q4_K"
        prefix = f"blk.{layer}."
        plans += [
            TensorPlan(prefix + "attn_norm.weight", spec.n_embd, 0, "F32"),
            TensorPlan(prefix + "ffn_down.weight", spec.n_embd, spec.n_ff, more),
            TensorPlan(prefix + "ffn_gate.weight", spec.n_ff, spec.n_embd, "Q4_K"),
            TensorPlan(prefix + "ffn_up.weight", spec.n_ff, spec.n_embd, "Q4_K"),
            TensorPlan(prefix + "ffn_norm.weight", spec.n_embd, 0, "F32"),
            TensorPlan(prefix + "attn_k.weight", kv, spec.n_embd, "Q4_K"),
            TensorPlan(prefix + "attn_output.weight", spec.n_embd, spec.n_embd, "Q4_K"),
            TensorPlan(prefix + "attn_q.weight", spec.n_embd, spec.n_embd, "Q4_K"),
            TensorPlan(prefix + "attn_v.weight", kv, spec.n_embd, more),
        ]
    plans += [
        TensorPlan("output_norm.weight", spec.n_embd, 0, "F32"),
        TensorPlan("output.weight", spec.n_vocab, spec.n_embd, "Q6_K"),
    ]
    return plans


def f16_bytes(spec: StandinSpec) -> int:
    return sum(p.elements * (4 if not p.cols else 2) for p in tensor_plan(spec))


def _random_tensors(plans: list[TensorPlan], seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for plan in plans:
        if not plan.cols:
            yield np.ones(plan.rows, dtype=np.float32)  # RMS-norm gains, as trained models start
            continue
        weights = rng.standard_normal(plan.shape, dtype=np.float32)
        weights *= _WEIGHT_STD
        yield weights.astype(np.float16)


def write_f16(spec: StandinSpec, template: str, path: Path, seed: int = 0) -> None:
    """The unquantized stand-in, streamed to ``path`` one tensor at a time."""
    import gguf

    vocabulary = sentencepiece_vocabulary(tokenizer_path(spec.tokenizer), spec.n_vocab)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"{spec.name} (leafresh stand-in, random weights)")
    writer.add_vocab_size(spec.n_vocab)
    writer.add_context_length(spec.context_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_rope_dimension_count(spec.n_embd // spec.n_head)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_scores(vocabulary.scores)
    writer.add_token_types(vocabulary.types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(spec.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)
    plans = tensor_plan(spec)
    for plan in plans:
        dtype = np.float16 if plan.cols else np.float32
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(dtype), plan.elements * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in _random_tensors(plans, seed):
        writer.write_tensor_data(tensor)
    writer.close()


def check_disk(spec: StandinSpec, directory: Path) -> None:
    """Fail before writing anything if the F16 intermediate and the result do not fit."""
    directory.mkdir(parents=True, exist_ok=True)
    intermediate = f16_bytes(spec)
    # The F16 file, then the Q4_K_M result beside it (under 30% of it), then a margin.
    need = intermediate + int(intermediate * 0.3) + _DISK_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < need:
        raise StandinError(
            f"디스크 공간이 부족합니다: {directory}에 {need / 2**30:.1f} GiB가 필요하지만 {free / 2**30:.1f} GiB만 "
            "남았습니다 (F16 중간 파일 포함) — --out을 다른 디스크로 지정하거나 공간을 비우세요"
        )


def make_standin(
    spec: StandinSpec,
    out: Path,
    template_variant: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the stand-in to ``out`` (quantized); the F16 intermediate sits beside it and goes."""
    from service.tools.quantize import quantize

    template = chat_template(spec, template_variant)
    check_disk(spec, out.parent)
    intermediate = out.with_name(out.name + ".f16.partial")
    try:
        if progress:
            progress(f"writing F16 ({f16_bytes(spec) / 2**30:.2f} GiB) to {intermediate}")
        write_f16(spec, template, intermediate, seed)
        if progress:
            progress(f"quantizing to {spec.quant}")
        quantize(intermediate, out, spec.quant, threads)
    finally:
        intermediate.unlink(missing_ok=True)
    return out


# -- the comparison with the published file --------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    tensors: int
    mismatches: list[str]
    size_bytes: int
    published_size_bytes: int

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.published_size_bytes if self.published_size_bytes else 0.0

    def describe(self) -> str:
        size = f"{self.size_bytes:,} bytes"
        if self.published_size_bytes:
            size += f" vs published {self.published_size_bytes:,} ({(self.size_ratio - 1) * 100:+.2f}%)"
        verdict = "all names, shapes and types as expected" if not self.mismatches else "; ".join(self.mismatches[:5])
        return f"{self.tensors} tensors: {verdict}; {size}"


def compare(path: Path, spec: StandinSpec) -> Comparison:
    """The written file's tensor table against the recipe (names, shapes, types) and its size
    against the published file's (meaningful at full size only)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    found = {t.name: (tuple(int(n) for n in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors}
    mismatches = []
    plans = tensor_plan(spec)
    for plan in plans:
        got = found.pop(plan.name, None)
        if got is None:
            mismatches.append(f"{plan.name} missing")
        elif got != (plan.shape, plan.expected_type):
            mismatches.append(f"{plan.name}: {got} != {(plan.shape, plan.expected_type)}")
    mismatches += [f"{name} unexpected" for name in found]
    published = 0 if spec.scaled_down else spec.published_size_bytes
    return Comparison(len(reader.tensors), mismatches, path.stat().st_size, published)
