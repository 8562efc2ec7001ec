"""Errors as the API promises them: JSON `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qgn.server")


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


def validation_error(error: RequestValidationError) -> ApiError:
    """FastAPI's parameter errors, said in one line per bad field."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return ApiError(422, "invalid_parameter", "; ".join(parts) or "invalid request")


async def api_error_handler(_: Request, error: ApiError) -> JSONResponse:
    return error.response()


async def http_error_handler(_: Request, error: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(error.status_code, "http_error")
    return ApiError(
        error.status_code, code, str(error.detail), dict(error.headers or {})
    ).response()


async def unexpected_error_handler(_: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return ApiError(500, "internal_error", "an internal error occurred").response()


async def validation_error_handler(_: Request, error: RequestValidationError) -> JSONResponse:
    return validation_error(error).response()
