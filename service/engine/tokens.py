"""A loaded model's tokens, in one place (issue #23): text to tokens and back, a chat prompt's
tokens (the template, exactly one BOS, the SentencePiece space fix), and the vocabulary as
llguidance reads it. Prompts are tokenized here on the caller's side of the queue, so the decode
thread receives token ids and never renders a template.
"""

from __future__ import annotations

import ctypes

import llama_cpp
from llguidance import LLTokenizer

from service.engine.base import ChatMessage
from service.engine.chat_template import ChatFormatter
from service.engine.runner import CPointer


class Tokenizer:
    """The tokens of the model ``model`` (a llama.cpp model pointer, owned by the engine)."""

    def __init__(self, model: CPointer) -> None:
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._bos = llama_cpp.llama_vocab_bos(self.vocab)
        self._add_bos = self._bos >= 0 and bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self._piece_bytes: dict[int, bytes] = {}
        # Whether the tokenizer writes a word-start space before the text it is given.
        self._space_prefix = self.piece(self.tokenize("a", parse_special=False)[0]).startswith(b" ")
        self._newline = self.tokenize("\n", parse_special=False)  # see spelling
        template = llama_cpp.llama_model_chat_template(model, None)
        self.formatter = ChatFormatter(
            template.decode("utf-8") if template else None,
            bos_token=self._token_text(self._bos),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self.vocab)),
            control_texts=self._control_texts(),
        )

    # -- one token -----------------------------------------------------------------------------

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (part of a character, for byte-level tokenizers)."""
        piece = self._piece_bytes.get(token)
        if piece is None:
            piece = self._piece_bytes[token] = self._piece_uncached(token)
        return piece

    def _piece_uncached(self, token: int, special: bool = False) -> bytes:
        """``special``: control tokens as their text (``</s>``), not as nothing."""
        buf = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if size < 0:
            buf = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:size]

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece_uncached(token, special=True).decode("utf-8", "replace")

    def _control_texts(self) -> list[str]:
        """The text of every token that only special-token parsing produces (llama.cpp parses
        control and unknown tokens only then; user-defined ones always)."""
        parsed_only = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        return [
            self._token_text(token)
            for token in range(self.n_vocab)
            if llama_cpp.llama_vocab_get_attr(self.vocab, token) & parsed_only
        ]

    # -- text ----------------------------------------------------------------------------------

    def tokenize(self, text: str, parse_special: bool) -> list[int]:
        """``text``'s tokens, never with a BOS or EOS added by the tokenizer (``prompt`` decides
        about BOS); ``parse_special``: control-token text becomes control tokens."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, False, parse_special)
        if count < 0:
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, False, parse_special)
        return list(tokens[:count])

    def prompt(self, messages: tuple[ChatMessage, ...]) -> list[int]:
        """The prompt for ``messages``, as the decode loop evaluates it: the chat template's text
        with the control tokens it writes, and exactly one BOS where the model wants one.

        Some templates write ``bos_token`` themselves (Mistral's), others leave it to the
        tokenizer (gemma through our fallback layout). Asking the tokenizer to add one as well
        gives two, which llama.cpp only warns about; so it never adds one, and we add it here
        unless the template did."""
        tokens = self.tokenize(self.formatter.format(messages), parse_special=True)
        if self._space_prefix:
            tokens = self._without_injected_spaces(tokens)
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    def _without_injected_spaces(self, tokens: list[int]) -> list[int]:
        """A SentencePiece tokenizer with a word-start space prefix (Mistral's) gets one added by
        llama.cpp to *every* text after a control token, so the template's ``[INST] 너는`` came
        out as ``[INST]▁▁너는`` on every turn. Mistral's own tokenizer (mistral-common) and
        Hugging Face's add it only at the very start of the text; so does this."""
        result: list[int] = []
        start = 0
        while start < len(tokens):
            end = start
            while end < len(tokens) and not llama_cpp.llama_vocab_is_control(self.vocab, tokens[end]):
                end += 1
            run = tokens[start:end]
            text = b"".join(self.piece(token) for token in run)
            if start > 0 and text.startswith(b" "):
                rest = text[1:].decode("utf-8")
                run = (self.spelling(rest) or run) if rest else []
            result += run
            if end < len(tokens):
                result.append(tokens[end])
            start = end + 1
        return result

    def spelling(self, text: str) -> list[int]:
        """The tokens that write exactly ``text`` in the middle of an answer (empty if none do)."""
        # A SentencePiece tokenizer puts a word-start space before text that opens what it is
        # given (llama.cpp's add_space_prefix: Mistral's, not SmolLM2's or gemma's), so the
        # tokens of `너는` alone would spell ` 너는`. Behind a newline, which it writes as a
        # byte token that merges with nothing, there is no such space.
        wanted = text.encode("utf-8")
        for lead, before in (("", []), ("\n", self._newline)):
            tokens = self.tokenize(lead + text, parse_special=False)
            rest = tokens[len(before) :]
            if tokens[: len(before)] == before and b"".join(self.piece(token) for token in rest) == wanted:
                return rest
        return []

    # -- llguidance ------------------------------------------------------------------------------

    def guidance(self) -> LLTokenizer:
        """The vocabulary as llguidance reads it (as its own llama.cpp adapter builds it, but
        without the deprecated calls): every token's bytes, control tokens marked with a 0xff
        byte so that no grammar text can ever produce them, and llama.cpp's tokenizer for the
        text the grammar forces."""
        attributes = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        tokens = []
        for token in range(self.n_vocab):
            data = self._piece_uncached(token, special=True)
            attr = llama_cpp.llama_vocab_get_attr(self.vocab, token) & attributes
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (attr and data.startswith(b"<") and data.endswith(b">")):
                data = b"\xff" + data
            tokens.append(data)
        tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
        tokenizer: LLTokenizer = LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
            tokens=tokens,
            vocab_ptr=self.vocab,
            tokenize_fptr=tokenize,
            eos_token=llama_cpp.llama_vocab_eos(self.vocab),
            slices=None,
        )
        return tokenizer
