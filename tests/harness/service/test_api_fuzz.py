"""Schema-driven fuzzing of the service's API (Schemathesis, from its own OpenAPI schema) against
a real `harness serve`: no generated request, valid or not, may get a server error, and every
status must be one the schema documents."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.core.result import Err

from tests.harness.service.conftest import Serve

CHECKS = [not_a_server_error, status_code_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(serve: Serve, mode: GenerationMode) -> None:
    served = serve("--jobs", "0", "--quota", "1000")
    token = served.add_team("team-a")
    schema = schemathesis.openapi.from_url(f"{served.url}/api/v1/openapi.json")
    statuses: list[int] = []
    probed = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the service's own schema does not load: that is the bug
            raise result.err()
        operation = result.ok()
        raw = operation.definition.raw
        if mode is GenerationMode.NEGATIVE and not (
            raw.get("parameters") or raw.get("requestBody")
        ):
            continue  # no input to make invalid (GET /limits): nothing negative to generate
        probed.append(operation.label)
        case_strategy = operation.as_strategy(generation_mode=mode)

        @settings(
            max_examples=15,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=case_strategy)
        def probe(case: schemathesis.Case[Any]) -> None:
            response = case.call(
                base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            statuses.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        probe()
    assert len(probed) >= 5 and statuses and 500 not in statuses
