"""Reports over the warehouse: realtime activity, regimes, the probability window, calibration and attribution.

They read the rollups where one exists (``signals_1m``, ``trades_1m``) and are served through the gateway's
response cache with ETags (``security.ResponseCache``). ``/reports/backtest`` lives in ``reports.py``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS
from services.gateway.routers.signals import SymbolQ, norm_symbol

router = APIRouter(prefix="/reports", tags=["reports"])

MinutesQ = Annotated[int, Query(ge=1, le=43_200, description="look-back in minutes (at most 30 days)")]


def _since_s(minutes: int) -> int:
    return int(time.time()) - minutes * 60


def _f(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


class RealtimeRow(BaseModel):
    symbol: str
    signals: int
    actionable: int
    mean_latency_ms: float | None
    max_latency_ms: float | None
    last_price: float | None
    volume: float
    trades: int


@router.get("/realtime", response_model=list[RealtimeRow], responses=WAREHOUSE_ERRORS)
def realtime(warehouse: WarehouseDep, minutes: MinutesQ = 15) -> list[RealtimeRow]:
    """Per symbol over the last ``minutes``: signals (and LONG/SHORT ones), decision latency, last trade price,
    volume and trade count, from the 1-minute rollups."""
    db = warehouse.database
    params = {"since": _since_s(minutes)}
    sig = warehouse.query(
        "SELECT symbol, sum(signals) AS n, sumIf(signals, decision != 'WAIT') AS act, "
        "sum(latency_ms_sum) AS lat, max(latency_ms_max) AS mx "
        f"FROM {db}.signals_1m WHERE ts >= toDateTime({{since:Int64}}) GROUP BY symbol", params)
    bars = warehouse.query(
        "SELECT symbol, argMaxMerge(close) AS last, sum(volume) AS v, sum(trades) AS n "
        f"FROM {db}.trades_1m WHERE ts >= toDateTime({{since:Int64}}) GROUP BY symbol", params)
    by: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in sig:
        by[r["symbol"]].update(signals=int(r["n"]), actionable=int(r["act"]),
                               mean_latency_ms=_f(r["lat"] / r["n"]) if r["n"] else None, max_latency_ms=_f(r["mx"]))
    for r in bars:
        by[r["symbol"]].update(last_price=_f(r["last"]), volume=float(r["v"]), trades=int(r["n"]))
    defaults = {"signals": 0, "actionable": 0, "mean_latency_ms": None, "max_latency_ms": None, "last_price": None,
                "volume": 0.0, "trades": 0}
    return [RealtimeRow(symbol=s, **{**defaults, **v}) for s, v in sorted(by.items())]


class RegimeRow(BaseModel):
    regime: str
    signals: int
    long: int
    short: int
    wait: int
    mean_p_up: float | None
    mean_net_utility_bps: float | None


@router.get("/regime", response_model=list[RegimeRow], responses=WAREHOUSE_ERRORS)
def regime(warehouse: WarehouseDep, symbol: SymbolQ = None, minutes: MinutesQ = 1440) -> list[RegimeRow]:
    """Signals per market regime over the last ``minutes`` (the 1-minute rollup)."""
    params: dict[str, Any] = {"since": _since_s(minutes)}
    extra = ""
    if norm_symbol(symbol):
        extra = " AND symbol = {symbol:String}"
        params["symbol"] = norm_symbol(symbol)
    rows = warehouse.query(
        "SELECT regime, sum(signals) AS n, sumIf(signals, decision = 'LONG') AS l, "
        "sumIf(signals, decision = 'SHORT') AS s, sumIf(signals, decision = 'WAIT') AS w, sum(p_up_sum) AS p, "
        f"sum(net_utility_bps_sum) AS u FROM {warehouse.database}.signals_1m "
        f"WHERE ts >= toDateTime({{since:Int64}}){extra} GROUP BY regime ORDER BY n DESC, regime", params)
    return [RegimeRow(regime=r["regime"], signals=int(r["n"]), long=int(r["l"]), short=int(r["s"]), wait=int(r["w"]),
                      mean_p_up=_f(r["p"] / r["n"]) if r["n"] else None,
                      mean_net_utility_bps=_f(r["u"] / r["n"]) if r["n"] else None) for r in rows]


class WindowPoint(BaseModel):
    exchange_us: int
    horizon_min: int
    p_up: float | None
    ci_low: float | None
    ci_high: float | None


class WindowOut(BaseModel):
    symbol: str
    points: list[WindowPoint]


@router.get("/window", response_model=WindowOut, responses=WAREHOUSE_ERRORS)
def window(warehouse: WarehouseDep, symbol: Annotated[str, Query(min_length=1, max_length=32)],
           minutes: Annotated[int, Query(ge=1, le=1440)] = 30,
           points: Annotated[int, Query(ge=1, le=5000)] = 600) -> WindowOut:
    """The latest probability window of ``symbol``: p_up (and its interval) per horizon over the last
    ``minutes``, at most ``points`` predictions, oldest first."""
    sym = norm_symbol(symbol) or ""
    rows = warehouse.query(
        "SELECT exchange_us, horizons, p_up, ci_low, ci_high FROM "
        f"{warehouse.database}.predictions FINAL WHERE symbol = {{symbol:String}} "
        "AND exchange_us >= {since_us:Int64} ORDER BY exchange_us DESC LIMIT {n:UInt32}",
        {"symbol": sym, "since_us": _since_s(minutes) * 1_000_000, "n": points})
    out = [WindowPoint(exchange_us=int(r["exchange_us"]), horizon_min=int(h), p_up=_f(p), ci_low=_f(lo), ci_high=_f(hi))
           for r in reversed(rows)
           for h, p, lo, hi in zip(r["horizons"], r["p_up"], r["ci_low"], r["ci_high"], strict=False)]
    return WindowOut(symbol=sym, points=out)


class CalibrationBucket(BaseModel):
    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed: float | None


class CalibrationOut(BaseModel):
    count: int
    ece: float | None
    buckets: list[CalibrationBucket]


@router.get("/calibration", response_model=CalibrationOut, responses=WAREHOUSE_ERRORS)
def calibration(warehouse: WarehouseDep, symbol: SymbolQ = None, minutes: MinutesQ = 43_200,
                buckets: Annotated[int, Query(ge=2, le=50)] = 10) -> CalibrationOut:
    """Reliability of resolved LONG/SHORT signals: the side's predicted probability (p_up, or 1 - p_up for a
    SHORT) against how often the target barrier came first, in ``buckets`` equal-width bins; ECE weights each
    bin's |predicted - observed| by its share of signals."""
    db = warehouse.database
    params: dict[str, Any] = {"since_us": _since_s(minutes) * 1_000_000, "k": buckets}
    extra = ""
    if norm_symbol(symbol):
        extra = " AND o.symbol = {symbol:String}"
        params["symbol"] = norm_symbol(symbol)
    rows = warehouse.query(
        "SELECT least(toInt64(floor(p * {k:UInt32})), {k:UInt32} - 1) AS b, count() AS n, avg(p) AS mp, "
        "avg(hit) AS hr FROM (SELECT if(o.decision = 'SHORT', 1 - s.p_up, s.p_up) AS p, "
        "if(o.label = 'HIT_TARGET', 1, 0) AS hit "
        f"FROM {db}.outcomes AS o FINAL INNER JOIN {db}.signals AS s FINAL ON s.signal_id = o.signal_id "
        f"WHERE o.decision IN ('LONG', 'SHORT') AND o.exit_us >= {{since_us:Int64}}{extra}) "
        "GROUP BY b ORDER BY b", params)
    total = sum(int(r["n"]) for r in rows)
    by = {int(r["b"]): r for r in rows}
    out, ece = [], 0.0
    for b in range(buckets):
        r = by.get(b)
        n = int(r["n"]) if r else 0
        mp, hr = (_f(r["mp"]), _f(r["hr"])) if r else (None, None)
        if n and mp is not None and hr is not None:
            ece += abs(mp - hr) * n / total
        out.append(CalibrationBucket(low=b / buckets, high=(b + 1) / buckets, count=n, mean_predicted=mp,
                                     observed=hr))
    return CalibrationOut(count=total, ece=ece if total else None, buckets=out)


