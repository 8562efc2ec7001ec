"""The Open Inference Protocol (KServe V2, Triton's HTTP API) beside `/v1`.

Server and model metadata, health and readiness by status code, and infer. Infer shares
everything with `/v1/segment`: the engine and its queue, the limits (judged before decoding),
the scheme validation and the metrics (api="v2"). Errors are `{"error": "message"}`
(`server.errors`): 400 for a bad tensor, image or parameter, 404 for an unknown model or
version, 413 over a limit, 503 with `Retry-After`, 504, 507.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from server.deps import AppSettings, LoadedEngine, ReadyEngine, as_scheme_request
from server.errors import ApiError, documented
from server.images import read_body
from server.inference import Engine
from server.v2_schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
    V2Error,
    inline_schema,
)
from server.v2_tensors import HEADER_LENGTH, encode_response, image_of, parse_request

router = APIRouter(tags=["Open Inference Protocol (V2)"])

SERVER_NAME = "qgn-serve"
EXTENSIONS = ["binary_tensor_data", "parameters"]
JSON_ROOM = 64 * 1024  # room for the JSON beside an image of the upload limit
EMPTY_200 = {200: {"description": "yes (empty body)", "content": {}}}


def errors(*statuses: int) -> dict:
    # "default" also keeps FastAPI from documenting its 422, which V2 answers as 400.
    return documented("v2", V2Error, statuses) | {
        "default": {"model": V2Error, "description": "any other error"}
    }


def model_engine(name: str, engine: LoadedEngine) -> Engine:
    """The engine, if it serves the model `name` (404 otherwise)."""
    if name != engine.name:
        raise ApiError(
            "unknown_model", f"unknown model {name!r}; this server serves {engine.name!r}"
        )
    return engine


ModelEngine = Annotated[Engine, Depends(model_engine)]


def known_version(version: str, engine: ModelEngine) -> None:
    if version != engine.version:
        raise ApiError(
            "unknown_version",
            f"model {engine.name!r} has no version {version!r}; it has {engine.version!r}",
        )


def model_route(suffix: str, endpoint: Callable, method: str = "GET", **kwargs) -> None:
    """`/v2/models/{name}<suffix>` and `/v2/models/{name}/versions/{version}<suffix>`."""
    for path, checks in (
        (f"/v2/models/{{name}}{suffix}", []),
        (f"/v2/models/{{name}}/versions/{{version}}{suffix}", [Depends(known_version)]),
    ):
        router.add_api_route(path, endpoint, methods=[method], dependencies=checks, **kwargs)


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata (V2)")
def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=request.app.version, extensions=EXTENSIONS)


@router.get("/v2/health/live", response_class=Response, responses=EMPTY_200, summary="Live (V2)")
def live() -> Response:
    return Response()


@router.get(
    "/v2/health/ready",
    response_class=Response,
    responses=EMPTY_200 | errors(503),
    summary="Ready: weights loaded and warm (V2)",
)
def ready(_: ReadyEngine) -> Response:
    return Response()


def model_metadata(engine: ModelEngine) -> ModelMetadata:
    return ModelMetadata(
        name=engine.name,
        versions=[engine.version],
        platform="pytorch",
        inputs=[TensorMetadata(name="image", datatype="BYTES", shape=[1])],
        outputs=[
            TensorMetadata(name="mask", datatype="UINT8", shape=[-1, -1]),
            TensorMetadata(name="leaves", datatype="INT32", shape=[-1, 4]),
        ],
    )


def model_ready(_model: ModelEngine, _ready: ReadyEngine) -> Response:
    return Response()


async def infer(
    request: Request,
    settings: AppSettings,
    _model: ModelEngine,
    engine: ReadyEngine,
    header_length: Annotated[
        int | None,
        Header(
            alias=HEADER_LENGTH,
            ge=0,
            description="binary data extension: the length of the JSON at the body's start",
        ),
    ] = None,
) -> Response:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ApiError("compressed_body", "send the body uncompressed (no Content-Encoding)")
    body = await read_body(request, settings.max_upload_bytes + JSON_ROOM)
    parsed = await run_in_threadpool(parse_request, body, header_length)
    del body
    parameters = parsed.request.parameters
    request.state.scheme = parameters.scheme or settings.default_scheme
    wanted = as_scheme_request(
        request.state.scheme,
        parameters.threshold,
        parameters.budget_mb,
        parameters.deadline_ms,
        parameters.max_memory_mb,
    )
    image = await run_in_threadpool(
        image_of, parsed, settings.max_upload_bytes, settings.max_pixels
    )
    served = await engine.segment(image, wanted, request.state.arrived)
    prediction = served.prediction
    request.state.peak_memory_bytes = prediction.peak_bytes
    request.app.state.metrics.observe("v2", wanted.name, prediction)
    content, headers = await run_in_threadpool(
        encode_response, parsed.request, prediction, engine.name, engine.version, served.auto
    )
    return Response(content, headers=headers)


model_route(
    "",
    model_metadata,
    response_model=ModelMetadata,
    responses=errors(404, 503),
    summary="Model metadata (V2)",
)
model_route(
    "/ready",
    model_ready,
    response_class=Response,
    responses=EMPTY_200 | errors(404, 503),
    summary="Model ready (V2)",
)
model_route(
    "/infer",
    infer,
    method="POST",
    response_class=Response,
    responses={
        200: {
            "description": "JSON, or JSON followed by the binary outputs "
            f"({HEADER_LENGTH} says where the JSON ends)",
            "content": {
                "application/json": {"schema": inline_schema(InferResponse)},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **errors(400, 404, 413, 503, 504, 507),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(InferRequest)},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    summary="Segment an image (V2 infer); parameters.scheme sets the memory it may use",
)
