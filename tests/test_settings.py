"""Settings: sane defaults, the LEAFRESH_ prefix, and a README that lists every one."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from service.settings import Settings, describe_settings_error
from tests.support.service_process import ROOT


def test_defaults_serve_every_interface_on_8000(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "LEAFRESH_HOST", "LEAFRESH_PORT", "LEAFRESH_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert (settings.host, settings.port, settings.model_path) == ("0.0.0.0", 8000, None)
    assert settings.ping_interval_s <= 15


def test_host_and_port_come_from_the_make_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("LEAFRESH_MODEL_PATH", "")
    settings = Settings(_env_file=None)
    assert (settings.host, settings.port, settings.model_path) == ("127.0.0.1", 9000, None)


def test_bad_values_are_named_as_the_operator_wrote_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAFRESH_TEMPERATURE", "9")
    monkeypatch.setenv("PORT", "0")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    line = describe_settings_error(caught.value)
    assert "LEAFRESH_TEMPERATURE" in line and "PORT" in line and "\n" not in line


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(LEAFRESH_[A-Z_]+)`", readme))
    expected = {f"LEAFRESH_{name.upper()}" for name in Settings.model_fields}
    assert expected <= listed, expected - listed


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"ping_interval_s": 0.0001}, "LEAFRESH_PING_INTERVAL_S"),
        ({"ping_interval_s": 60}, "LEAFRESH_PING_INTERVAL_S"),  # the contract: at least every 15 s
        ({"queue_timeout_s": 0.0001}, "LEAFRESH_QUEUE_TIMEOUT_S"),
        ({"send_timeout_s": 0.0001}, "LEAFRESH_SEND_TIMEOUT_S"),
        ({"generation_timeout_s": 0.0001}, "LEAFRESH_GENERATION_TIMEOUT_S"),
        ({"generation_timeout_s": 3600}, "LEAFRESH_GENERATION_TIMEOUT_S"),  # the relay left long before
        ({"queue_timeout_s": 60, "generation_timeout_s": 280}, "LEAFRESH_QUEUE_TIMEOUT_S"),  # 340 s > 290 s
        ({"queue_timeout_s": 250}, "LEAFRESH_QUEUE_TIMEOUT_S"),  # no time left for an auto deadline
        ({"max_sessions": 10**12}, "LEAFRESH_MAX_SESSIONS"),
        ({"parallel": 64, "batch_size": 8}, "LEAFRESH_PARALLEL"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_variable(values: dict[str, Any], named: str) -> None:
    """Issue #21: each of these was accepted, and each failed only later, under traffic."""
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **values)
    assert named in describe_settings_error(caught.value)


def test_the_defaults_let_a_queued_answer_close_before_the_relay_gives_up() -> None:
    settings = Settings(_env_file=None)
    assert settings.queue_timeout_s + settings.auto_deadline_ceiling_s <= settings.relay_timeout_s - 10
    fits = Settings(_env_file=None, queue_timeout_s=20, generation_timeout_s=270)
    assert fits.generation_timeout_s == 270
