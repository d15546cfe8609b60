"""The live dashboard: one static page that polls ``/signals`` every second (no external CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    # Read per request (a few KB): no module-level cache, and an edited page shows up without a restart.
    page = (resources.files("services.gateway") / "static" / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
