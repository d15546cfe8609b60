"""Signals: the live view from Redis (written by the sink) and history / stats from the warehouse.

Filters are enums of the stored (protobuf) names, parsed case-insensitively; tiers may be given short: ``A``
means ``TIER_A`` (see ``services.gateway.enums``). An empty filter means "any". Anything else is a 422 with
FastAPI's documented validation body, as is an integer outside its bounds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field

from services.gateway import pagination
from services.gateway.deps import RedisDep, ResourcesDep, WarehouseDep
from services.gateway.enums import Decision, Tier, Venue, describe
from services.gateway.errors import REDIS_ERRORS, WAREHOUSE_ERRORS, ErrorOut
from streams.sink.core import OUTCOME_COLUMNS, SIGNAL_COLUMNS
from streams.storage.cache import CHANNEL, RECENT_MAX, SignalCache, instrument_field

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


class OutcomeOut(BaseModel):
    """A signal's realized triple-barrier outcome (outcomes stage); label HIT_TARGET, HIT_STOP or TIMEOUT."""

    outcome_id: str
    signal_id: str
    venue: str
    symbol: str
    decision: str
    tier: str
    horizon_min: int
    label: str
    entry_price: float | None
    exit_price: float | None
    realized_return_bps: float | None
    net_return_bps: float | None
    max_favourable_bps: float | None
    max_adverse_bps: float | None
    entry_us: int
    exit_us: int
    time_to_barrier_us: int
    estimated_cost_bps: float | None
    realized_cost_bps: float | None
    upper_barrier_bps: float | None
    lower_barrier_bps: float | None
    paper_equity: float | None
    risk_state: str
    stored_us: int


class SignalDetail(BaseModel):
    signal: SignalOut
    outcome: OutcomeOut | None = Field(description="null while the signal is open (or for WAIT)")
    attribution: Literal["shap", "proxy"] = Field(
        "proxy", description="shap: signal.top_features are the TreeSHAP top features of its prediction at its "
                             "horizon (the infer stage's attribution worker); proxy: the fast ones it was "
                             "published with (no SHAP row yet, or a model without boosters)")


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


MinUtilityQ = Annotated[float | None, Query(ge=-1e6, le=1e6, description="only net_utility_bps >= this")]
_SIGNAL_SELECT: Final = ", ".join((*SIGNAL_COLUMNS, "latency_ms"))


@router.get("", response_model=list[SignalOut], responses={**REDIS_ERRORS, **WAREHOUSE_ERRORS})
def latest_signals(
    request: Request,
    response: Response,
    resources: ResourcesDep,
    symbol: SymbolQ = None,
    limit: Annotated[int, Query(ge=1, le=RECENT_MAX)] = 50,
    decision: DecisionQ = None,
    tier: TierQ = None,
    min_utility: MinUtilityQ = None,
    since: pagination.SinceQ = None,
    until: pagination.UntilQ = None,
    cursor: pagination.CursorQ = None,
) -> list[SignalOut]:
    """Signals newest first. Without ``since``/``until``/``cursor``: the sink's Redis list of the last 1000
    signals (the live view); with any of them: the warehouse, paged by ``cursor`` (see ``X-Next-Cursor``)."""
    want_symbol = norm_symbol(symbol)
    position = pagination.decode_cursor(cursor)
    if position is None and since is None and until is None:
        out: list[SignalOut] = []
        for doc in SignalCache(resources.redis()).recent():
            if want_symbol and doc.get("symbol") != want_symbol:
                continue
            if decision and doc.get("decision") != decision:  # a StrEnum member equals its stored name
                continue
            if tier and doc.get("tier") != tier:
                continue
            if min_utility is not None and not float(doc.get("net_utility_bps") or 0.0) >= min_utility:
                continue
            out.append(SignalOut.model_validate(_clean(doc)))
            if len(out) >= limit:
                break
        pagination.set_next(request, response, [o.model_dump() for o in out], limit, "decision_us", "signal_id")
        return out
    warehouse = resources.warehouse()
    clauses: list[str] = []
    params: dict[str, Any] = {}
    pagination.equals(clauses, params, symbol=want_symbol, decision=decision, tier=tier)
    if min_utility is not None:
        clauses.append("net_utility_bps >= {min_utility:Float64}")
        params["min_utility"] = min_utility
    rows = pagination.page(warehouse, request, response, table="signals", select=_SIGNAL_SELECT,
                           time_col="decision_us", id_col="signal_id", clauses=clauses, params=params,
                           cursor=position, since=since, until=until, limit=limit)
    return [SignalOut.model_validate(_clean(r)) for r in rows]


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


