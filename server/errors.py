"""Errors as the API promises them: JSON `{"error": {"code", "message", ...}}` on `/v1`, and
the Open Inference Protocol's `{"error": "message"}` under `/v2`.

`ERRORS` is the one table of what a client can be told: each code with its status on `/v1`
and under `/v2`, where the V2 protocol has one status for a bad tensor, image or parameter
(400). Code raises an `ApiError` by code; the status, the OpenAPI descriptions and the error
table in `docs/api.md` all come from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qgn.server")


@dataclass(frozen=True)
class ErrorKind:
    v1: int  # the status on /v1
    v2: int  # the status under /v2
    meaning: str


ERRORS: dict[str, ErrorKind] = {
    "bad_multipart": ErrorKind(400, 400, "the multipart body cannot be parsed"),
    "empty_image": ErrorKind(400, 400, "the image is empty (0 bytes)"),
    "undecodable_image": ErrorKind(400, 400, "the bytes are not a readable image"),
    "bad_tensor": ErrorKind(400, 400, "a V2 input tensor is malformed"),
    "compressed_body": ErrorKind(400, 400, "a V2 body with a Content-Encoding"),
    "not_found": ErrorKind(404, 404, "no such path"),
    "unknown_model": ErrorKind(404, 404, "no such model (V2)"),
    "unknown_version": ErrorKind(404, 404, "no such model version (V2)"),
    "method_not_allowed": ErrorKind(405, 405, "the path does not take this method"),
    "upload_too_large": ErrorKind(413, 413, "the body is over QGN_MAX_UPLOAD_MB"),
    "too_many_pixels": ErrorKind(413, 413, "the image is over QGN_MAX_PIXELS (from its header)"),
    "over_memory_budget": ErrorKind(
        413, 413, "even the smallest budget for this image is over the server's memory"
    ),
    "unsupported_media_type": ErrorKind(415, 400, "neither an image content type nor multipart"),
    "unsupported_image_format": ErrorKind(415, 400, "not PNG, JPEG, WebP, BMP or GIF"),
    "missing_image": ErrorKind(422, 400, "the multipart body has no 'image' field"),
    "several_images": ErrorKind(422, 400, "the multipart body has several 'image' fields"),
    "invalid_parameter": ErrorKind(422, 400, "a parameter has a bad value"),
    "missing_parameter": ErrorKind(422, 400, "the scheme needs a parameter it was not given"),
    "unknown_scheme": ErrorKind(422, 400, "no such scheme (oracle is not served)"),
    "budget_too_small": ErrorKind(
        422, 400, "budget_mb is below this image's minimum (`min_budget_mb`)"
    ),
    "internal_error": ErrorKind(500, 500, "a bug: the log has the traceback"),
    "not_ready": ErrorKind(503, 503, "the model is loading (Retry-After)"),
    "queue_full": ErrorKind(
        503, 503, "QGN_QUEUE_SIZE requests are queued or running (Retry-After)"
    ),
    "shutting_down": ErrorKind(503, 503, "the server is draining after SIGTERM (Retry-After)"),
    "deadline_unreachable": ErrorKind(
        503, 503, "scheme=auto: the predicted wait and the fastest setting pass deadline_ms"
    ),
    "timeout": ErrorKind(504, 504, "the request outlived QGN_REQUEST_TIMEOUT_S"),
    "out_of_memory": ErrorKind(
        507, 507, "the device ran out of memory, also under a tighter budget"
    ),
}


class ApiError(Exception):
    """An error a client can cause (or a 503/504/507 it must wait out), by its code in
    `ERRORS`; `status` only for an HTTP error the framework raised with its own."""

    def __init__(
        self,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        **extra,
    ):
        super().__init__(message)
        kind = ERRORS.get(code)
        if kind is None and status is None:
            raise KeyError(f"unknown error code {code!r}; the codes are ERRORS' keys")
        self.code = code
        self.message = message
        self.status = status or kind.v1
        self.v2_status = status or kind.v2
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message, **self.extra}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)

    def v2_response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.message}, status_code=self.v2_status, headers=self.headers
        )


def documented(api: str, model: type, statuses: tuple[int, ...]) -> dict:
    """OpenAPI `responses` for these statuses of `api` ("v1" or "v2"), each described by the
    meanings of the codes that answer it there."""
    described = {}
    for status in statuses:
        meanings = [k.meaning for k in ERRORS.values() if getattr(k, api) == status]
        described[status] = {"model": model, "description": "; ".join(meanings)}
    return described


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
    return ApiError("invalid_parameter", "; ".join(parts) or "invalid request")


async def api_error_handler(request: Request, error: ApiError) -> JSONResponse:
    return respond(request, error)


async def http_error_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(error.status_code, "http_error")
    headers = dict(error.headers or {})
    return respond(request, ApiError(code, str(error.detail), headers, status=error.status_code))


async def unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return respond(request, ApiError("internal_error", "an internal error occurred"))


async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    return respond(request, validation_error(error))
