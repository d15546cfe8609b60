"""Signals: the live view from Redis (written by the sink) and history / stats from the warehouse.

Filters are enums of the stored (protobuf) names, parsed case-insensitively; tiers may be given short: ``A``
means ``TIER_A`` (see ``services.gateway.enums``). An empty filter means "any". Anything else is a 422 with
FastAPI's documented validation body, as is an integer outside its bounds.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, Field

from services.gateway.deps import RedisDep, WarehouseDep
from services.gateway.enums import Decision, Tier, Venue, describe
from services.gateway.errors import REDIS_ERRORS, WAREHOUSE_ERRORS
from streams.sink.core import SIGNAL_COLUMNS
from streams.storage.cache import RECENT_MAX, SignalCache

router = APIRouter(prefix="/signals", tags=["signals"])

INT64_MAX: Final = 2**63 - 1  # the warehouse's µs columns are Int64: a larger bound would not fit the parameter


class FeatureContributionOut(BaseModel):
    name: str
    value: float | None
    contribution: float | None


class SignalOut(BaseModel):
    signal_id: str
    venue: Annotated[str, Field(description=describe(Venue))]
    symbol: str
    decision: Annotated[str, Field(description=describe(Decision))]
    tier: Annotated[str, Field(description=describe(Tier))]
    p_up: float | None
    horizon_min: int
    expected_return_bps: float | None
    estimated_cost_bps: float | None
    net_utility_bps: float | None
    regime: str
    top_features: list[FeatureContributionOut]
    model_version: str
    feature_version: str
    cost_model_version: str
    data_window_id: str
    quality_flags: list[str]
    price: float | None
    exchange_us: int
    ingest_us: int
    infer_us: int
    decision_us: int
    cooldown_until_us: int
    stored_us: int
    latency_ms: float | None


class StatsBucket(BaseModel):
    symbol: str
    decision: Annotated[str, Field(description=describe(Decision))]
    tier: Annotated[str, Field(description=describe(Tier))]
    count: int


class LatencyStats(BaseModel):
    """Quantiles of latency_ms (exchange event time -> decision), linear interpolation between samples."""

    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class StatsResponse(BaseModel):
    total: int
    buckets: list[StatsBucket]
    latency: LatencyStats


def _finite(value: Any) -> Any:
    # NaN/inf are not JSON: report them as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: _finite(v) for k, v in doc.items()}
    features = out.get("top_features")
    if isinstance(features, str):  # the warehouse keeps them as a JSON string
        features = orjson.loads(features) if features else []
    out["top_features"] = [{k: _finite(v) for k, v in f.items()} for f in features or []]
    return out


def norm_symbol(symbol: str | None) -> str | None:
    return symbol.strip().upper() or None if symbol else None


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


SymbolQ = Annotated[str | None, Query(max_length=32, description="e.g. BTCUSDT")]
SinceQ = Annotated[
    int | None, Query(ge=0, le=INT64_MAX, description="only signals with decision_us >= this (epoch µs)")
]
DecisionQ = Annotated[
    Decision | None, BeforeValidator(_blank_is_none), Query(description="case-insensitive; empty: any")
]
TierQ = Annotated[
    Tier | None, BeforeValidator(_blank_is_none),
    Query(description="case-insensitive, the TIER_ prefix optional (A means TIER_A); empty: any"),
]


@router.get("", response_model=list[SignalOut], responses=REDIS_ERRORS)
def latest_signals(
    cache: RedisDep,
    symbol: SymbolQ = None,
    limit: Annotated[int, Query(ge=1, le=RECENT_MAX)] = 50,
    decision: DecisionQ = None,
    tier: TierQ = None,
) -> list[SignalOut]:
    """The most recent signals, newest first, from the sink's Redis list (the last 1000 signals)."""
    want_symbol = norm_symbol(symbol)
    out: list[SignalOut] = []
    for doc in SignalCache(cache).recent():
        if want_symbol and doc.get("symbol") != want_symbol:
            continue
        if decision and doc.get("decision") != decision:  # a StrEnum member equals its stored name
            continue
        if tier and doc.get("tier") != tier:
            continue
        out.append(SignalOut.model_validate(_clean(doc)))
        if len(out) >= limit:
            break
    return out


@router.get("/latest", response_model=list[SignalOut], responses=REDIS_ERRORS)
def latest_per_symbol(cache: RedisDep) -> list[SignalOut]:
    """The latest signal of every symbol, by symbol."""
    return [SignalOut.model_validate(_clean(d)) for d in SignalCache(cache).latest()]


def _where(symbol: str | None, since_us: int | None) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if symbol:
        clauses.append("symbol = {symbol:String}")
        params["symbol"] = symbol
    if since_us is not None:
        clauses.append("decision_us >= {since_us:Int64}")
        params["since_us"] = since_us
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@router.get("/history", response_model=list[SignalOut], responses=WAREHOUSE_ERRORS)
def history(
    warehouse: WarehouseDep,
    symbol: SymbolQ = None,
    since_us: SinceQ = None,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100,
) -> list[SignalOut]:
    """Stored signals, newest decision first, one row per signal_id (FINAL collapses redeliveries)."""
    where, params = _where(norm_symbol(symbol), since_us)
    params["limit"] = limit
    columns = ", ".join((*SIGNAL_COLUMNS, "latency_ms"))
    rows = warehouse.query(
        f"SELECT {columns} FROM {warehouse.database}.signals FINAL{where} "
        "ORDER BY decision_us DESC, signal_id LIMIT {limit:UInt32}",
        params,
    )
    return [SignalOut.model_validate(_clean(r)) for r in rows]


@router.get("/stats", response_model=StatsResponse, responses=WAREHOUSE_ERRORS)
def stats(warehouse: WarehouseDep, symbol: SymbolQ = None, since_us: SinceQ = None) -> StatsResponse:
    """Signal counts per symbol / decision / tier, and latency quantiles, from the warehouse."""
    where, params = _where(norm_symbol(symbol), since_us)
    table = f"{warehouse.database}.signals FINAL"  # a validated identifier
    counts = warehouse.query(
        f"SELECT symbol, decision, tier, count() AS n FROM {table}{where} "
        "GROUP BY symbol, decision, tier ORDER BY symbol, decision, tier",
        params,
    )
    latency = warehouse.query(
        f"SELECT count() AS n, quantilesExactInclusive(0.5, 0.95, 0.99)(latency_ms) AS q FROM {table}{where}",
        params,
    )[0]
    n = int(latency["n"])
    q = [_finite(float(v)) for v in latency["q"]] if n else [None, None, None]
    buckets = [StatsBucket(symbol=r["symbol"], decision=r["decision"], tier=r["tier"], count=r["n"]) for r in counts]
    return StatsResponse(
        total=sum(b.count for b in buckets),
        buckets=buckets,
        latency=LatencyStats(count=n, p50_ms=q[0], p95_ms=q[1], p99_ms=q[2]),
    )