StreamSymbolQ = Annotated[str | None, Query(max_length=32, description="only this symbol")]


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get("/stream", responses={200: {"content": {"text/event-stream": {}},
                                        "description": "Server-Sent Events: `snapshot` once, then `signal` diffs"},
                                  **REDIS_ERRORS})
async def stream(
    request: Request,
    resources: ResourcesDep,
    symbol: StreamSymbolQ = None,
    max_events: Annotated[int | None, Query(ge=1, le=1_000_000, description="close after this many events")] = None,
    timeout_s: Annotated[float | None, Query(gt=0, le=86_400, description="close after this long")] = None,
    access_token: Annotated[str | None, Query(max_length=200, description=(
        "the bearer token, for clients that cannot send an Authorization header (a browser's EventSource); "
        "read by the auth dependency, and only on this route"))] = None,
) -> StreamingResponse:
    """Live signals as Server-Sent Events: one ``snapshot`` event (the latest signal per instrument), then one
    ``signal`` event per new signal (diffs only: a signal already sent, e.g. a redelivery, is not sent again),
    and a ``: keep-alive`` comment every 15 s."""
    want = norm_symbol(symbol)
    snapshot = [d for d in SignalCache(resources.redis()).latest() if not want or d.get("symbol") == want]
    client = aioredis.Redis.from_url(resources.settings.redis_connection_url(), socket_connect_timeout=2.0)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)  # before the snapshot is sent: nothing falls between the two
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        seen: dict[str, str] = {instrument_field(d): str(d.get("signal_id")) for d in snapshot}
        last_beat = time.monotonic()
        try:
            yield _sse("snapshot", [_clean(d) for d in snapshot])
            sent += 1
            while (max_events is None or sent < max_events) and (deadline is None or time.monotonic() < deadline):
                if await request.is_disconnected():
                    break
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is None:
                    if time.monotonic() - last_beat > 15:
                        last_beat = time.monotonic()
                        yield b": keep-alive\n\n"
                    continue
                try:
                    doc = orjson.loads(message["data"])
                except (orjson.JSONDecodeError, TypeError):
                    continue
                if not isinstance(doc, dict) or (want and doc.get("symbol") != want):
                    continue
                key = instrument_field(doc)
                if seen.get(key) == doc.get("signal_id"):
                    continue
                seen[key] = str(doc.get("signal_id"))
                yield _sse("signal", _clean(doc))
                sent += 1
        except asyncio.CancelledError:
            raise
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            await client.aclose()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


SignalIdP = Annotated[str, Path(min_length=1, max_length=256, description="signal_id")]


@router.get("/{signal_id}", response_model=SignalDetail,
            responses={404: {"model": ErrorOut, "description": "no such signal"}, **WAREHOUSE_ERRORS})
def signal_by_id(warehouse: WarehouseDep, signal_id: SignalIdP) -> SignalDetail:
    """One stored signal and, once it has resolved, its outcome."""
    rows = warehouse.query(
        f"SELECT {_SIGNAL_SELECT} FROM {warehouse.database}.signals FINAL WHERE signal_id = {{id:String}} LIMIT 1",
        {"id": signal_id},
    )
    if not rows:
        raise HTTPException(404, "no such signal")
    outcomes = warehouse.query(
        f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM {warehouse.database}.outcomes FINAL "
        "WHERE signal_id = {id:String} LIMIT 1",
        {"id": signal_id},
    )
    outcome = OutcomeOut.model_validate({k: _finite(v) for k, v in outcomes[0].items()}) if outcomes else None
    signal = SignalOut.model_validate(_clean(rows[0]))
    shap = warehouse.query(
        f"SELECT features, feature_values, contributions FROM {warehouse.database}.attributions FINAL "
        "WHERE symbol = {symbol:String} AND data_window_id = {window:String} AND model_version = {model:String} "
        "AND horizon_min = {h:UInt32} LIMIT 1",
        {"symbol": signal.symbol, "window": signal.data_window_id, "model": signal.model_version,
         "h": signal.horizon_min})
    if not shap:
        return SignalDetail(signal=signal, outcome=outcome)
    top = [FeatureContributionOut(name=n, value=_finite(v), contribution=_finite(c)) for n, v, c in
           zip(shap[0]["features"], shap[0]["feature_values"], shap[0]["contributions"], strict=True)]
    return SignalDetail(signal=signal.model_copy(update={"top_features": top}), outcome=outcome, attribution="shap")
