"""Turns the model's JSON, as it grows, into the readable text of ``challenge`` events.

The model writes ``{"recommend":"…","challenges":[{"title":"1. …","description":"…"},…]}``;
users must see ``recommend``, then each title and description, never JSON syntax. The
renderer follows the JSON one character at a time and emits only string values, each preceded
by the separator the contract puts before that field, so the pieces add up exactly to
``answer.render``. Its input is whole characters (the engine never splits a UTF-8 sequence).
"""

from __future__ import annotations

# What stands before each field in the rendering; the first field (recommend) has nothing.
SEPARATOR_BEFORE = {"recommend": "", "title": "\n\n", "description": "\n"}

_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class AnswerRenderer:
    def __init__(self) -> None:
        self._in_string = False
        self._string_is_value = False
        self._after_colon = False
        self._key_chars: list[str] = []
        self._key = ""
        self._escape: str | None = None  # characters after a backslash, while incomplete
        self._high_surrogate: int | None = None
        self._rendered: list[str] = []

    @property
    def text(self) -> str:
        """Everything rendered so far."""
        return "".join(self._rendered)

    def feed(self, chunk: str) -> str:
        """The readable text that ``chunk`` adds (possibly empty)."""
        out: list[str] = []
        for ch in chunk:
            if self._in_string:
                self._feed_string_char(ch, out)
            elif ch == '"':
                self._in_string = True
                self._string_is_value = self._after_colon
                if self._string_is_value:
                    out.append(SEPARATOR_BEFORE.get(self._key, ""))
                else:
                    self._key_chars = []
            elif ch == ":":
                self._after_colon = True
            elif ch in ",{[":
                self._after_colon = False
        piece = "".join(out)
        self._rendered.append(piece)
        return piece

    def _feed_string_char(self, ch: str, out: list[str]) -> None:
        if self._escape is not None:
            self._escape += ch
            decoded = self._decode_escape(self._escape)
            if decoded is not None:
                self._escape = None
                self._emit(decoded, out)
            return
        if ch == "\\":
            self._escape = ""
        elif ch == '"':
            self._in_string = False
            if self._string_is_value:
                self._after_colon = False
            else:
                self._key = "".join(self._key_chars)
        else:
            self._emit(ch, out)

    def _decode_escape(self, escape: str) -> str | None:
        if escape[0] != "u":
            return _SIMPLE_ESCAPES.get(escape[0], escape[0])
        if len(escape) < 5:
            return None
        code = int(escape[1:5], 16)
        if 0xD800 <= code < 0xDC00:
            # Half of a surrogate pair: wait for the other half.
            self._high_surrogate = code
            return ""
        if 0xDC00 <= code < 0xE000 and self._high_surrogate is not None:
            code = 0x10000 + ((self._high_surrogate - 0xD800) << 10) + (code - 0xDC00)
        self._high_surrogate = None
        return chr(code)

    def _emit(self, text: str, out: list[str]) -> None:
        if self._string_is_value:
            out.append(text)
        else:
            self._key_chars.append(text)
