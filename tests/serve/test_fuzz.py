"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): no request gets a 5xx.

Every operation the app publishes gets schema-valid requests and schema-breaking ones (wrong
types, missing fields, out-of-range numbers), sent over loopback to the live server with an
admin key, so the handlers past authentication are reached too. Bounded for CI: `FUZZ_EXAMPLES`
per operation and mode (KEFU_FUZZ_EXAMPLES raises it for a longer run).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.serve.conftest import LiveServer

FUZZ_EXAMPLES = int(os.environ.get("KEFU_FUZZ_EXAMPLES", "30"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_the_schema_allows_or_breaks_gets_a_server_error(
    sqlite_server: LiveServer, mode: GenerationMode
) -> None:
    key, _ = sqlite_server.store.create_api_key("fuzz", ["chat", "admin"])
    schema = schemathesis.openapi.from_dict(sqlite_server.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /v1/chat/completions", "POST /v1/feedback", "GET /v1/handoffs"} <= {
        operation.label for operation in operations
    }
    server_errors: list[str] = []
    untestable: list[str] = []
    for operation in operations:
        label = operation.label

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def request(case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
            response = case.call(base_url=sqlite_server.url, timeout=30)
            if response.status_code >= 500:
                server_errors.append(f"{label} → {response.status_code}: {response.text[:300]}")  # noqa: B023 (runs inside the loop)

        try:
            request()
        except Unsatisfiable:  # nothing to break in an operation without inputs (GET /healthz)
            assert mode == GenerationMode.NEGATIVE, label
            untestable.append(label)
    assert server_errors == []
    assert "POST /v1/chat/completions" not in untestable
