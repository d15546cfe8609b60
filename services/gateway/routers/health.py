"""Health of the gateway's dependencies: 200 when all answer, 503 (same body) when any does not.

A dependency's ``detail`` is ``unavailable: <exception class>``; the exception text (hosts, ports, paths,
URLs) is logged, never returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from services.gateway.deps import ResourcesDep
from services.gateway.errors import log

router = APIRouter(tags=["health"])


class DependencyStatus(BaseModel):
    ok: bool
    detail: str = ""


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    dependencies: dict[str, DependencyStatus]


def _check(name: str, probe: Callable[[], object]) -> DependencyStatus:
    try:
        probe()
    except Exception as exc:  # any failure means "down"
        log.warning("health: %s unavailable: %s: %s", name, type(exc).__name__, exc)
        return DependencyStatus(ok=False, detail=f"unavailable: {type(exc).__name__}")
    return DependencyStatus(ok=True)


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def health(resources: ResourcesDep, response: Response) -> HealthResponse:
    deps = {
        "warehouse": _check("warehouse", lambda: resources.warehouse().query("SELECT 1 AS ok")),
        "redis": _check("redis", lambda: resources.redis().ping()),
    }
    healthy = all(d.ok for d in deps.values())
    if not healthy:
        response.status_code = 503
    return HealthResponse(status="ok" if healthy else "degraded", dependencies=deps)
