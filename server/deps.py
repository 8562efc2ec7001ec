"""Checks several routes share, as FastAPI dependencies: the engine (loaded, or ready) and
the validated scheme of a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from model.scheme_request import SchemeError, SchemeRequest
from server.errors import ApiError
from server.inference import Engine
from server.schemas import SchemeName
from server.settings import Settings


def app_settings(request: Request) -> Settings:
    """The settings the app was created with: the one object every route reads them from."""
    return request.app.state.settings


def loaded_engine(request: Request) -> Engine:
    """The engine once the weights are loaded (503 before)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError("not_ready", "the model is loading", headers={"Retry-After": "2"})
    return engine


def ready_engine(engine: Annotated[Engine, Depends(loaded_engine)]) -> Engine:
    """The engine once it is calibrated and warm, until it drains (503 before and after)."""
    if not engine.ready:
        raise ApiError("not_ready", "the model is loading", headers={"Retry-After": "2"})
    if engine.draining:
        raise engine.shutting_down()
    return engine


def as_scheme_request(
    name: str,
    threshold: float | None = None,
    budget_mb: float | None = None,
    deadline_ms: float | None = None,
    max_memory_mb: float | None = None,
) -> SchemeRequest:
    """A validated scheme request; a bad one is an ApiError with the scheme's message."""
    try:
        return SchemeRequest(name, threshold, budget_mb, deadline_ms, max_memory_mb)
    except SchemeError as error:
        raise ApiError(error.code, error.message) from None


def requested_scheme(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    scheme: Annotated[
        SchemeName | None,
        Query(description="propagation scheme; the server's default when left out"),
    ] = None,
    threshold: Annotated[
        float | None, Query(description="p(composite) threshold, with scheme=threshold")
    ] = None,
    budget_mb: Annotated[
        float | None, Query(description="memory budget in MiB, with scheme=budget")
    ] = None,
    deadline_ms: Annotated[
        float | None,
        Query(description="scheme=auto: answer within this many ms of arrival, if it can"),
    ] = None,
    max_memory_mb: Annotated[
        float | None, Query(description="scheme=auto: the most this request may hold, MiB")
    ] = None,
) -> SchemeRequest:
    """The scheme a `/v1` request asks for, validated (422 otherwise). Its name goes to
    `request.state.scheme` as soon as it is known to be one, so that the metrics label every
    answer after this point, errors included, with it (`server.middleware`)."""
    request.state.scheme = scheme or settings.default_scheme
    return as_scheme_request(request.state.scheme, threshold, budget_mb, deadline_ms, max_memory_mb)


AppSettings = Annotated[Settings, Depends(app_settings)]
LoadedEngine = Annotated[Engine, Depends(loaded_engine)]
ReadyEngine = Annotated[Engine, Depends(ready_engine)]
RequestedScheme = Annotated[SchemeRequest, Depends(requested_scheme)]
