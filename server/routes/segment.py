"""`POST /v1/segment`: an image in, the quadtree and the mask out.

Checks run cheapest first, so a bad request costs little: parameters (422), content type
(415), body size while it streams in (413), image header and pixel count (415/413/400),
the budget against this image's minimum (422), then the queue (503) and the device.
"""

from __future__ import annotations

import base64
import math
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from model.qgn import BLOCK_SIZES, LEVELS
from server.errors import ApiError
from server.images import check_content_type, load_image
from server.inference import SchemeRequest, SegmentResult
from server.schemas import ErrorResponse, MaskPayload, Quadtree, SegmentResponse, Stats

router = APIRouter()

IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        **{
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
        },
    },
}

ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "empty or undecodable image",
        413: "body over the upload limit, image over the pixel limit or the memory cap",
        415: "unsupported content type or image format",
        422: "bad parameters, or a budget below the minimum for this image",
        503: "queue full or model not ready (see Retry-After)",
        504: "the request outlived QGN_REQUEST_TIMEOUT_S",
        507: "the device ran out of memory, also under a tighter budget",
    }.items()
}


def scheme_request(scheme: str, threshold: float | None, budget_mb: float | None) -> SchemeRequest:
    """The validated scheme and its one parameter (422 otherwise)."""
    for name, value in (("threshold", threshold), ("budget_mb", budget_mb)):
        if value is not None and not math.isfinite(value):
            raise ApiError(422, "invalid_parameter", f"{name} must be a finite number, got {value}")
    if scheme == "threshold":
        if threshold is None:
            raise ApiError(422, "missing_parameter", "scheme=threshold needs threshold in [0, 1]")
        if not 0.0 <= threshold <= 1.0:
            raise ApiError(
                422, "invalid_parameter", f"threshold must lie in [0, 1], got {threshold}"
            )
    elif threshold is not None:
        raise ApiError(
            422, "invalid_parameter", f"threshold is used only with scheme=threshold, not {scheme}"
        )
    if scheme == "budget":
        if budget_mb is None:
            raise ApiError(422, "missing_parameter", "scheme=budget needs budget_mb (MiB, > 0)")
        if budget_mb <= 0:
            raise ApiError(422, "invalid_parameter", f"budget_mb must be > 0, got {budget_mb}")
    elif budget_mb is not None:
        raise ApiError(
            422, "invalid_parameter", f"budget_mb is used only with scheme=budget, not {scheme}"
        )
    return SchemeRequest(scheme, threshold, budget_mb)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "upload_too_large", f"the body has {declared} bytes; the limit is {limit}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "upload_too_large", f"the body passed the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image: one multipart field `image`, or a raw image body."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        request._body = await read_body(request, limit + 64 * 1024)  # room for the framing
        try:
            form = await request.form(max_files=4, max_fields=16, max_part_size=64 * 1024)
        except Exception as error:
            raise ApiError(
                400, "bad_multipart", f"the multipart body cannot be parsed: {error}"
            ) from None
        try:
            parts = form.getlist("image")
            if not parts:
                raise ApiError(422, "missing_image", "the multipart body has no 'image' field")
            if len(parts) > 1:
                raise ApiError(422, "several_images", f"send one 'image' field, not {len(parts)}")
            part = parts[0]
            data = await part.read() if isinstance(part, UploadFile) else part.encode()
        finally:
            await form.close()
        if len(data) > limit:
            raise ApiError(
                413, "upload_too_large", f"the image has {len(data)} bytes; the limit is {limit}"
            )
        return data
    check_content_type(content_type)
    return await read_body(request, limit)


@router.post(
    "/v1/segment",
    response_model=SegmentResponse,
    responses={200: {"content": {"image/png": {}}}, **ERRORS},
    openapi_extra={"requestBody": IMAGE_BODY},
    summary="Segment an image; the scheme sets the memory it may use",
)
async def segment(
    request: Request,
    scheme: Literal["all", "pc", "threshold", "budget"] | None = Query(
        None, description="propagation scheme; the server's default when left out"
    ),
    threshold: float | None = Query(
        None, description="p(composite) threshold, with scheme=threshold"
    ),
    budget_mb: float | None = Query(None, description="memory budget in MiB, with scheme=budget"),
    format: Literal["json", "png"] = Query("json", description="json body or the palette PNG"),
):
    engine = getattr(request.app.state, "engine", None)
    settings = request.app.state.settings
    wanted = scheme_request(scheme or settings.default_scheme, threshold, budget_mb)
    if engine is None or not engine.ready:
        raise ApiError(503, "not_ready", "the model is loading", headers={"Retry-After": "2"})
    data = await image_bytes(request, settings.max_upload_bytes)
    image = await run_in_threadpool(load_image, data, settings.max_pixels)
    del data
    result = await engine.segment(image, wanted)
    _observe(request, result)
    return _response(result, format, engine.card["classes"])


def _observe(request: Request, result: SegmentResult) -> None:
    metrics, prediction = request.app.state.metrics, result.prediction
    request.state.peak_memory_bytes = prediction.peak_bytes
    metrics.inference_duration.labels(result.scheme).observe(prediction.latency_s)
    metrics.peak_memory.labels(result.scheme).observe(prediction.peak_bytes)
    for level, fraction in enumerate(prediction.active_fraction):
        metrics.active_fraction.labels(str(level)).observe(fraction)
    if result.capped:
        metrics.budget_capped.labels(result.scheme).inc()


def _response(result: SegmentResult, format: str, classes: list[str]):
    prediction = result.prediction
    height, width = prediction.mask.shape
    latency_ms = round(prediction.latency_s * 1000, 3)
    if format == "png":
        headers = {
            "X-QGN-Scheme": result.scheme,
            "X-QGN-Latency-Ms": str(latency_ms),
            "X-QGN-Peak-Memory-Bytes": str(prediction.peak_bytes),
        }
        if result.budget_mb is not None:
            headers["X-QGN-Budget-Mb"] = str(result.budget_mb)
        return Response(result.mask_png, media_type="image/png", headers=headers)
    return SegmentResponse(
        width=width,
        height=height,
        scheme=result.scheme,
        threshold=result.threshold,
        budget_mb=result.budget_mb,
        capped=result.capped,
        degraded=result.degraded,
        classes=classes,
        quadtree=Quadtree(
            levels=LEVELS, block_sizes=BLOCK_SIZES, leaves=prediction.leaves.tolist()
        ),
        mask=MaskPayload(data=base64.b64encode(result.mask_png).decode("ascii")),
        stats=Stats(
            latency_ms=latency_ms,
            peak_memory_bytes=prediction.peak_bytes,
            device=prediction.device,
            active_sites=prediction.active_sites,
            active_fraction=[round(f, 6) for f in prediction.active_fraction],
            decoder_bytes=prediction.decoder_bytes,
        ),
    )
