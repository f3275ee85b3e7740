"""Grammar-constrained sampling that rarely asks the grammar about the whole vocabulary."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from service.engine.base import GenerationFailed

# llama.cpp handles (model, context, sampler): opaque ctypes pointers.
CPointer = Any

# The layout of llama_token_data, so candidate arrays can be numpy arrays handed to C as is.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class GrammarSampler:
    """Exact grammar-constrained sampling that rarely touches the whole vocabulary.

    Gumbel-max: adding independent Gumbel noise to logits/T and taking the argmax draws from
    softmax(logits/T); the argmax over the *allowed* tokens draws from the distribution the
    grammar leaves, renormalised. So candidates are checked against the grammar in order of
    their noisy score, and the first allowed one is exactly the sample that "apply the grammar
    to every token, then sample" would give. The grammar sees 16 tokens on most steps, 512 on
    some, and all ``possible`` tokens only when none of those 512 is allowed.

    ``possible`` is the part of the vocabulary the grammar can ever allow (tokens made only of
    characters it can write, or of bytes of a split character, and the end tokens; see
    ``possible_tokens``). The others never win, so they need no noise and no check: with
    gemma's 262k vocabulary that is most of the work of a step, and the draw is still exact.
    """

    TIERS = (16, 512)

    def __init__(self, grammar: CPointer, possible: np.ndarray, everything: np.ndarray) -> None:
        self._grammar = grammar
        self._possible = possible  # TOKEN_DATA of the possible tokens, reused across steps
        self._ids = possible["id"].copy()
        self._everything = everything  # TOKEN_DATA for every token id: the last resort
        self.full_vocab_checks = 0

    def allows(self, token: int) -> bool:
        """Whether the grammar, in its current state, allows ``token`` next."""
        window = np.zeros(1, dtype=TOKEN_DATA)
        window["id"] = token
        return bool(self.allowed(window)[0])

    def allowed(self, candidates: np.ndarray) -> np.ndarray:
        """Which of ``candidates`` (TOKEN_DATA) the grammar allows now."""
        candidates["logit"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        allowed: np.ndarray = np.isfinite(candidates["logit"])
        return allowed

    def pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        ids = self._ids
        if temperature <= 0:
            scores = logits[ids].astype(np.float64)
        else:
            scores = logits[ids] / temperature + rng.gumbel(size=len(ids))
        # A candidate set smaller than the widest tier (a tiny test model) is checked whole.
        widest = min(self.TIERS[-1], len(ids))
        top = np.argpartition(scores, -widest)[-widest:]
        top = top[np.argsort(scores[top])[::-1]]
        start = 0
        for size in (min(tier, widest) for tier in self.TIERS):
            if size <= start:
                continue
            window = np.zeros(size - start, dtype=TOKEN_DATA)
            window["id"] = ids[top[start:size]]
            ok = self.allowed(window)
            if ok.any():
                return int(window["id"][int(np.argmax(ok))])
            start = size
        self.full_vocab_checks += 1
        ok = self.allowed(self._possible)
        if ok.any():
            return int(ids[int(np.argmax(np.where(ok, scores, -np.inf)))])
        # Never seen: the grammar allows a token our alphabet ruled out. Stay correct.
        ok = self.allowed(self._everything)
        if not ok.any():
            raise GenerationFailed("the grammar allows no token at all")
        return int(np.argmax(np.where(ok, logits, -np.inf)))


def possible_tokens(
    n_vocab: int, piece: Callable[[int], bytes], is_end: Callable[[int], bool], alphabet: frozenset[str] | None
) -> np.ndarray:
    """TOKEN_DATA for the tokens a grammar writing only ``alphabet`` can ever allow: the end
    tokens, tokens whose text is made of those characters, and tokens that are not whole
    UTF-8 text (bytes of a character split across tokens), which are left for the grammar."""
    if alphabet is None:
        ids = np.arange(n_vocab, dtype=np.int32)
    else:
        keep = []
        for token in range(n_vocab):
            data = piece(token)
            if is_end(token):
                keep.append(token)
            elif data:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    keep.append(token)
                    continue
                if alphabet.issuperset(text):
                    keep.append(token)
        ids = np.array(keep, dtype=np.int32)
    possible = np.zeros(len(ids), dtype=TOKEN_DATA)
    possible["id"] = ids
    return possible
