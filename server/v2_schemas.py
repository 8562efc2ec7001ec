"""Bodies of the Open Inference Protocol (KServe V2) routes, as pydantic models.

The request models validate the JSON part of an infer request (strictly: a string is not a
number) and make its OpenAPI schema; the response models only document what
`server.v2_tensors` writes, since a mask's JSON data is too long to validate on the way out.
Parameter values are scalars, as the protocol asks (`active_sites` is "n0,n1,...,n5").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.schemas import SchemeName

Dim = Annotated[int, Field(ge=0)]


class InputParameters(BaseModel):
    model_config = ConfigDict(strict=True)

    binary_data_size: int | None = Field(
        None, ge=0, description="the tensor's bytes follow the JSON (binary data extension)"
    )
    content_type: Literal["base64"] | None = Field(
        None, description="'base64': the BYTES element in `data` is the image in base64"
    )


class InferInput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: Literal["image"]
    shape: list[Dim] = Field(description="[1] for BYTES, [H, W, 3] for UINT8")
    datatype: Literal["BYTES", "UINT8"] = Field(
        description="BYTES: one encoded image (PNG, JPEG, WebP, BMP, GIF); UINT8: RGB pixels"
    )
    parameters: InputParameters = Field(default_factory=InputParameters)
    data: list[Any] | None = Field(None, description="the tensor in JSON, row-major")


class OutputParameters(BaseModel):
    model_config = ConfigDict(strict=True)

    binary_data: bool | None = Field(None, description="return this output as binary data")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: Literal["mask", "leaves"]
    parameters: OutputParameters = Field(default_factory=OutputParameters)


class RequestParameters(BaseModel):
    """The scheme as on `/v1/segment` (same names, same rules), and the binary outputs."""

    model_config = ConfigDict(strict=True)

    scheme: SchemeName | None = Field(None, description="the server's default when left out")
    threshold: float | None = Field(None, description="p(composite) threshold, scheme=threshold")
    budget_mb: float | None = Field(None, description="memory budget in MiB, scheme=budget")
    deadline_ms: float | None = Field(None, description="scheme=auto: ms from arrival, if it can")
    max_memory_mb: float | None = Field(None, description="scheme=auto: the most it may hold, MiB")
    binary_data_output: bool = Field(False, description="every output as binary data")


class InferRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str | None = Field(None, description="echoed in the response")
    parameters: RequestParameters = Field(default_factory=RequestParameters)
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="all outputs when left out")


class OutputTensor(BaseModel):
    name: Literal["mask", "leaves"]
    datatype: Literal["UINT8", "INT32"]
    shape: list[int] = Field(description="mask: [H, W] class ids; leaves: [N, 4]")
    parameters: dict[str, int] | None = Field(None, description="binary_data_size when binary")
    data: list[int] | None = None


class InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str | int | float | bool] = Field(
        description="scheme, threshold and budget_mb that ran, capped, degraded, "
        "peak_memory_bytes, latency_ms, device, active_sites (per level, comma-separated)"
    )
    outputs: list[OutputTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class V2Error(BaseModel):
    error: str


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its `$defs` written in place, for an `openapi_extra` body
    (the OpenAPI document has no `$defs` for them to point at)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)
