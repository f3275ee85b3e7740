"""Turning chat messages into the prompt text a model was trained on.

The model's own chat template (the Jinja text stored in the GGUF) is used when there is one.
Some templates have no system role (Mistral's raises an error or drops it), so the template is
probed once: if a system message does not come out in the prompt, instructions are folded into
the first user turn instead. A model with no template at all (a base model such as
gemma-3-270m) gets a plain instruction/answer layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.engine.base import ChatMessage

_PROBE = "LEAFRESH-SYSTEM-PROBE"


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


class ChatFormatter:
    """Renders messages with a GGUF chat template, or the fallback layout when there is none."""

    def __init__(self, template: str | None, bos_token: str = "", eos_token: str = "") -> None:
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = None
        if template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template = env.from_string(template)
        self.uses_model_template = self._template is not None
        self.supports_system_role = self._probe_system_role()

    def _probe_system_role(self) -> bool:
        if self._template is None:
            return True
        probe = (ChatMessage("system", _PROBE), ChatMessage("user", "hello"))
        try:
            return _PROBE in self._render_template(probe)
        except TemplateError:
            return False

    def _render_template(self, messages: Sequence[ChatMessage]) -> str:
        assert self._template is not None
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def format(self, messages: Sequence[ChatMessage]) -> str:
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
