"""How much of a model fits the GPU you have, computed before loading it.

From a GGUF's own tensor sizes (or a model's published shapes) this works out the bytes of each
layer, of the KV cache for the chosen context size and cache type, and a margin for llama.cpp's
compute buffers, then how many layers fit a VRAM budget. llama.cpp offloads the *last*
``n_gpu_layers`` layers and, when every layer is offloaded, the output layer as well; the input
embedding always stays in host memory.

The compute-buffer margin is an estimate, not a measurement: a fixed 256 MiB plus the logits
buffer (vocabulary x batch x 4 bytes). Leave headroom on cards that also drive a display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20
# Bytes per element of the KV-cache types llama.cpp offers (q8_0: 34-byte blocks of 32, q4_0: 18).
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# ggml's enum values for those types, for llama_context_params.type_k / type_v.
KV_TYPE_GGML = {"f16": 1, "q8_0": 8, "q4_0": 2}
COMPUTE_MARGIN_BYTES = 256 * MIB
# Bytes per weight of the quantization types a Q4_K_M file mixes (256-weight super-blocks).
_BYTES_PER_WEIGHT = {"F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32, "Q6_K": 210 / 256, "Q5_K": 176 / 256, "Q4_K": 144 / 256}


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    layer_bytes: tuple[int, ...]
    embedding_bytes: int
    output_bytes: int

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.embedding_bytes + self.output_bytes

    def kv_bytes_per_layer(self, context: int, kv_type: str) -> int:
        per_token = self.n_head_kv * (self.head_dim_k + self.head_dim_v) * KV_TYPE_BYTES[kv_type]
        return int(context * per_token)


@dataclass(frozen=True)
class MemoryPlan:
    shape: ModelShape
    context: int
    kv_type: str
    batch: int
    budget_bytes: int | None
    gpu_layers: int
    gpu_bytes: int
    host_bytes: int
    prompt_cache_bytes: int = 0  # LEAFRESH_PROMPT_CACHE_MIB, part of host_bytes

    @property
    def kv_bytes(self) -> int:
        return self.shape.kv_bytes_per_layer(self.context, self.kv_type) * self.shape.n_layer

    def describe(self) -> str:
        shape = self.shape
        budget = "no GPU" if self.budget_bytes is None else f"budget {self.budget_bytes / MIB:,.0f} MiB"
        per_layer = shape.layer_bytes[0] if shape.layer_bytes else 0
        return (
            f"{shape.name}: {budget}, context {self.context}, KV cache {self.kv_type}: "
            f"{self.gpu_layers}/{shape.n_layer} layers on the GPU ({per_layer / MIB:,.0f} MiB weights + "
            f"{shape.kv_bytes_per_layer(self.context, self.kv_type) / MIB:,.0f} MiB KV each), "
            f"GPU {self.gpu_bytes / MIB:,.0f} MiB, host {self.host_bytes / MIB:,.0f} MiB "
            f"(weights {shape.weight_bytes / MIB:,.0f} MiB, KV cache {self.kv_bytes / MIB:,.0f} MiB in all, "
            f"prompt cache up to {self.prompt_cache_bytes / MIB:,.0f} MiB)"
        )


def levers(shape: ModelShape, context: int, kv_type: str, batch: int) -> list[str]:
    """What each low-VRAM setting saves against the given one, in MiB."""
    base = plan(shape, context, kv_type, None, batch)
    lines = []
    for other in ("f16", "q8_0", "q4_0"):
        if other != kv_type:
            saved = base.kv_bytes - plan(shape, context, other, None, batch).kv_bytes
            lines.append(f"LEAFRESH_KV_CACHE_TYPE={other}: KV cache {saved / MIB:+,.0f} MiB saved")
    half = plan(shape, context // 2, kv_type, None, batch)
    lines.append(f"LEAFRESH_CONTEXT_SIZE={context // 2}: {(base.kv_bytes - half.kv_bytes) / MIB:+,.0f} MiB saved")
    smaller = max(64, batch // 2)
    saved = compute_margin(shape, batch) - compute_margin(shape, smaller)
    lines.append(f"LEAFRESH_BATCH_SIZE={smaller}: {saved / MIB:+,.0f} MiB of compute buffer saved")
    return lines


def compute_margin(shape: ModelShape, batch: int) -> int:
    return COMPUTE_MARGIN_BYTES + shape.n_vocab * batch * 4


def plan(
    shape: ModelShape,
    context: int,
    kv_type: str,
    budget_bytes: int | None,
    batch: int = 512,
    prompt_cache_bytes: int = 0,
) -> MemoryPlan:
    """The most layers that fit ``budget_bytes`` (None: no GPU, everything on the host); the
    prompt cache (finished prompts' cells, issue #22) is host memory whatever the layers."""
    kv_layer = shape.kv_bytes_per_layer(context, kv_type)
    margin = compute_margin(shape, batch)

    def gpu_need(layers: int) -> int:
        if layers == 0:
            return 0
        # The last `layers` layers go to the GPU; all of them also take the output layer.
        need = sum(shape.layer_bytes[shape.n_layer - layers :]) + layers * kv_layer + margin
        return need + (shape.output_bytes if layers == shape.n_layer else 0)

    layers = 0
    if budget_bytes is not None:
        while layers < shape.n_layer and gpu_need(layers + 1) <= budget_bytes:
            layers += 1
    gpu = gpu_need(layers)
    host_layers = shape.n_layer - layers
    host = (
        sum(shape.layer_bytes[:host_layers])
        + host_layers * kv_layer
        + shape.embedding_bytes
        + (shape.output_bytes if layers < shape.n_layer else 0)
        + margin
        + prompt_cache_bytes
    )
    return MemoryPlan(shape, context, kv_type, batch, budget_bytes, layers, gpu, host, prompt_cache_bytes)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value.tolist()[0] if hasattr(value, "tolist") else value


def shape_from_gguf(path: Path) -> ModelShape:
    """Read sizes from the GGUF's header and tensor table (memory-mapped; nothing is loaded)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = _field(reader, "general.architecture", "llama")
    n_layer = int(_field(reader, f"{arch}.block_count"))
    n_embd = int(_field(reader, f"{arch}.embedding_length"))
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_head))
    head_dim_k = int(_field(reader, f"{arch}.attention.key_length", n_embd // n_head))
    head_dim_v = int(_field(reader, f"{arch}.attention.value_length", n_embd // n_head))
    layers = [0] * n_layer
    embedding = output = 0
    n_vocab = 0
    for tensor in reader.tensors:
        size = int(tensor.n_bytes)
        if tensor.name.startswith("blk."):
            layers[int(tensor.name.split(".")[1])] += size
        elif tensor.name.startswith("token_embd"):
            embedding += size
            n_vocab = int(max(tensor.shape))
        else:
            output += size
    return ModelShape(
        name=path.name,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_vocab=n_vocab,
        layer_bytes=tuple(layers),
        embedding_bytes=embedding,
        output_bytes=output if output else embedding,  # tied embeddings: the output reuses them
    )


def gguf_file_type(path: Path) -> int | None:
    """general.file_type of a GGUF (0 F32, 1 F16, 7 Q8_0, 15 Q4_K_M, 32 BF16, ...)."""
    from gguf import GGUFReader

    value = _field(GGUFReader(str(path)), "general.file_type")
    return None if value is None else int(value)


def q4_k_m_more_bits(layer: int, n_layer: int) -> bool:
    # llama.cpp's Q4_K_M recipe gives attn_v and ffn_down Q6_K in these layers, Q4_K elsewhere.
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def shape_from_published(
    name: str, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, n_vocab: int, quant: str = "Q4_K_M"
) -> ModelShape:
    """Tensor sizes of a llama-family model worked out from its published hyperparameters and
    llama.cpp's Q4_K_M recipe: for planning before the file is downloaded."""
    if quant != "Q4_K_M":
        raise ValueError("only the Q4_K_M recipe is known")
    head_dim = n_embd // n_head
    kv_dim = n_head_kv * head_dim
    q4, q6, f32 = _BYTES_PER_WEIGHT["Q4_K"], _BYTES_PER_WEIGHT["Q6_K"], _BYTES_PER_WEIGHT["F32"]
    layers = []
    for layer in range(n_layer):
        more = q6 if q4_k_m_more_bits(layer, n_layer) else q4
        weights = (n_embd * n_embd * 2 + n_embd * kv_dim + n_embd * n_ff * 2) * q4  # q, o, k, gate, up
        weights += (n_embd * kv_dim + n_ff * n_embd) * more  # v, down
        weights += 2 * n_embd * f32  # the two norms
        layers.append(int(weights))
    return ModelShape(
        name=name,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim,
        head_dim_v=head_dim,
        n_vocab=n_vocab,
        layer_bytes=tuple(layers),
        embedding_bytes=int(n_vocab * n_embd * q4),
        output_bytes=int(n_vocab * n_embd * q6 + n_embd * f32),
    )


MISTRAL_7B_INSTRUCT_V03_Q4_K_M = shape_from_published(
    "Mistral-7B-Instruct-v0.3 Q4_K_M (published shapes)",
    n_layer=32,
    n_embd=4096,
    n_ff=14336,
    n_head=32,
    n_head_kv=8,
    n_vocab=32768,
)
