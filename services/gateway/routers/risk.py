"""The outcomes stage's risk state and paper book (Redis ``surge:risk:state``), for the dashboard and tools."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel

from services.gateway.deps import RedisDep
from services.gateway.errors import REDIS_ERRORS
from streams.storage.cache import RISK_KEY

router = APIRouter(tags=["risk"])


class RiskOut(BaseModel):
    """``level`` NORMAL, CAUTIOUS, RISK_AVERSE or SHUTDOWN; ``equity`` is the paper book's; null fields: the
    outcomes stage has not published a state yet."""

    level: str | None = None
    consecutive_losses: int | None = None
    consecutive_wins: int | None = None
    equity: float | None = None
    peak_equity: float | None = None
    drawdown: float | None = None
    since_us: int | None = None
    reason: str | None = None
    outcomes: int | None = None


@router.get("/risk", response_model=RiskOut, responses=REDIS_ERRORS)
def risk(cache: RedisDep) -> RiskOut:
    raw = cache.get(RISK_KEY)
    if raw is None:
        return RiskOut()
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return RiskOut()
    return RiskOut.model_validate(doc) if isinstance(doc, dict) else RiskOut()
