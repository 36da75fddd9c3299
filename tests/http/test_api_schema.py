"""Every endpoint against the OpenAPI description, with schemathesis: valid and invalid inputs
generated from the schema, every response checked against it (status codes, content types,
bodies, headers), a 5xx is a failure, and secured calls without the token must be refused.

(schemathesis' lazy pytest loader does not run on pytest 9, so each operation gets a plain
hypothesis test over the operation's strategy.)"""

from __future__ import annotations

import pytest
import schemathesis
from http_helpers import TOKEN
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from starlette.applications import Starlette

from plaudit.daemon._http import ENDPOINTS, openapi_document

# Negative cases only where there is an input to get wrong (parameters or a body).
CASES = [
    (path, method.upper(), mode)
    for path, item in openapi_document()["paths"].items()
    for method, op in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or op.get("parameters") or op.get("requestBody")
]
# Endpoints whose schema-valid requests the daemon may refuse with 400 (an offline fit on data
# that is not a configured face): there a 400 must be such a refusal, not a parsing error.
REFUSING = {(ep.path, ep.method) for ep in ENDPOINTS if 400 in ep.refusals}


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_endpoint_matches_openapi(
    app: Starlette, path: str, method: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=8,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        refusing = mode is GenerationMode.POSITIVE and (path, method) in REFUSING
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {TOKEN}"},
            excluded_checks=[schemathesis.checks.positive_data_acceptance] if refusing else [],
        )
        if refusing and response.status_code == 400:
            assert response.json()["error"] == "refused", response.text
        elif refusing:
            assert response.status_code in (200, 401, 409, 503), response.text

    run()
