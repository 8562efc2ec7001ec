"""What is being served: `GET /v1/model`."""

from __future__ import annotations

from fastapi import APIRouter

from model.cost import MEMORY_GUARANTEE
from model.qgn import BLOCK_SIZES, LEVELS
from model.scheme_request import MIB, REQUESTABLE
from server.deps import LoadedEngine
from server.schemas import DeviceMemoryInfo, ErrorResponse, Limits, ModelInfo

router = APIRouter()


@router.get("/v1/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}})
def model_info(engine: LoadedEngine) -> ModelInfo:
    settings, card = engine.settings, engine.card
    return ModelInfo(
        name=engine.name,
        version=engine.version,
        weights_sha256=card["weights_sha256"],
        device=engine.device.type,
        classes=card["classes"],
        palette=card["palette"],
        levels=LEVELS,
        block_sizes=BLOCK_SIZES,
        schemes=REQUESTABLE,
        limits=Limits(max_upload_mb=settings.max_upload_mb, max_pixels=settings.max_pixels),
        default_scheme=settings.default_scheme,
        memory_budget_mb=settings.memory_budget_mb,
        device_memory=DeviceMemoryInfo(
            mb=round(engine.device_memory.bytes / MIB, 2), source=engine.device_memory.source
        ),
        memory_measurement=engine.measurement,
        memory_guarantee=MEMORY_GUARANTEE,
        latency_model=engine.latency.describe(),
        evaluation=card.get("evaluation"),
    )
