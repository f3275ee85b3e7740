"""A GBNF grammar read for what its compiler (llguidance, in the engine) cannot tell us: the
longest text, in UTF-8 bytes, it can produce. Every sampled token adds at least one byte (the
engine never samples an empty piece), so that number plus one end-of-generation token is a
``max_tokens`` that can never cut an answer short (issue #2).

It understands the subset of GBNF our grammar uses: literals, character classes, rule
references, groups, alternation and the repetition operators ``? * + {m} {m,} {m,n}``.
Recursive rules are refused: a recursive grammar has no byte bound, and ours must have one.
The regular expression the agreement tests build from the same tree lives with the tests
(tests/support/gbnf_regex.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class GrammarError(ValueError):
    """The grammar file is malformed or outside the subset we can bound."""


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class CharClass:
    ranges: tuple[tuple[int, int], ...]
    negated: bool


@dataclass(frozen=True)
class RuleRef:
    name: str


@dataclass(frozen=True)
class Repeat:
    item: Node
    min: int
    max: int | None  # None: unbounded


@dataclass(frozen=True)
class Sequence:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Choice:
    options: tuple[Node, ...]


Node = Literal | CharClass | RuleRef | Repeat | Sequence | Choice

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_RULE_START = re.compile(r"^([a-zA-Z0-9-]+)\s*::=", re.MULTILINE)
_NAME = re.compile(r"[a-zA-Z0-9-]+")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> GrammarError:
        line = self.text.count("\n", 0, self.pos) + 1
        return GrammarError(f"grammar line {line}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif ch.isspace():
                self.pos += 1
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def read_char(self) -> str:
        ch = self.peek()
        if not ch:
            raise self.error("unexpected end of grammar")
        self.pos += 1
        if ch != "\\":
            return ch
        esc = self.peek()
        self.pos += 1
        if esc in _HEX_ESCAPES:
            width = _HEX_ESCAPES[esc]
            digits = self.text[self.pos : self.pos + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise self.error(f"bad \\{esc} escape")
            self.pos += width
            return chr(int(digits, 16))
        if esc in _ESCAPES:
            return _ESCAPES[esc]
        raise self.error(f"unknown escape \\{esc}")

    def parse_alternatives(self, stop: str) -> Node:
        options = [self.parse_sequence(stop)]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.parse_sequence(stop))
        return options[0] if len(options) == 1 else Choice(tuple(options))

    def parse_sequence(self, stop: str) -> Node:
        items: list[Node] = []
        while True:
            self.skip_space()
            ch = self.peek()
            if ch in ("", "|") or ch == stop:
                break
            items.append(self.parse_postfix(self.parse_atom()))
        if not items:
            raise self.error("empty alternative")
        return items[0] if len(items) == 1 else Sequence(tuple(items))

    def parse_atom(self) -> Node:
        ch = self.peek()
        if ch == '"':
            self.pos += 1
            chars = []
            while self.peek() != '"':
                chars.append(self.read_char())
            self.pos += 1
            return Literal("".join(chars))
        if ch == "[":
            self.pos += 1
            negated = self.peek() == "^"
            if negated:
                self.pos += 1
            ranges = []
            while self.peek() != "]":
                low = self.read_char()
                high = low
                if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] != "]":
                    self.pos += 1
                    high = self.read_char()
                ranges.append((ord(low), ord(high)))
            self.pos += 1
            return CharClass(tuple(ranges), negated)
        if ch == "(":
            self.pos += 1
            node = self.parse_alternatives(")")
            self.skip_space()
            if self.peek() != ")":
                raise self.error("missing )")
            self.pos += 1
            return node
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.error(f"unexpected {ch!r}")
        self.pos = match.end()
        return RuleRef(match.group())

    def parse_postfix(self, node: Node) -> Node:
        while True:
            ch = self.peek()
            if ch == "?":
                node = Repeat(node, 0, 1)
            elif ch == "*":
                node = Repeat(node, 0, None)
            elif ch == "+":
                node = Repeat(node, 1, None)
            elif ch == "{":
                end = self.text.find("}", self.pos)
                if end < 0:
                    raise self.error("missing }")
                low, _, high = self.text[self.pos + 1 : end].partition(",")
                try:
                    lo = int(low)
                    hi = lo if "," not in self.text[self.pos : end] else (int(high) if high.strip() else None)
                except ValueError as exc:
                    raise self.error("bad repetition bounds") from exc
                node = Repeat(node, lo, hi)
                self.pos = end
            else:
                return node
            self.pos += 1


def parse_gbnf(text: str) -> dict[str, Node]:
    """Rules by name. A rule's body runs until the next ``name ::=`` at the start of a line."""
    starts = list(_RULE_START.finditer(text))
    if not starts:
        raise GrammarError("grammar has no rules")
    rules: dict[str, Node] = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        parser = _Parser(text[:end])
        parser.pos = match.end()
        body = parser.parse_alternatives(stop="")
        parser.skip_space()
        if parser.pos != end:
            raise parser.error("trailing text in rule")
        if match.group(1) in rules:
            raise GrammarError(f"rule {match.group(1)} is defined twice")
        rules[match.group(1)] = body
    return rules


