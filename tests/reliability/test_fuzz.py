"""Schemathesis against the server's own `/openapi.json`: generated requests, real process.

Both schema-valid (positive) and schema-invalid (negative) requests are generated for every
operation, `/v1` and the Open Inference Protocol's `/v2` alike; every response must be a
documented status with a documented content type and body, and never a 5xx but the one the
API promises: `scheme=auto` with a `deadline_ms` no setting can meet gets 503
`deadline_unreachable` with `Retry-After`, at once.
`positive_data_acceptance` is left out on purpose: the schema cannot say that `threshold` goes
only with `scheme=threshold`, nor that `format: binary` bytes must be a decodable image, so a
schema-valid request can rightly get a (documented) 400 or 422. A generated V2 model name or
version is only ever a 404, so half the V2 cases carry the served ones instead (unless the
path is what a negative case negates), and their bodies reach the tensor checks.
"""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.conftest import healthy

pytestmark = pytest.mark.reliability

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Generated examples per operation and mode: most go to the one endpoint with parameters.
EXAMPLES = {"POST /v1/segment": 320, "POST /v2/models/{name}/infer": 160}
OTHER_EXAMPLES = 25
MIN_REQUESTS = 500
V2_OPERATIONS = {
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/ready",
    "GET /v2/models/{name}/versions/{version}/ready",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
}


def served_model(case, model: dict[str, str]) -> None:
    """The served model's name and version in the case's path, unless the path is negated."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        return
    for key in ("name", "version"):
        if key in (case.path_parameters or {}):
            case.path_parameters[key] = model[key]


def negatable(operation) -> bool:
    """Whether a request can break the schema: through a query or header parameter or the
    body (a string path parameter takes any text, as every path does)."""
    located = {parameter.location for parameter in operation.iter_parameters()}
    return bool(located - {ParameterLocation.PATH}) or bool(len(operation.body))


def deadline_unreachable(response) -> bool:
    """`scheme=auto`'s documented 503: no setting meets the request's `deadline_ms`."""
    headers = {name.lower() for name in response.headers}  # schemathesis lower-cases them
    if response.status_code != 503 or "retry-after" not in headers:
        return False
    try:
        return response.json()["error"]["code"] == "deadline_unreachable"
    except (ValueError, KeyError, TypeError):
        return False


def fuzz(
    operation, mode: GenerationMode, examples: int, session, statuses: Counter, model: dict
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), pin=st.booleans())
    def run(case, pin):
        if pin:
            served_model(case, model)
        response = case.call(session=session, timeout=60)
        promised = deadline_unreachable(response)
        status = "503 deadline_unreachable" if promised else response.status_code
        statuses[(operation.label, mode.value, status)] += 1
        checks = [check for check in CHECKS if not (promised and check is not_a_server_error)]
        case.validate_response(response, checks=checks)

    run()


def test_generated_requests_get_documented_answers_and_no_5xx(server, summary):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /v1/segment", "GET /v1/model", "GET /healthz", "GET /readyz"} <= labels
    assert labels >= V2_OPERATIONS
    model = {key: server.http.get("/v1/model").json()[key] for key in ("name", "version")}

    statuses: Counter = Counter()
    with requests.Session() as session:
        for operation in operations:
            examples = EXAMPLES.get(operation.label, OTHER_EXAMPLES)
            fuzz(operation, GenerationMode.POSITIVE, examples, session, statuses, model)
            if negatable(operation):
                fuzz(operation, GenerationMode.NEGATIVE, examples, session, statuses, model)

    total = sum(statuses.values())
    by_status = Counter()
    for (_, _, status), count in statuses.items():
        by_status[status] += count
    print(f"\nfuzzed {total} requests over {len(operations)} operations: {dict(by_status)}")
    for key, count in sorted(statuses.items(), key=str):
        print(f"  {key[0]} [{key[1]}] -> {key[2]}: {count}")
    summary["fuzz"] = {
        "requests": total,
        "operations": len(operations),
        "statuses": {str(k): v for k, v in sorted(by_status.items(), key=str)},
    }
    assert total >= MIN_REQUESTS
    assert not [status for status in by_status if isinstance(status, int) and status >= 500]
    segment = sum(n for (label, _, _), n in statuses.items() if label == "POST /v1/segment")
    assert segment >= MIN_REQUESTS - len(operations) * OTHER_EXAMPLES
    infer = Counter()
    for (label, _, status), count in statuses.items():
        if label.startswith("POST /v2/"):
            infer[status] += count
    summary["fuzz"]["v2_infer_statuses"] = {str(k): v for k, v in sorted(infer.items())}
    assert infer[400] > 0 and infer[404] > 0  # bodies were judged, not only unknown models
    assert healthy(server)
