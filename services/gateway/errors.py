"""Dependency failures as HTTP errors whose bodies name the dependency and nothing else.

A dependency that is down is a 503 (retry later). A command it refused is a 500 (our bug, retrying will not
help). Neither body carries the exception text: that names hosts, ports, paths and URLs (credentials even),
so it goes to the server log only.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from streams.storage.warehouse import WarehouseError, WarehouseUnavailable

log = logging.getLogger("surge.gateway")

WAREHOUSE_DOWN: Final = "warehouse unavailable"
REDIS_DOWN: Final = "redis unavailable"
WAREHOUSE_FAILED: Final = "warehouse query failed"
REDIS_FAILED: Final = "redis command failed"


class ErrorOut(BaseModel):
    detail: str


def _responses(dependency: str) -> dict[int | str, dict[str, Any]]:
    return {
        503: {"model": ErrorOut, "description": f"{dependency} unavailable"},
        500: {"model": ErrorOut, "description": f"{dependency} refused the request"},
    }


WAREHOUSE_ERRORS: Final = _responses("warehouse")
REDIS_ERRORS: Final = _responses("redis")


def redis_is_down(exc: redis.RedisError) -> bool:
    # AuthenticationError, BusyLoadingError and MaxConnectionsError are ConnectionErrors too.
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def _error(status: int, detail: str, request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s: %s: %s", request.method, request.url.path, detail, type(exc).__name__, exc)
    return JSONResponse({"detail": detail}, status_code=status)


MAX_ECHO_CHARS: Final = 200


def _json_safe(value: Any) -> Any:
    """A validation error's echoed input, as JSON can carry it: NaN/inf as text, long strings cut short."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_ECHO_CHARS:
        return value[:MAX_ECHO_CHARS] + "..."
    if isinstance(value, bytes):
        return _json_safe(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {str(k)[:MAX_ECHO_CHARS]: _json_safe(v) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value[:50]]
    return value


def install(app: FastAPI) -> None:
    """Register the handlers for warehouse and Redis failures, and a JSON-safe 422, on ``app``."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own body, except that an echoed NaN (or a 100 kB string) must not break or bloat the answer.
        detail = [{k: _json_safe(v) if k == "input" else v for k, v in e.items() if k != "ctx"}
                  for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)

    @app.exception_handler(WarehouseError)
    async def warehouse_error(request: Request, exc: WarehouseError) -> JSONResponse:
        if isinstance(exc, WarehouseUnavailable):
            return _error(503, WAREHOUSE_DOWN, request, exc)
        return _error(500, WAREHOUSE_FAILED, request, exc)

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        if redis_is_down(exc):
            return _error(503, REDIS_DOWN, request, exc)
        return _error(500, REDIS_FAILED, request, exc)
