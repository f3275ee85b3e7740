"""Bytes from tokens to whole characters.

Byte-level tokenizers split one Korean syllable (3 bytes in UTF-8) across two or three tokens.
Decoding each token on its own gives U+FFFD or drops bytes; this decoder holds the bytes of an
unfinished character until the token that completes it arrives.
"""

from __future__ import annotations

import codecs


def hangul_syllables(text: str) -> int:
    """How many precomposed Hangul syllables (가-힣) ``text`` holds."""
    return sum("가" <= char <= "힣" for char in text)


class IncompleteText(ValueError):
    """Generation ended in the middle of a UTF-8 sequence, or produced invalid bytes."""


class Utf8PieceDecoder:
    def __init__(self) -> None:
        # strict: an invalid sequence is a bug to report, never a silent U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def feed(self, data: bytes) -> str:
        """The whole characters that ``data`` completes (possibly empty)."""
        try:
            return self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise IncompleteText(f"invalid UTF-8 from the model: {exc}") from exc

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished character are held."""
        return bool(self._decoder.getstate()[0])

    def finish(self) -> None:
        """Raise if bytes of an unfinished character are still held."""
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise IncompleteText(f"generation ended inside a character: {exc}") from exc