def _utf8_len(code_point: int) -> int:
    return len(chr(code_point).encode("utf-8", "surrogatepass"))


def _literal_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _class_bytes(node: CharClass) -> int:
    # A negated class may match any character, up to 4 bytes.
    return 4 if node.negated else max(_utf8_len(high) for _, high in node.ranges)


class Grammar:
    """A parsed GBNF grammar with a root rule."""

    def __init__(self, text: str, root: str = "root") -> None:
        self.text = text
        self.root = root
        self.rules = parse_gbnf(text)
        if root not in self.rules:
            raise GrammarError(f"grammar has no {root} rule")
        self._check_references_and_recursion()

    @classmethod
    def from_file(cls, path: Path) -> Grammar:
        return cls(path.read_text(encoding="utf-8"))

    def _children(self, node: Node) -> tuple[Node, ...]:
        if isinstance(node, Sequence):
            return node.items
        if isinstance(node, Choice):
            return node.options
        if isinstance(node, Repeat):
            return (node.item,)
        return ()

    def _refs(self, node: Node) -> set[str]:
        if isinstance(node, RuleRef):
            return {node.name}
        found: set[str] = set()
        for child in self._children(node):
            found |= self._refs(child)
        return found

    def _check_references_and_recursion(self) -> None:
        done: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise GrammarError(f"rule {name} is recursive ({' -> '.join((*path, name))})")
            if name in done:
                return
            if name not in self.rules:
                raise GrammarError(f"rule {path[-1]} refers to undefined rule {name}")
            for ref in sorted(self._refs(self.rules[name])):
                visit(ref, (*path, name))
            done.add(name)

        visit(self.root, ())

    def max_bytes(self, rule: str | None = None) -> int:
        """The longest text, in UTF-8 bytes, that ``rule`` (default: the root) can produce."""
        return self.longest(RuleRef(rule or self.root), _literal_bytes, _class_bytes)

    def longest(self, node: Node, literal: Callable[[str], int], char: Callable[[CharClass], int]) -> int:
        """The longest text ``node`` produces, measured leaf by leaf with ``literal`` (a literal's
        size) and ``char`` (the largest character of a class)."""
        if isinstance(node, Literal):
            return literal(node.text)
        if isinstance(node, CharClass):
            return char(node)
        if isinstance(node, RuleRef):
            return self.longest(self.rules[node.name], literal, char)
        if isinstance(node, Sequence):
            return sum(self.longest(item, literal, char) for item in node.items)
        if isinstance(node, Choice):
            return max(self.longest(option, literal, char) for option in node.options)
        if node.max is None:
            raise GrammarError("an unbounded repetition (*, + or {m,}) has no length bound")
        return node.max * self.longest(node.item, literal, char)