class AttributionRow(BaseModel):
    name: str
    signals: int = Field(description="rows the feature was among the top features of (predictions x horizons "
                                     "for shap, signals for proxy); the means are over every row of the window "
                                     "for shap (0 where the feature was not in a row's top 5)")
    mean_abs_contribution: float
    mean_contribution: float
    method: Literal["shap", "proxy"] = Field(description="shap: TreeSHAP of the infer stage's attribution worker "
                                                          "(raw-score units); proxy: the signals' top_features")


AttributionMethod = Literal["auto", "shap", "proxy"]


@router.get("/attribution", response_model=list[AttributionRow], responses=WAREHOUSE_ERRORS)
def attribution(warehouse: WarehouseDep, symbol: SymbolQ = None, minutes: MinutesQ = 1440,
                top: Annotated[int, Query(ge=1, le=100)] = 10,
                horizon: Annotated[int | None, Query(ge=1, le=1_440, description="shap: one horizon only")] = None,
                method: Annotated[AttributionMethod, Query(description="auto: shap when the window has SHAP rows, "
                                                                       "else proxy")] = "auto",
                ) -> list[AttributionRow]:
    """The features that moved predictions most: mean |SHAP| over the top features of every explained
    prediction in the window (``attributions``), or, where there is none (or ``method=proxy``), mean |proxy
    contribution| of the latest LONG/SHORT signals' ``top_features`` (at most 10,000)."""
    params: dict[str, Any] = {"since_us": _since_s(minutes) * 1_000_000}
    extra = ""
    if norm_symbol(symbol):
        extra = " AND symbol = {symbol:String}"
        params["symbol"] = norm_symbol(symbol)
    if method != "proxy":
        shap = _shap_attribution(warehouse, extra, params, top, horizon)
        if shap or method == "shap" or horizon is not None:  # the proxy has no horizons: never a silent swap
            return shap
    return _proxy_attribution(warehouse, extra, params, top)


