"""Instruments: every one the sink has seen (the Redis id registry), with its latest book top, prediction and
signal from the hot cache. Also the per-instrument freshness ``/health`` reports."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from services.gateway.deps import ResourcesDep
from services.gateway.errors import REDIS_ERRORS
from streams.storage.cache import BOOK, PREDICTION, HotCache, SignalCache, instrument_field

router = APIRouter(tags=["symbols"])

RED_LAG_S = 2.0  # /health colours an instrument red when its newest exchange time is older than this


class BookTopOut(BaseModel):
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    exchange_us: int


class SymbolOut(BaseModel):
    instrument: str
    instrument_id: int | None
    venue: str
    symbol: str
    book: BookTopOut | None
    p_up: dict[str, float | None]
    regime: str | None
    last_signal_id: str | None
    last_decision: str | None
    last_tier: str | None
    latest_exchange_us: int | None


class SymbolHealth(BaseModel):
    instrument: str
    latest_exchange_us: int | None
    lag_s: float | None
    status: Literal["green", "red"]


def snapshot(hot: HotCache, signals: SignalCache) -> list[SymbolOut]:
    latest_signals = {instrument_field(d): d for d in signals.latest()}
    ids = hot.instrument_ids()
    instruments = sorted(set(ids) | set(latest_signals))
    books = hot.get_latest(BOOK, instruments)
    preds = hot.get_latest(PREDICTION, instruments)
    out = []
    for instrument in instruments:
        venue, _, symbol = instrument.partition(":")
        book, pred, sig = books.get(instrument), preds.get(instrument), latest_signals.get(instrument)
        times = [int(d["exchange_us"]) for d in (book, pred, sig) if d and d.get("exchange_us")]
        p_up: dict[str, Any] = {str(h["horizon_min"]): h.get("p_up") for h in (pred or {}).get("horizons", [])}
        out.append(SymbolOut(
            instrument=instrument, instrument_id=ids.get(instrument), venue=venue, symbol=symbol,
            book=BookTopOut.model_validate(book) if book else None, p_up=p_up,
            regime=(pred or sig or {}).get("regime"), last_signal_id=sig.get("signal_id") if sig else None,
            last_decision=sig.get("decision") if sig else None, last_tier=sig.get("tier") if sig else None,
            latest_exchange_us=max(times) if times else None))
    return out


def freshness(symbols: list[SymbolOut], now_us: int | None = None) -> list[SymbolHealth]:
    now = time.time_ns() // 1000 if now_us is None else now_us
    out = []
    for s in symbols:
        lag = None if s.latest_exchange_us is None else max(0.0, (now - s.latest_exchange_us) / 1e6)
        out.append(SymbolHealth(instrument=s.instrument, latest_exchange_us=s.latest_exchange_us, lag_s=lag,
                                status="green" if lag is not None and lag <= RED_LAG_S else "red"))
    return out


@router.get("/symbols", response_model=list[SymbolOut], responses=REDIS_ERRORS)
def symbols(resources: ResourcesDep) -> list[SymbolOut]:
    """Every instrument with its integer id and what the hot cache holds for it right now."""
    return snapshot(resources.hot(), SignalCache(resources.redis()))
