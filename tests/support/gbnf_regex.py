"""A GBNF grammar as a Python regular expression, for the tests that prove the grammar and the
JSON schema accept the same answers (tests/test_grammar.py). Only tests need it: the service
reads the grammar for its byte bound alone (service/recommend/gbnf.py)."""

from __future__ import annotations

import re

from service.recommend.gbnf import CharClass, Choice, Grammar, Literal, Node, RuleRef, Sequence


def max_chars(grammar: Grammar, rule: str) -> int:
    """The longest text, in characters, that ``rule`` can produce."""
    return grammar.longest(RuleRef(rule), len, lambda _: 1)


def regex(grammar: Grammar, rule: str | None = None) -> str:
    """A regular expression for exactly the texts ``rule`` (default: the root) produces."""
    return _regex(grammar, RuleRef(rule or grammar.root))


def compiled(grammar: Grammar) -> re.Pattern[str]:
    return re.compile(regex(grammar))


def matches(grammar: Grammar, text: str) -> bool:
    return compiled(grammar).fullmatch(text) is not None


def _class_regex(node: CharClass) -> str:
    parts = []
    for low, high in node.ranges:
        parts.append(re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}")
    return f"[{'^' if node.negated else ''}{''.join(parts)}]"


def _regex(grammar: Grammar, node: Node) -> str:
    if isinstance(node, Literal):
        return re.escape(node.text)
    if isinstance(node, CharClass):
        return _class_regex(node)
    if isinstance(node, RuleRef):
        return f"(?:{_regex(grammar, grammar.rules[node.name])})"
    if isinstance(node, Sequence):
        return "".join(_regex(grammar, item) for item in node.items)
    if isinstance(node, Choice):
        return "(?:" + "|".join(_regex(grammar, option) for option in node.options) + ")"
    upper = "" if node.max is None else str(node.max)
    return f"(?:{_regex(grammar, node.item)}){{{node.min},{upper}}}"
