"""Gateway app factory and server entry point."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from services.gateway import errors
from services.gateway.deps import Resources
from services.gateway.predict import Batcher, model_loader
from services.gateway.routers import (
    ab_tests,
    analytics,
    dashboard,
    dead_letters,
    export,
    health,
    jobs,
    metrics,
    models,
    outcomes,
    performance,
    predict,
    predictions,
    risk,
    signals,
    symbols,
)
from services.gateway.routers.reports import router as reports_router
from services.gateway.security import GatewayMiddleware, RateLimiter, ResponseCache, TokenStore, require_read
from streams.decision.core import DecisionConfig
from streams.decision.cost import CostModel
from streams.runtime.settings import Settings

OPENAPI_DESCRIPTION = """Signals, predictions, outcomes and reports of the surge pipeline.

**Auth**: `Authorization: Bearer <token>` (`surge tokens create`). Admin routes need scope `admin`; reads need
`read` when the gateway runs with `SURGE_GATEWAY_AUTH=read`, and are open otherwise.
**Rate limits**: per client, a token bucket (`SURGE_GATEWAY_RATE_PER_MIN`, burst x`SURGE_GATEWAY_BURST`) and at
most `SURGE_GATEWAY_MAX_CONCURRENT` requests in flight; beyond, 429 with `Retry-After`.
**Paging**: list routes answer a page; the next one is `?cursor=<X-Next-Cursor header>` (also a `Link` header).
**Errors**: a bad parameter is a 422 naming it; a dependency down is a 503 naming it.
"""


def create_app(settings: Settings, *, predictor: Batcher | None = None,
               monotonic: Callable[[], float] = time.monotonic) -> FastAPI:
    """A gateway bound to ``settings``; the warehouse and Redis are opened on first use, closed at shutdown.
    ``predictor`` replaces the /predict batcher (the benchmark's naive baseline); ``monotonic`` is the clock of
    the rate limiter and the response cache (a test freezes it, so refills do not depend on its speed)."""
    resources = Resources(settings)

    def active_artifact() -> str | None:
        from streams.runtime.clock import LiveClock
        from streams.storage.registry import ModelRegistry

        active = ModelRegistry(resources.warehouse(), LiveClock()).active()
        return active.artifact_path if active is not None else None

    batcher = predictor or Batcher(model_loader(settings.gateway_model_dir, active_artifact),
                                   batch_max=settings.predict_batch_max, wait_ms=settings.predict_batch_wait_ms)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            batcher.close()
            resources.close()

    limited = {429: {"model": errors.ErrorOut, "description": "rate limited: retry after `Retry-After` seconds"}}
    app = FastAPI(title="surge gateway", version="1", lifespan=lifespan, description=OPENAPI_DESCRIPTION,
                  responses=limited)  # type: ignore[arg-type]
    app.state.resources = resources
    app.state.predictor = batcher
    app.state.decision_config = DecisionConfig.from_settings(settings)
    app.state.cost_model = CostModel.from_settings(settings)
    app.state.limiter = RateLimiter(settings.gateway_rate_per_min, settings.gateway_burst,
                                    settings.gateway_max_concurrent, clock=monotonic)
    app.state.response_cache = ResponseCache(settings.gateway_cache_ttl_s, clock=monotonic)
    read = [Depends(require_read)]
    read_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": errors.ErrorOut, "description": "no or invalid token (reads need one when "
                                                       "SURGE_GATEWAY_AUTH=read)"},
        403: {"model": errors.ErrorOut, "description": "the token lacks scope read"}}
    app.include_router(health.router)
    app.include_router(signals.router, dependencies=read, responses=read_errors)
    app.include_router(dead_letters.router, dependencies=read, responses=read_errors)
    app.include_router(dashboard.router)
    app.include_router(reports_router, dependencies=read, responses=read_errors)
    app.include_router(symbols.router, dependencies=read, responses=read_errors)
    app.include_router(risk.router, dependencies=read, responses=read_errors)
    app.include_router(predictions.router, dependencies=read, responses=read_errors)
    app.include_router(outcomes.router, dependencies=read, responses=read_errors)
    app.include_router(performance.router, dependencies=read, responses=read_errors)
    app.include_router(analytics.router, dependencies=read, responses=read_errors)
    app.include_router(predict.router, dependencies=read, responses=read_errors)
    app.include_router(export.router, dependencies=read, responses=read_errors)
    app.include_router(models.router)  # reads take require_read themselves; deploy/rollback need admin
    app.include_router(ab_tests.router)  # likewise: reads take require_read, start/stop need admin
    app.include_router(jobs.router)  # likewise: reads take require_read, submissions need admin
    app.include_router(metrics.router)

    def client_of(token: str | None, peer: str) -> str:
        if token:
            try:
                info = TokenStore(resources.redis(), resources.l1).verify(token)
            except Exception:  # Redis down: limit by address; the route answers the 503
                info = None
            if info is not None:
                return f"token:{info.token_id}"
        return peer

    def authorized(token: str | None) -> bool:
        """May a cached read be served to this request without running the route's own check?"""
        if settings.gateway_auth == "open" and token is None:
            return True
        try:
            info = TokenStore(resources.redis(), resources.l1).verify(token) if token else None
        except Exception:
            return False
        return info is not None and info.allows("read")

    app.add_middleware(predict.PredictFastPath, state=app.state)  # inside the rate limit (added first)
    app.add_middleware(GatewayMiddleware, limiter=app.state.limiter,
                       cache=app.state.response_cache, client_of=client_of, authorized=authorized)
    errors.install(app)  # a dependency down is a 503 naming it, without the exception text (that is logged)
    return app


def serve(settings: Settings) -> None:
    """Run the gateway on ``settings.gateway_host:gateway_port`` until SIGTERM/SIGINT."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