def _shap_attribution(warehouse: Any, extra: str, params: dict[str, Any], top: int,
                      horizon: int | None) -> list[AttributionRow]:
    where_h = " AND horizon_min = {horizon:UInt32}" if horizon is not None else ""
    # Means over every explained (prediction, horizon) row of the window, a feature outside a row's top 5
    # counting 0 there: so a feature in the top once with a large value does not outrank one that is always in it.
    source = (f"SELECT features, contributions FROM {warehouse.database}.attributions FINAL "
              f"WHERE exchange_us >= {{since_us:Int64}}{extra}{where_h}")
    rows = warehouse.query(
        f"SELECT name, count() AS n, sum(abs(c)) / any(total) AS mean_abs, sum(c) / any(total) AS mean FROM "
        f"(SELECT features, contributions, (SELECT count() FROM ({source})) AS total FROM ({source})) "
        "ARRAY JOIN features AS name, contributions AS c "
        "GROUP BY name ORDER BY mean_abs DESC, name LIMIT {top:UInt32}",
        {**params, "top": top, **({"horizon": horizon} if horizon is not None else {})})
    return [AttributionRow(name=r["name"], signals=int(r["n"]), mean_abs_contribution=float(r["mean_abs"]),
                           mean_contribution=float(r["mean"]), method="shap") for r in rows]


def _proxy_attribution(warehouse: Any, extra: str, params: dict[str, Any], top: int) -> list[AttributionRow]:
    rows = warehouse.query(
        f"SELECT top_features FROM {warehouse.database}.signals FINAL WHERE decision != 'WAIT' "
        f"AND decision_us >= {{since_us:Int64}}{extra} ORDER BY decision_us DESC LIMIT 10000", params)
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        try:
            features = orjson.loads(r["top_features"] or "[]")
        except orjson.JSONDecodeError:
            continue
        for f in features:
            c = _f(f.get("contribution"))
            if c is not None and isinstance(f.get("name"), str):
                acc[f["name"]].append(c)
    ranked = sorted(acc.items(), key=lambda kv: -sum(abs(c) for c in kv[1]) / len(kv[1]))[:top]
    return [AttributionRow(name=n, signals=len(cs), mean_abs_contribution=sum(abs(c) for c in cs) / len(cs),
                           mean_contribution=sum(cs) / len(cs), method="proxy") for n, cs in ranked]
