"""Predictions: the latest per instrument from the Redis hot cache, history and single ones from the warehouse."""

from __future__ import annotations

import math
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from services.gateway import pagination
from services.gateway.deps import HotDep, WarehouseDep
from services.gateway.errors import REDIS_ERRORS, WAREHOUSE_ERRORS, ErrorOut
from services.gateway.routers.signals import FeatureContributionOut, SymbolQ, norm_symbol
from streams.sink.core import PREDICTION_COLUMNS
from streams.storage.cache import PREDICTION

router = APIRouter(prefix="/predictions", tags=["predictions"])


class HorizonOut(BaseModel):
    horizon_min: int
    p_up: float | None
    ci_low: float | None
    ci_high: float | None


class ShapOut(BaseModel):
    """One horizon's SHAP attribution (the infer stage's worker, a few seconds after the prediction)."""

    horizon_min: int
    base_value: float
    raw_score: float
    top_features: list[FeatureContributionOut]


class PredictionOut(BaseModel):
    prediction_id: str
    venue: str
    symbol: str
    model_version: str
    feature_version: str
    horizons: list[HorizonOut]
    regime: str
    mid_price: float | None
    spread_bps: float | None
    top_features: list[FeatureContributionOut]
    data_window_id: str
    canary: bool
    quality_flags: list[str]
    exchange_us: int
    infer_us: int
    stored_us: int
    instrument_id: int | None = None
    shap: list[ShapOut] | None = Field(None, description="by id only: TreeSHAP per horizon once computed "
                                                         "(top_features above is the fast proxy)")


def _f(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def from_row(row: dict[str, Any]) -> PredictionOut:
    horizons = [HorizonOut(horizon_min=h, p_up=_f(p), ci_low=_f(lo), ci_high=_f(hi))
                for h, p, lo, hi in zip(row["horizons"], row["p_up"], row["ci_low"], row["ci_high"], strict=False)]
    features = orjson.loads(row["top_features"]) if row["top_features"] else []
    doc = {k: _f(v) for k, v in row.items() if k not in ("horizons", "p_up", "ci_low", "ci_high", "top_features")}
    return PredictionOut.model_validate({**doc, "horizons": horizons, "top_features": features,
                                         "canary": bool(row["canary"])})


_SELECT: Final = ", ".join(PREDICTION_COLUMNS)


@router.get("", response_model=list[PredictionOut], responses=WAREHOUSE_ERRORS)
def list_predictions(
    request: Request,
    response: Response,
    warehouse: WarehouseDep,
    symbol: SymbolQ = None,
    model_version: Annotated[str | None, Query(max_length=128)] = None,
    since: pagination.SinceQ = None,
    until: pagination.UntilQ = None,
    cursor: pagination.CursorQ = None,
    limit: pagination.LimitQ = 100,
) -> list[PredictionOut]:
    """Stored predictions, newest exchange time first, paged by ``cursor`` (``X-Next-Cursor``)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    pagination.equals(clauses, params, symbol=norm_symbol(symbol), model_version=model_version)
    rows = pagination.page(warehouse, request, response, table="predictions", select=_SELECT,
                           time_col="exchange_us", id_col="prediction_id", clauses=clauses, params=params,
                           cursor=pagination.decode_cursor(cursor), since=since, until=until, limit=limit)
    return [from_row(r) for r in rows]


InstrumentsQ = Annotated[str, Query(max_length=4096, pattern=r"^[A-Z0-9_:,]*$",
                                    description="comma-separated instrument keys, e.g. BINANCE_SPOT:BTCUSDT")]


@router.get("/latest", response_model=list[PredictionOut], responses=REDIS_ERRORS)
def latest(hot: HotDep, instruments: InstrumentsQ = "") -> list[PredictionOut]:
    """The latest prediction of each instrument (all registered ones by default), from the Redis hot cache;
    an instrument with no prediction in the last few seconds is absent."""
    wanted = [i for i in instruments.split(",") if i] or sorted(hot.instrument_ids())
    docs = hot.get_latest(PREDICTION, wanted)
    return [PredictionOut.model_validate(docs[i]) for i in wanted if i in docs]


@router.get("/{prediction_id}", response_model=PredictionOut,
            responses={404: {"model": ErrorOut, "description": "no such prediction"}, **WAREHOUSE_ERRORS})
def prediction_by_id(warehouse: WarehouseDep,
                     prediction_id: Annotated[str, Path(min_length=1, max_length=256)]) -> PredictionOut:
    rows = warehouse.query(
        f"SELECT {_SELECT} FROM {warehouse.database}.predictions FINAL WHERE prediction_id = {{id:String}} LIMIT 1",
        {"id": prediction_id})
    if not rows:
        raise HTTPException(404, "no such prediction")
    # symbol and exchange time lead the table's key: the lookup reads one granule, not the table.
    shap = warehouse.query(
        "SELECT horizon_min, base_value, raw_score, features, feature_values, contributions "
        f"FROM {warehouse.database}.attributions FINAL WHERE symbol = {{symbol:String}} "
        "AND exchange_us = {exchange_us:Int64} AND prediction_id = {id:String} ORDER BY horizon_min",
        {"id": prediction_id, "symbol": rows[0]["symbol"], "exchange_us": int(rows[0]["exchange_us"])})
    return from_row(rows[0]).model_copy(update={"shap": [ShapOut(
        horizon_min=int(r["horizon_min"]), base_value=float(r["base_value"]), raw_score=float(r["raw_score"]),
        top_features=[FeatureContributionOut(name=n, value=v, contribution=c) for n, v, c in
                      zip(r["features"], r["feature_values"], r["contributions"], strict=True)]) for r in shap]})
