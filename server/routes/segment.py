"""`POST /v1/segment`: an image in, the quadtree and the mask out.

Checks run cheapest first, so a bad request costs little: parameters (422), content type
(415), body size while it streams in (413), image header and pixel count (415/413/400),
the budget against this image's minimum (422), then the queue (503) and the device.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from model.qgn import BLOCK_SIZES, LEVELS
from model.scheme_request import MIB
from server.deps import AppSettings, ReadyEngine, RequestedScheme
from server.errors import ApiError, documented
from server.images import (
    check_content_type,
    check_upload_size,
    encode_mask_png,
    open_upload,
    read_body,
)
from server.inference import Served
from server.schemas import ErrorResponse, SegmentResponse, SegmentSummary

router = APIRouter()
JSON = "application/json"

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

ERRORS = documented("v1", ErrorResponse, (400, 413, 415, 422, 503, 504, 507))


async def image_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image: one multipart field `image`, or a raw image body."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        body = await read_body(request, limit + 64 * 1024)  # room for the framing

        async def replay():
            yield body

        parser = MultiPartParser(
            request.headers, replay(), max_files=4, max_fields=16, max_part_size=64 * 1024
        )
        try:
            form = await parser.parse()
        except Exception as error:
            raise ApiError(
                "bad_multipart", f"the multipart body cannot be parsed: {error}"
            ) from None
        try:
            parts = form.getlist("image")
            if not parts:
                raise ApiError("missing_image", "the multipart body has no 'image' field")
            if len(parts) > 1:
                raise ApiError("several_images", f"send one 'image' field, not {len(parts)}")
            part = parts[0]
            data = await part.read() if isinstance(part, UploadFile) else part.encode()
        finally:
            await form.close()
        check_upload_size(len(data), limit)
        return data
    check_content_type(content_type)
    return await read_body(request, limit)


@router.post(
    "/v1/segment",
    response_model=SegmentResponse | SegmentSummary,
    responses={200: {"content": {"image/png": {}}}, **ERRORS},
    openapi_extra={"requestBody": IMAGE_BODY},
    summary="Segment an image; the scheme sets the memory it may use",
)
async def segment(
    request: Request,
    settings: AppSettings,
    wanted: RequestedScheme,
    engine: ReadyEngine,
    format: Literal["json", "png", "summary"] = Query(
        "json",
        description="json: the quadtree and the mask; png: the palette PNG mask, costs in "
        "headers; summary: what ran and what it cost, in a few lines",
    ),
):
    data = await image_bytes(request, settings.max_upload_bytes)
    image = await run_in_threadpool(open_upload, data, settings.max_pixels)
    del data
    served = await engine.segment(image, wanted, request.state.arrived)
    prediction = served.prediction
    request.app.state.recent.add(prediction)
    request.state.peak_memory_bytes = prediction.peak_bytes
    request.app.state.metrics.observe("v1", wanted.name, prediction)
    if format == "summary":
        return summary_response(served, engine.card["classes"])
    mask_png = await run_in_threadpool(
        encode_mask_png, prediction.mask.numpy(), engine.card["palette"]
    )
    return json_or_png_response(served, mask_png, format, engine.card["classes"])


def summary_response(served: Served, classes: list[str]) -> Response:
    """`format=summary`: the costs and the class shares, indented, without leaves or mask."""
    prediction = served.prediction
    ran = prediction.scheme
    height, width = prediction.mask.shape
    counts = np.bincount(prediction.mask.numpy().ravel(), minlength=len(classes))
    mask_pixels = height * width
    shares = sorted(
        ((classes[c], round(float(n) / mask_pixels, 4)) for c, n in enumerate(counts) if n),
        key=lambda item: -item[1],
    )
    body = {
        "width": width,
        "height": height,
        **ran.as_dict(),
        "latency_ms": round(prediction.latency_s * 1000, 1),
        "peak_memory_mb": round(prediction.peak_bytes / MIB, 2),
        "leaves": len(prediction.leaves),
        "classes": dict(shares),
    }
    if served.auto is not None:
        body["auto"] = served.auto.as_dict()
    return Response(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n", media_type=JSON)


def json_or_png_response(served: Served, mask_png: bytes, format: str, classes: list[str]):
    """The v1 answer: the palette PNG mask with the costs in headers, or the JSON body."""
    prediction = served.prediction
    ran = prediction.scheme
    height, width = prediction.mask.shape
    latency_ms = round(prediction.latency_s * 1000, 3)
    if format == "png":
        headers = {
            "X-QGN-Scheme": ran.name,
            "X-QGN-Latency-Ms": str(latency_ms),
            "X-QGN-Peak-Memory-Bytes": str(prediction.peak_bytes),
        }
        if ran.budget_mb is not None:
            headers["X-QGN-Budget-Mb"] = str(ran.budget_mb)
        if served.auto is not None:
            for key, value in served.auto.as_dict().items():
                headers["X-QGN-Auto-" + key.replace("_", "-").title()] = str(value)
        return Response(mask_png, media_type="image/png", headers=headers)
    # The response is written straight to JSON bytes: the leaves go as one integer array, and
    # a body the server built itself is not validated again (with pydantic and
    # `jsonable_encoder` the 52,000 leaves of a 1024×2048 scene took ~0.7 s, orjson ~7 ms).
    # `SegmentResponse` still describes it in the OpenAPI schema; the tests check the shape.
    body = {
        "width": width,
        "height": height,
        "scheme": ran.name,
        "threshold": ran.threshold,
        "budget_mb": ran.budget_mb,
        "capped": ran.capped,
        "degraded": ran.degraded,
        "classes": classes,
        "quadtree": {
            "levels": LEVELS,
            "block_sizes": BLOCK_SIZES,
            "leaves": np.ascontiguousarray(prediction.leaves.numpy(), dtype=np.int64),
        },
        "mask": {"encoding": "png", "data": base64.b64encode(mask_png).decode("ascii")},
        "stats": {
            "latency_ms": latency_ms,
            "peak_memory_bytes": prediction.peak_bytes,
            "device": prediction.device,
            "active_sites": prediction.active_sites,
            "active_fraction": [round(f, 6) for f in prediction.active_fraction],
            "decoder_bytes": prediction.decoder_bytes,
        },
    }
    if served.auto is not None:
        body["auto"] = served.auto.as_dict()
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)
