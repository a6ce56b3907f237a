"""Schema-driven fuzzing of the submission server, as a new user's CI might probe it.

Schemathesis reads the server's own OpenAPI schema and generates requests from it, both valid
ones and ones that break it (wrong types, out-of-range numbers, missing fields), against the real
server under uvicorn on the tiny model. No answer may be a 500, and every status code must be one
the schema documents. Bounded in examples so the whole test stays well under a minute.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.templates.test_server import import_server

REQUEST_MODELS = {
    "/process": "ProcessRequest",
    "/tokenize": "TokenizeRequest",
    "/decode": "DecodeRequest",
}
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 25}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("path", ["/process", "/tokenize", "/decode"])
@pytest.mark.parametrize("mode", list(EXAMPLES))
def test_no_generated_request_gets_a_server_error(
    tiny_server_url: str, path: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{tiny_server_url}/openapi.json")
    operation = schema[path]["POST"]
    statuses: list[int] = []
    served: list[object] = []  # the bodies of the negative requests answered 200

    # Generation only: a failure is reported with its request as found, not shrunk for minutes.
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def probe(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=tiny_server_url, timeout=60)
        statuses.append(response.status_code)
        if response.status_code == 200:
            served.append(case.body)
        case.validate_response(response, checks=CHECKS)

    probe()
    assert statuses and 500 not in statuses
    if mode is GenerationMode.NEGATIVE:  # what breaks the schema is refused, not served
        assert set(statuses) <= {200, 400, 422} and {400, 422} & set(statuses), statuses
        # Negative generation sometimes breaks only what the request model ignores (an extra
        # key, a header): a request served must be one the server's own model accepts.
        import_server()  # puts api.py on the path, as the rendered submission has it
        import api

        model = getattr(api, REQUEST_MODELS[path])
        for body in served:
            model.model_validate(body)


def test_the_schema_documents_every_error_status(tiny_server_url: str) -> None:
    spec = httpx.get(f"{tiny_server_url}/openapi.json").json()
    for path in ("/process", "/tokenize", "/decode"):
        documented = set(spec["paths"][path]["post"]["responses"])
        assert {"200", "400", "422", "503"} <= documented, path
