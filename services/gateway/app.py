"""Gateway app factory and server entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.gateway import errors
from services.gateway.deps import Resources
from services.gateway.routers import dashboard, dead_letters, health, signals
from services.gateway.routers.reports import router as reports_router
from streams.runtime.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """A gateway bound to ``settings``; the warehouse and Redis are opened on first use, closed at shutdown."""
    resources = Resources(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            resources.close()

    app = FastAPI(title="surge gateway", version="1", lifespan=lifespan)
    app.state.resources = resources
    app.include_router(health.router)
    app.include_router(signals.router)
    app.include_router(dead_letters.router)
    app.include_router(dashboard.router)
    app.include_router(reports_router)
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
