"""One error table for both APIs: every code the server raises is in it, with its status on
each API, and the OpenAPI descriptions come from it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.errors import ERRORS, ApiError

REPO = Path(__file__).resolve().parents[2]


def raised_codes() -> set[str]:
    """The codes written as `ApiError("...")` in server/ and `SchemeError("...")` in model/."""
    codes = set()
    for path in [*REPO.glob("server/**/*.py"), REPO / "model/scheme_request.py"]:
        text = path.read_text()
        codes |= set(re.findall(r'(?:ApiError|SchemeError)\(\s*"([a-z_]+)"', text))
    return codes


def test_every_raised_code_is_in_the_table():
    codes = raised_codes()
    assert len(codes) > 15  # the scan finds them (it would find none if the pattern broke)
    assert codes <= set(ERRORS), codes - set(ERRORS)


def test_v2_answers_400_where_v1_answers_415_or_422_and_the_same_elsewhere():
    for code, kind in ERRORS.items():
        expected = 400 if kind.v1 in (415, 422) else kind.v1
        assert kind.v2 == expected, code


def test_an_error_takes_its_status_from_the_table():
    error = ApiError("budget_too_small", "too small", min_budget_mb=4.2)
    assert (error.status, error.v2_status) == (422, 400)
    assert error.response().status_code == 422 and error.v2_response().status_code == 400
    with pytest.raises(KeyError, match="unknown error code"):
        ApiError("no_such_code", "message")


def test_openapi_descriptions_come_from_the_table(client):
    spec = client.get("/openapi.json").json()
    v1 = spec["paths"]["/v1/segment"]["post"]["responses"]
    assert ERRORS["budget_too_small"].meaning in v1["422"]["description"]
    v2 = spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert ERRORS["budget_too_small"].meaning in v2["400"]["description"]


def test_the_v2_schemas_import_neither_torch_nor_the_engine():
    code = (
        "import sys, server.v2_schemas; "
        "print(sorted(m for m in ('torch', 'server.deps', 'server.inference') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
