"""Health of the gateway's dependencies: 200 when all answer, 503 (same body) when any does not.

A dependency's ``detail`` is ``unavailable: <exception class>``; the exception text (hosts, ports, paths,
URLs) is logged, never returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from services.gateway.deps import ResourcesDep
from services.gateway.errors import log
from services.gateway.routers.symbols import RED_LAG_S, SymbolHealth, freshness, snapshot
from streams.storage.cache import SignalCache

router = APIRouter(tags=["health"])


class DependencyStatus(BaseModel):
    ok: bool
    detail: str = ""


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    dependencies: dict[str, DependencyStatus]
    symbols: list[SymbolHealth] = Field(
        default_factory=list, description=f"per instrument: newest exchange time seen (book top, prediction or "
        f"signal) and its lag; red above {RED_LAG_S} s. Informational: it does not make /health a 503")


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
    per_symbol: list[SymbolHealth] = []
    if deps["redis"].ok:
        try:
            per_symbol = freshness(snapshot(resources.hot(), SignalCache(resources.redis())))
        except Exception as exc:  # the dependency answered the ping; a failure here is reported, not raised
            log.warning("health: per-symbol freshness failed: %s: %s", type(exc).__name__, exc)
    return HealthResponse(status="ok" if healthy else "degraded", dependencies=deps, symbols=per_symbol)
