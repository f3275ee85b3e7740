"""Korean text read as Korean (issue #21): one normal form, and words matched where words begin.

Until issue #21 blocked words and category keywords were found as substrings of the message with
its spaces removed. That blocked "사무실 전등이 **꺼져** 있는지" (the lights are off) and
"출근길 **시발역**" (a starting station), turned "사무실 **책상**" into 문화 공유 (책) and
"머신**러닝**" into 플로깅 (러닝), and let a zero-width space, full-width ｆｕｃｋ or decomposed
Hangul (NFD) through. Now:

- text is compared in NFKC (full-width letters become ASCII, decomposed Hangul is composed) with
  format characters removed (zero-width spaces and joiners, the word joiner, BOM, soft hyphen);
- a word matches only at the start of an eojeol (a space-separated unit): Korean attaches its
  particles and endings *after* a word ("병신아", "책을", "러닝하고"), so "머신러닝" never holds
  러닝; a phrase with spaces ("탄소 발자국") may span eojeols;
- a match is dropped where the text there begins with an ordinary word that only starts like the
  keyword or blocked word (책상, 시발역, "꺼져 있", ...): ``catalog.ORDINARY_WORDS``.

A morphological analyzer would find word starts too, but not these exceptions: it reads the
insult "꺼져" and "(the light) is off" as the same verb form, so the exception list is needed
either way (issue #21's note).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Whitespace, and the three control characters ordinary text holds.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, without format (invisible) characters, lower-cased."""
    composed = unicodedata.normalize("NFKC", text)
    return "".join(char for char in composed if unicodedata.category(char) != "Cf").lower()


def has_hidden_characters(text: str) -> bool:
    """Control characters (NUL, ESC, ...) other than tab and line breaks, or format characters
    (zero-width spaces, joiners, bidirectional overrides): nothing a person types as a message."""
    return any(
        (category := unicodedata.category(char)) == "Cf" or (category == "Cc" and char not in _ALLOWED_CONTROLS)
        for char in text
    )


@dataclass(frozen=True)
class Words:
    """A message ready for matching: its normal form without spaces and with one space between
    eojeols, and where each eojeol starts in both."""

    squashed: str
    spaced: str
    starts: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, text: str) -> Words:
        squashed, spaced, starts = "", "", []
        for eojeol in _SPACE.split(normalise(text)):
            if eojeol:
                spaced += " " if spaced else ""
                starts.append((len(squashed), len(spaced)))
                squashed += eojeol
                spaced += eojeol
        return cls(squashed, spaced, tuple(starts))

    def last_end(self, phrase: str, ordinary: Mapping[str, Iterable[str]]) -> int:
        """Where the last match of ``phrase`` at a word start ends in ``squashed`` (-1: none),
        skipping places where an ordinary word that only begins like it stands. A phrase may
        span eojeols ("탄소 발자국" is "탄소발자국"); an ordinary word stays within its eojeol
        unless it has a space itself ("꺼져 있" is also "꺼져있", but "영업일" is not "영업 일")."""
        wanted = _SPACE.sub("", normalise(phrase))
        excused = _excused_forms(ordinary.get(wanted, ()))
        for in_squashed, in_spaced in reversed(self.starts):
            if self.squashed.startswith(wanted, in_squashed) and not self.spaced[in_spaced:].startswith(excused):
                return in_squashed + len(wanted)
        return -1

    def mentions(self, phrase: str, ordinary: Mapping[str, Iterable[str]]) -> bool:
        return self.last_end(phrase, ordinary) >= 0


def _excused_forms(words: Iterable[str]) -> tuple[str, ...]:
    forms: list[str] = []
    for word in words:
        spaced = _SPACE.sub(" ", normalise(word)).strip()
        forms += [spaced, spaced.replace(" ", "")]
    return tuple(forms)
