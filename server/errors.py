"""Errors as the API promises them: JSON `{"error": {"code", "message", ...}}` on `/v1`, and
the Open Inference Protocol's `{"error": "message"}` under `/v2`.

The V2 protocol has one status for a bad tensor, image or parameter: 400. So the 415 and 422
that `/v1` answers for those become 400 under `/v2`; every other status is the same.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qgn.server")
V2_STATUS = {415: 400, 422: 400}  # /v1's status -> the V2 one, where they differ


class ApiError(Exception):
    """An error a client can cause (or a 503/504/507 it must wait out)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message, **self.extra}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)

    def v2_response(self) -> JSONResponse:
        status = V2_STATUS.get(self.status, self.status)
        return JSONResponse({"error": self.message}, status_code=status, headers=self.headers)


def is_v2(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


def respond(request: Request, error: ApiError) -> JSONResponse:
    """The error in the form of the API the request was made to."""
    return error.v2_response() if is_v2(request) else error.response()


def validation_error(error: RequestValidationError | ValidationError) -> ApiError:
    """FastAPI's parameter errors (or pydantic's, for a body a route parses itself), said in
    one line per bad field."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return ApiError(422, "invalid_parameter", "; ".join(parts) or "invalid request")


async def api_error_handler(request: Request, error: ApiError) -> JSONResponse:
    return respond(request, error)


async def http_error_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(error.status_code, "http_error")
    return respond(
        request, ApiError(error.status_code, code, str(error.detail), dict(error.headers or {}))
    )


async def unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return respond(request, ApiError(500, "internal_error", "an internal error occurred"))


async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    return respond(request, validation_error(error))
