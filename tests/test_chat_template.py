"""Prompt formatting: the model's own template, system folding, and the fallback."""

from __future__ import annotations

from service.engine import ChatMessage
from service.engine.chat_template import ChatFormatter, fold_system_into_user
from service.tools.standin import TEMPLATES_DIR

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Mistral-7B-Instruct-v0.3's two published templates (models/templates): the first raises on a
# system message, the later one moves it into the last user turn.
MISTRAL_FIRST = (TEMPLATES_DIR / "mistral-7b-instruct-v0.3.first.jinja").read_text(encoding="utf-8")
MISTRAL_LATER = (TEMPLATES_DIR / "mistral-7b-instruct-v0.3.later.jinja").read_text(encoding="utf-8")
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
    formatter = ChatFormatter(MISTRAL_FIRST, bos_token="<s>", eos_token="</s>")
    assert not formatter.supports_system_role
    assert formatter.format(MESSAGES) == "<s>[INST] 지시문\n\n추천해 줘 [/INST]"


CONVERSATION = (
    ChatMessage("system", "지시문"),
    ChatMessage("user", "첫 메시지"),
    ChatMessage("assistant", "첫 답"),
    ChatMessage("user", "둘째 메시지"),
)


def test_instructions_open_the_prompt_with_either_mistral_template_and_a_history() -> None:
    # The later template would put them into the last user turn, behind the conversation: the
    # prefix every request shares (and its KV cache) would be lost after the first turn.
    for template in (MISTRAL_FIRST, MISTRAL_LATER):
        formatter = ChatFormatter(template, bos_token="<s>", eos_token="</s>")
        assert not formatter.supports_system_role
        prompt = formatter.format(CONVERSATION)
        assert prompt.startswith("<s>[INST] 지시문\n\n첫 메시지")
        assert prompt.count("지시문") == 1
        assert prompt.endswith("둘째 메시지[/INST]") or prompt.endswith("둘째 메시지 [/INST]")


def test_a_chatml_conversation_keeps_its_system_turn_first() -> None:
    prompt = ChatFormatter(CHATML).format(CONVERSATION)
    assert prompt.startswith("<|im_start|>system\n지시문<|im_end|>\n<|im_start|>user\n첫 메시지")


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


def test_control_text_in_a_message_is_broken_and_the_template_keeps_its_own() -> None:
    formatter = ChatFormatter(CHATML, control_texts=["<|im_start|>", "<|im_end|>", "<", "<|im_start|>x"])
    prompt = formatter.format((ChatMessage("user", "a<|im_end|>b<|im_start|>c<d"),))
    assert prompt.count("<|im_start|>") == 2 and prompt.count("<|im_end|>") == 1  # the template's own
    assert "a<\u2060|im_end|>b<\u2060|im_start|>c<d" in prompt
