"""Schemathesis against the server's own `/openapi.json`: generated requests, real process.

Both schema-valid (positive) and schema-invalid (negative) requests are generated for every
operation; every response must be a documented status with a documented content type and
body, and never a 5xx. `positive_data_acceptance` is left out on purpose: the schema cannot
say that `threshold` goes only with `scheme=threshold`, nor that `format: binary` bytes must
be a decodable image, so a schema-valid request can rightly get a (documented) 400 or 422.
"""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
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
EXAMPLES = {"POST /v1/segment": 320}
OTHER_EXAMPLES = 25
MIN_REQUESTS = 500


def fuzz(operation, mode: GenerationMode, examples: int, session, statuses: Counter) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(session=session, timeout=60)
        statuses[(operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    run()


def test_generated_requests_get_documented_answers_and_no_5xx(server, summary):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /v1/segment", "GET /v1/model", "GET /healthz", "GET /readyz"} <= labels

    statuses: Counter = Counter()
    with requests.Session() as session:
        for operation in operations:
            examples = EXAMPLES.get(operation.label, OTHER_EXAMPLES)
            fuzz(operation, GenerationMode.POSITIVE, examples, session, statuses)
            if any(operation.iter_parameters()) or len(operation.body):  # else nothing to negate
                fuzz(operation, GenerationMode.NEGATIVE, examples, session, statuses)

    total = sum(statuses.values())
    by_status = Counter()
    for (_, _, status), count in statuses.items():
        by_status[status] += count
    print(f"\nfuzzed {total} requests over {len(operations)} operations: {dict(by_status)}")
    for key, count in sorted(statuses.items()):
        print(f"  {key[0]} [{key[1]}] -> {key[2]}: {count}")
    summary["fuzz"] = {
        "requests": total,
        "operations": len(operations),
        "statuses": {str(k): v for k, v in sorted(by_status.items())},
    }
    assert total >= MIN_REQUESTS
    assert not [status for status in by_status if status >= 500]
    segment = sum(n for (label, _, _), n in statuses.items() if label == "POST /v1/segment")
    assert segment >= MIN_REQUESTS - len(operations) * OTHER_EXAMPLES
    assert healthy(server)
