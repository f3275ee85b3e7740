"""Turning chat messages into the prompt text a model was trained on.

The model's own chat template (the Jinja text stored in the GGUF) is used when there is one.
Our instructions must open every prompt: that is what makes the prefix every request shares,
whose KV cache is reused. Templates disagree about system messages: ChatML writes one first,
Mistral-7B-Instruct-v0.3's first template raises on one, and its later one moves it into the
*last* user turn, behind the whole conversation. So the template is probed once with a
conversation of several turns: unless a system message comes out before the first user turn,
the instructions are folded into the first user turn instead. A model with no template at all
(a base model such as gemma-3-270m) gets a plain instruction/answer layout.

Message text is data, never markup: the rendered prompt is tokenized with control-token parsing
on (the template writes ``[INST]``, ``<|im_start|>``, ``<start_of_turn>`` as text), so a user who
types one would otherwise write a real role token. Every control token's text found in a
message is broken with an invisible U+2060 WORD JOINER before rendering (``ControlTextGuard``):
it reads the same and tokenizes as plain text. llama-server and vLLM render and tokenize the
whole prompt with special tokens parsed, user text included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.engine.base import ChatMessage

_PROBE = "LEAFRESH-SYSTEM-PROBE"
_FIRST_USER = "LEAFRESH-FIRST-USER"


class TemplateRaised(TemplateError):
    """A template called raise_exception (how chat templates reject a conversation)."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def fold_system_into_user(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """Instructions first, then the user's text, as one user turn."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return tuple(rest)
    for index, message in enumerate(rest):
        if message.role == "user":
            rest[index] = ChatMessage("user", f"{system}\n\n{message.content}")
            return tuple(rest)
    return (ChatMessage("user", system), *rest)


# Invisible, and no tokenizer joins it into a control token's text.
_BREAK = "\u2060"


class ControlTextGuard:
    """Breaks the text of a model's control tokens wherever it appears in message text."""

    def __init__(self, control_texts: Iterable[str]) -> None:
        # Indexed by their first two characters, longest first: one dictionary look-up per
        # character of a message, whatever the size of the vocabulary (gemma has thousands).
        # A one-character control token cannot be broken and is left alone.
        self._by_start: dict[str, list[str]] = {}
        for text in sorted({text for text in control_texts if len(text) >= 2}, key=len, reverse=True):
            self._by_start.setdefault(text[:2], []).append(text)

    def __call__(self, text: str) -> str:
        if not self._by_start:
            return text
        out: list[str] = []
        position = 0
        while position < len(text):
            for candidate in self._by_start.get(text[position : position + 2], ()):
                if text.startswith(candidate, position):
                    out.append(candidate[0] + _BREAK + candidate[1:])
                    position += len(candidate)
                    break
            else:
                out.append(text[position])
                position += 1
        return "".join(out)


class ChatFormatter:
    """Renders messages with a GGUF chat template, or the fallback layout when there is none."""

    def __init__(
        self,
        template: str | None,
        bos_token: str = "",
        eos_token: str = "",
        control_texts: Iterable[str] = (),
    ) -> None:
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._guard = ControlTextGuard(control_texts)
        self._template = None
        if template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template = env.from_string(template)
        self.uses_model_template = self._template is not None
        # Whether a system message comes out first, so that it can be passed as one.
        self.supports_system_role = self._probe_system_first()

    def _probe_system_first(self) -> bool:
        if self._template is None:
            return True
        probe = (
            ChatMessage("system", _PROBE),
            ChatMessage("user", _FIRST_USER),
            ChatMessage("assistant", "answer"),
            ChatMessage("user", "hello"),
        )
        try:
            text = self._render_template(probe)
        except TemplateError:
            return False
        return _PROBE in text and _FIRST_USER in text and text.index(_PROBE) < text.index(_FIRST_USER)

    def _render_template(self, messages: Sequence[ChatMessage]) -> str:
        assert self._template is not None
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def format(self, messages: Sequence[ChatMessage]) -> str:
        messages = [ChatMessage(message.role, self._guard(message.content)) for message in messages]
        if self._template is None:
            return fallback_prompt(messages)
        if not self.supports_system_role:
            messages = fold_system_into_user(messages)
        return self._render_template(messages)


def fallback_prompt(messages: Sequence[ChatMessage]) -> str:
    """A plain layout for models without a chat template: instructions, turns, then the cue
    for the answer. Base models continue text, so the prompt ends where the answer starts."""
    headings = {"system": "### 지시", "user": "### 요청", "assistant": "### 답변"}
    parts = [f"{headings[m.role]}\n{m.content}" for m in messages]
    parts.append(headings["assistant"] + "\n")
    return "\n\n".join(parts)
