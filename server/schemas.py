"""Response bodies of the HTTP API, as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from model.scheme_request import REQUESTABLE

# The schemes a request may name (torch-free: V2's schemas import it).
SchemeName = Literal[tuple(REQUESTABLE)]


class ErrorDetail(BaseModel):
    code: str
    message: str
    min_budget_mb: float | None = Field(None, description="the smallest feasible budget, MiB")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Quadtree(BaseModel):
    levels: int
    block_sizes: list[int]
    leaves: list[list[int]] = Field(
        description="[level, row, col, class_id]; level 0 = 32×32 blocks, row/col in blocks"
    )


class MaskPayload(BaseModel):
    encoding: Literal["png"] = "png"
    data: str = Field(description="base64 of a palette PNG, W×H, pixel value = class_id")


class Stats(BaseModel):
    latency_ms: float
    peak_memory_bytes: int
    device: Literal["cpu", "cuda"]
    active_sites: list[int]
    active_fraction: list[float]
    decoder_bytes: list[int]


class AutoInfo(BaseModel):
    """What scheme=auto chose at admission, and why (present only when auto was asked)."""

    setting: str = Field(description="the card's name of the setting that ran")
    reason: Literal["best", "memory", "max_memory", "deadline"] = Field(
        description="best: the most accurate ran; else what kept a more accurate one out"
    )
    predicted_peak_mb: float
    free_memory_mb: float = Field(description="device memory free when it was admitted")
    predicted_latency_ms: float | None = Field(None, description="when a deadline was given")


class SegmentResponse(BaseModel):
    width: int
    height: int
    scheme: str
    threshold: float | None
    budget_mb: float | None = Field(description="the budget that ran, MiB (client's or cap)")
    capped: bool = Field(description="the server's memory budget limited this request")
    degraded: bool = Field(description="retried under a tighter budget after running out of memory")
    classes: list[str]
    quadtree: Quadtree
    mask: MaskPayload
    stats: Stats
    auto: AutoInfo | None = None


class SegmentSummary(BaseModel):
    """`format=summary`: what ran and what it cost, short enough to read in a terminal."""

    width: int
    height: int
    scheme: str
    threshold: float | None
    budget_mb: float | None
    capped: bool
    degraded: bool
    latency_ms: float
    peak_memory_mb: float = Field(description="peak_memory_bytes in MiB, 2 decimals")
    leaves: int = Field(description="how many leaves the quadtree has")
    classes: dict[str, float] = Field(
        description="share of the pixels of each class present, largest first"
    )
    auto: AutoInfo | None = None


class Limits(BaseModel):
    max_upload_mb: float
    max_pixels: int


class DeviceMemoryInfo(BaseModel):
    mb: float = Field(description="what the requests running together may hold, in MiB")
    source: str = Field(
        description="QGN_DEVICE_MEMORY_MB, or how the default was found (the cgroup's memory "
        "limit less what the process holds, on the CPU; the free memory, on CUDA)"
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    weights_sha256: str
    device: str
    classes: list[str]
    palette: list[list[int]]
    levels: int
    block_sizes: list[int]
    schemes: dict[str, dict[str, Any]]
    limits: Limits
    default_scheme: str
    memory_budget_mb: float | None
    device_memory: DeviceMemoryInfo
    memory_measurement: str = Field(
        description="how peak_memory_bytes is measured: allocation window (per request, by "
        "torch's allocators), dispatch tracker (CPU fallback, per op) or cuda allocator "
        "statistics (fallback, device-wide)"
    )
    memory_guarantee: dict[str, str] = Field(
        description="what the memory promise is: what peak_memory_bytes counts, and what "
        "budgets, the server's cap and admission guarantee (model.cost.MEMORY_GUARANTEE)"
    )
    latency_model: dict[str, Any] = Field(
        description="scheme=auto's predicted run times: per setting, the measured runs it was "
        "fitted to and its predicted ms per megapixel; its speed against the card's machine"
    )
    evaluation: Any = None


class Health(BaseModel):
    status: str
