"""What is being served: `GET /v1/model`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from model.qgn import BLOCK_SIZES, LEVELS
from server.errors import ApiError
from server.schemas import ErrorResponse, Limits, ModelInfo

router = APIRouter()

SCHEME_PARAMETERS = {
    "all": {"description": "every site is refined (QGN-All): most memory, best accuracy"},
    "pc": {"description": "only predicted composites are refined (QGN-PC): least memory"},
    "threshold": {
        "description": "sites with p(composite) >= threshold are refined",
        "parameters": {
            "threshold": {"type": "number", "minimum": 0, "maximum": 1, "required": True}
        },
    },
    "budget": {
        "description": "the most uncertain sites that fit a memory budget are refined",
        "parameters": {
            "budget_mb": {"type": "number", "exclusiveMinimum": 0, "unit": "MiB", "required": True}
        },
    },
}


@router.get("/v1/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}})
def model_info(request: Request) -> ModelInfo:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "not_ready", "the model is loading", headers={"Retry-After": "2"})
    settings, card = engine.settings, engine.card
    return ModelInfo(
        name=card.get("name", "qgn"),
        version=str(card.get("version", "0")),
        weights_sha256=card["weights_sha256"],
        device=engine.device.type,
        classes=card["classes"],
        palette=card["palette"],
        levels=LEVELS,
        block_sizes=BLOCK_SIZES,
        schemes=SCHEME_PARAMETERS,
        limits=Limits(max_upload_mb=settings.max_upload_mb, max_pixels=settings.max_pixels),
        default_scheme=settings.default_scheme,
        memory_budget_mb=settings.memory_budget_mb,
        evaluation=card.get("evaluation"),
    )
