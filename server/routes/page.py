"""The page at `/` and what only it needs: its static files and `GET /v1/recent`.

The page is plain HTML, CSS and JavaScript from `server/static/` (no CDN, nothing fetched
at run time); apart from the recent requests' costs it uses the public API only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server.recent import RECENT_SIZE, RecentList
from server.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


def static_files() -> StaticFiles:
    """The page's scripts, styles and example scenes, to mount at `/static`."""
    return StaticFiles(directory=STATIC_DIR)


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get(
    "/v1/recent",
    response_model=RecentList,
    responses={422: {"model": ErrorResponse}},
    summary="The last requests' costs (peak memory, latency, scheme), oldest first",
)
def recent(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=RECENT_SIZE, description="how many of the last requests")
    ] = RECENT_SIZE,
) -> RecentList:
    return request.app.state.recent.latest(limit)
