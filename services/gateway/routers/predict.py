"""``POST /predict``: a feature vector in, calibrated probabilities and the decision out (see ``predict.py``)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import prediction_pb2, signal_pb2
from services.gateway.errors import ErrorOut
from services.gateway.predict import Batcher, PredictUnavailable
from streams.decision.core import DecisionConfig, evaluate_all
from streams.decision.cost import CostModel
from streams.infer.model import Model, Prediction
from streams.runtime.validate import MAX_PRICE, MAX_SPREAD_BPS

router = APIRouter(tags=["predict"])

TOP_FEATURES = 5
FiniteOrNull = Annotated[float | None, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]
FeatureName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class PredictIn(BaseModel):
    """One feature vector. Features the model does not use are a 422; ones it uses but you omit (or send as
    null) are missing values, as in the stream (the model was trained with NaN for them)."""

    model_config = ConfigDict(extra="forbid")

    venue: Literal["BINANCE_SPOT", "BINANCE_USDM", "SIMULATOR"] = "BINANCE_SPOT"
    symbol: Annotated[str, Field(min_length=2, max_length=32, pattern=r"^[A-Z0-9]+$")]
    regime: Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9_]*$",
                                 description="one of the 9 vol x depth labels; empty: unknown")] = ""
    mid_price: Annotated[float, Field(gt=0, le=MAX_PRICE, allow_inf_nan=False)]
    spread_bps: Annotated[float, Field(ge=0, le=MAX_SPREAD_BPS, allow_inf_nan=False)]
    features: Annotated[dict[FeatureName, FiniteOrNull], Field(max_length=2048)]


class HorizonDecision(BaseModel):
    horizon_min: int
    p_up: float
    ci_low: float
    ci_high: float
    decision: str
    tier: str
    expected_return_bps: float
    estimated_cost_bps: float
    net_utility_bps: float


class ContributionOut(BaseModel):
    name: str
    value: float | None
    contribution: float


class PredictOut(BaseModel):
    model_version: str
    feature_version: str
    decision: str = Field(description="the best horizon's: LONG, SHORT or WAIT")
    tier: str
    horizon_min: int | None = Field(description="the horizon the decision comes from (null: WAIT everywhere)")
    horizons: list[HorizonDecision]
    missing_features: list[str]
    top_features: list[ContributionOut]


def _row(model: Model, body: PredictIn) -> tuple[np.ndarray, list[str]]:
    index = {n: j for j, n in enumerate(model.feature_names)}
    unknown = sorted(set(body.features) - set(index))
    if unknown:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", "features", unknown[0]), "input": unknown[0],
            "msg": f"Value error, feature {unknown[0]!r} is not one of the model's {len(index)} features "
                   f"({len(unknown)} unknown)"}])
    row = np.full(model.n_features, np.nan, dtype=np.float64)
    for name, value in body.features.items():
        if value is not None:
            row[index[name]] = value
    missing = [n for n in model.feature_names if body.features.get(n) is None]
    return row, missing


def _decide(body: PredictIn, model: Model, p: Prediction, i: int, config: DecisionConfig,
            cost: CostModel) -> list[HorizonDecision]:
    b = model.barriers
    horizons = [prediction_pb2.HorizonProbability(
        horizon_min=h, p_up=float(p.p_up[i, j]), ci_low=float(p.ci_low[i, j]), ci_high=float(p.ci_high[i, j]),
        upper_barrier_bps=b.upper_bps, lower_barrier_bps=b.lower_bps,
        timeout_counts_as_not_up=b.timeout_counts_as_not_up) for j, h in enumerate(model.horizons)]
    pred = prediction_pb2.Prediction(
        venue=body.venue, symbol=body.symbol, model_version=model.model_version,
        feature_version=model.feature_version, horizons=horizons, regime=body.regime, mid_price=body.mid_price,
        spread_bps=body.spread_bps)
    out = []
    for h, ev in zip(pred.horizons, evaluate_all(pred, pred.horizons, config, cost), strict=True):
        out.append(HorizonDecision(
            horizon_min=h.horizon_min, p_up=h.p_up, ci_low=h.ci_low, ci_high=h.ci_high,
            decision=signal_pb2.Decision.Name(ev.decision), tier=signal_pb2.Tier.Name(ev.tier),
            expected_return_bps=ev.expected_return_bps, estimated_cost_bps=ev.estimated_cost_bps,
            net_utility_bps=ev.net_utility_bps))
    return out


_TIER_RANK = {"TIER_A": 2, "TIER_B": 1}


async def score(state: Any, body: PredictIn) -> PredictOut:
    """The whole answer of one request; raises PredictUnavailable (503) or RequestValidationError (422)."""
    batcher: Batcher = state.predictor
    settings = state.resources.settings
    model = await batcher.ready_model()
    row, missing = _row(model, body)
    model, prediction, i = await batcher.score(row, settings.predict_timeout_ms / 1000.0)
    horizons = _decide(body, model, prediction, i, state.decision_config, state.cost_model)
    acting = [h for h in horizons if h.decision != "WAIT"]
    best = max(acting, key=lambda h: (_TIER_RANK.get(h.tier, 0), h.net_utility_bps)) if acting else None
    contributions = model.attribution.contributions(row[None, :])[0]
    order = np.argsort(-np.abs(contributions))[:TOP_FEATURES]
    top = [ContributionOut(name=model.feature_names[j], value=None if math.isnan(row[j]) else float(row[j]),
                           contribution=float(contributions[j])) for j in order if contributions[j] != 0]
    return PredictOut(model_version=model.model_version, feature_version=model.feature_version,
                      decision=best.decision if best else "WAIT", tier=best.tier if best else "TIER_NONE",
                      horizon_min=best.horizon_min if best else None, horizons=horizons, missing_features=missing,
                      top_features=top)


@router.post("/predict", response_model=PredictOut,
             responses={503: {"model": ErrorOut, "description": "no model, or not scored within the timeout"}})
async def predict(request: Request, body: PredictIn) -> PredictOut:
    """Score one feature vector with the serving model (batched with concurrent requests onto one ONNX call)
    and price it as the decision stage would (normal conditions: no degradation, risk NORMAL)."""
    try:
        return await score(request.app.state, body)
    except PredictUnavailable as exc:
        raise HTTPException(503, str(exc)) from None


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_BODY = 1 << 20


class PredictFastPath:
    """``POST /predict`` without FastAPI's per-request routing and dependency machinery (most of a request's
    cost once the ONNX call is shared): the body is validated by the same pydantic model and answered by the same
    ``score``. Anything unusual (invalid body, a token to check, a large body) falls through to the FastAPI route,
    which gives the canonical answer (422, 401...), so both paths answer alike."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("path") != "/predict" or scope.get("method") != "POST"
                or self.state.resources.settings.gateway_auth != "open"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(b"".join(chunks), message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
            if size > MAX_BODY:
                break
        raw = b"".join(chunks)
        try:
            if more:
                raise ValueError("large body")
            body = PredictIn.model_validate_json(raw)
            out = await score(self.state, body)
        except PredictUnavailable as exc:
            await _answer(send, 503, orjson.dumps({"detail": str(exc)}))
            return
        except (ValidationError, RequestValidationError, ValueError):
            await self.app(scope, _replay(raw, None, receive if more else None), send)
            return
        await _answer(send, 200, orjson.dumps(out.model_dump()))


def _replay(raw: bytes, then: MutableMapping[str, Any] | None, rest: Receive | None = None) -> Receive:
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": rest is not None}
        if rest is not None:
            return await rest()
        if then is not None:
            return then
        return {"type": "http.disconnect"}

    return receive


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
