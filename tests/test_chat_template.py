"""Prompt formatting: the model's own template, system folding, and the fallback."""

from __future__ import annotations

from service.engine import ChatMessage
from service.engine.chat_template import ChatFormatter, fold_system_into_user

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Mistral-7B-Instruct's older template: any role order other than user/assistant raises.
MISTRAL_STRICT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
# A template that silently drops the system message.
DROPS_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<user>{{ message['content'] }}</user>"
    "{% endif %}{% endfor %}<bot>"
)
MESSAGES = (ChatMessage("system", "지시문"), ChatMessage("user", "추천해 줘"))


def test_a_template_with_a_system_role_keeps_the_system_message() -> None:
    formatter = ChatFormatter(CHATML)
    assert formatter.uses_model_template and formatter.supports_system_role
    assert formatter.format(MESSAGES) == (
        "<|im_start|>system\n지시문<|im_end|>\n<|im_start|>user\n추천해 줘<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_template_that_rejects_system_gets_instructions_in_the_user_turn() -> None:
    formatter = ChatFormatter(MISTRAL_STRICT, bos_token="<s>", eos_token="</s>")
    assert not formatter.supports_system_role
    assert formatter.format(MESSAGES) == "<s>[INST] 지시문\n\n추천해 줘 [/INST]"


def test_a_template_that_drops_system_gets_instructions_in_the_user_turn() -> None:
    formatter = ChatFormatter(DROPS_SYSTEM)
    assert not formatter.supports_system_role
    assert formatter.format(MESSAGES) == "<user>지시문\n\n추천해 줘</user><bot>"


def test_a_model_without_a_template_gets_the_plain_layout() -> None:
    formatter = ChatFormatter(None)
    assert not formatter.uses_model_template
    prompt = formatter.format(MESSAGES)
    assert prompt.startswith("### 지시\n지시문\n\n### 요청\n추천해 줘")
    assert prompt.endswith("### 답변\n")


def test_folding_keeps_later_turns_in_order() -> None:
    turns = (
        ChatMessage("system", "S"),
        ChatMessage("user", "u1"),
        ChatMessage("assistant", "a1"),
        ChatMessage("user", "u2"),
    )
    assert fold_system_into_user(turns) == (
        ChatMessage("user", "S\n\nu1"),
        ChatMessage("assistant", "a1"),
        ChatMessage("user", "u2"),
    )
