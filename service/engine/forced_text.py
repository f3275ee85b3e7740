"""Where the grammar leaves the model no choice: the text that must come next.

Much of an answer is fixed by the grammar (``","challenges":[{"title":"1. `` and the like).
Jump-forward decoding (issue #6, as SGLang does it) appends the tokens of such text in one
decode call instead of sampling them one by one. llama.cpp's grammar sampler can only say
whether a given token is allowed, not which text is forced, so this module follows the same
grammar (read by ``service.engine.grammar``) as a character automaton: a Thompson NFA whose state set
advances with every character the model writes. Text is forced while every live state expects
the same single character and none could end the answer there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.grammar import CharClass, Choice, Grammar, Literal, Node, Repeat, RuleRef, Sequence

# The longest forced text looked for at once; our literals are far shorter.
_MAX_FORCED_CHARS = 256


@dataclass
class _State:
    # One character edge (a class; a literal character is a class of one) or epsilon edges.
    edge: CharClass | None = None
    target: int = -1
    epsilon: list[int] = field(default_factory=list)


def _matches(edge: CharClass, char: str) -> bool:
    point = ord(char)
    inside = any(low <= point <= high for low, high in edge.ranges)
    return inside != edge.negated


def _single_char(edge: CharClass) -> str | None:
    if not edge.negated and len(edge.ranges) == 1 and edge.ranges[0][0] == edge.ranges[0][1]:
        return chr(edge.ranges[0][0])
    return None


class GrammarAutomaton:
    """The grammar's language as a character NFA, built once per grammar."""

    def __init__(self, grammar: Grammar) -> None:
        self._grammar = grammar
        self._states: list[_State] = []
        self.start_state = self._new()
        self.final_state = self._build(RuleRef(grammar.root), self.start_state)
        self._closures = [self._closure_of(index) for index in range(len(self._states))]
        self.start = self._closures[self.start_state]

    def _new(self) -> int:
        self._states.append(_State())
        return len(self._states) - 1

    def _edge(self, start: int, edge: CharClass) -> int:
        end = self._new()
        self._states[start].edge = edge
        self._states[start].target = end
        return end

    def _build(self, node: Node, start: int) -> int:
        """Adds ``node``'s states after ``start``; returns the state reached when it is done."""
        if isinstance(node, Literal):
            for char in node.text:
                point = ord(char)
                start = self._edge(start, CharClass(((point, point),), negated=False))
            return start
        if isinstance(node, CharClass):
            return self._edge(start, node)
        if isinstance(node, RuleRef):
            return self._build(self._grammar.rules[node.name], start)
        if isinstance(node, Sequence):
            for item in node.items:
                start = self._build(item, start)
            return start
        if isinstance(node, Choice):
            end = self._new()
            for option in node.options:
                branch = self._new()
                self._states[start].epsilon.append(branch)
                self._states[self._build(option, branch)].epsilon.append(end)
            return end
        return self._build_repeat(node, start)

    def _build_repeat(self, node: Repeat, start: int) -> int:
        for _ in range(node.min):
            start = self._build(node.item, start)
        end = self._new()
        self._states[start].epsilon.append(end)
        if node.max is None:
            loop = self._new()
            self._states[start].epsilon.append(loop)
            after = self._build(node.item, loop)
            self._states[after].epsilon.extend([loop, end])
            return end
        for _ in range(node.max - node.min):
            start = self._build(node.item, start)
            self._states[start].epsilon.append(end)
        return end

    def _closure_of(self, index: int) -> frozenset[int]:
        seen = {index}
        stack = [index]
        while stack:
            for nxt in self._states[stack.pop()].epsilon:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(seen)

    def alphabet(self) -> frozenset[str] | None:
        """Every character the grammar can ever write; None when a negated class allows any."""
        chars: set[str] = set()
        for state in self._states:
            if state.edge is None:
                continue
            if state.edge.negated:
                return None
            for low, high in state.edge.ranges:
                chars.update(chr(point) for point in range(low, high + 1))
        return frozenset(chars)

    def step(self, states: frozenset[int], char: str) -> frozenset[int]:
        """The states after reading ``char``; empty when the grammar does not allow it."""
        reached: set[int] = set()
        for index in states:
            state = self._states[index]
            if state.edge is not None and _matches(state.edge, char):
                reached |= self._closures[state.target]
        return frozenset(reached)

    def is_final(self, states: frozenset[int]) -> bool:
        return self.final_state in states

    def can_continue(self, states: frozenset[int]) -> bool:
        return any(self._states[index].edge is not None for index in states)

    def forced(self, states: frozenset[int]) -> str:
        """The text every continuation from ``states`` starts with (empty if none is forced)."""
        text: list[str] = []
        while len(text) < _MAX_FORCED_CHARS and not self.is_final(states):
            edges = [self._states[index].edge for index in states]
            chars = {_single_char(edge) for edge in edges if edge is not None}
            if len(chars) != 1 or None in chars:
                break
            char = chars.pop()
            assert char is not None  # for mypy: None was ruled out above
            text.append(char)
            states = self.step(states, char)
        return "".join(text)


class ForcedTextTracker:
    """Follows one answer as it is written and says what text is forced next."""

    def __init__(self, automaton: GrammarAutomaton) -> None:
        self._automaton = automaton
        self._states = automaton.start

    def feed(self, text: str) -> None:
        for char in text:
            self._states = self._automaton.step(self._states, char)
        if not self._states:
            raise ValueError(f"text outside the grammar: {text!r}")

    def forced(self) -> str:
        return self._automaton.forced(self._states)

    @property
    def complete(self) -> bool:
        """The answer is whole and the grammar allows nothing more: only the end may follow."""
        return self._automaton.is_final(self._states) and not self._automaton.can_continue(self._states)
