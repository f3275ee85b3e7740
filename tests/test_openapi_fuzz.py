"""Property-based requests generated from our own OpenAPI schema (schemathesis): whatever the
shapes and values, the service answers without a server error. Bounded in examples and time;
runs on the scripted engine, since what is fuzzed is the HTTP surface, not the model."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from service.settings import Settings
from tests.fakes import ScriptedEngine

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Settings(docs_enabled=True), ScriptedEngine()))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_from_the_schema_causes_a_server_error(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error])
