"""Valid bus messages with deterministic ids, for feeding stages directly."""

from __future__ import annotations

from schemas import SCHEMA_VERSION, common_pb2, prediction_pb2, signal_pb2

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT")


def prediction(i: int, now_us: int, *, p_up: float = 0.9, symbol: str | None = None) -> prediction_pb2.Prediction:
    sym = symbol or SYMBOLS[i % len(SYMBOLS)]
    return prediction_pb2.Prediction(
        schema_version=SCHEMA_VERSION,
        prediction_id=f"test:{sym}:{i}:m1",
        venue=common_pb2.SIMULATOR,
        symbol=sym,
        model_version="m1",
        feature_version="f1",
        horizons=[prediction_pb2.HorizonProbability(horizon_min=h, p_up=p_up, ci_low=p_up - 0.05,
                                                    ci_high=min(1.0, p_up + 0.05)) for h in (5, 10, 30)],
        regime="vol_low_depth_thick",
        mid_price=100.0 + i * 0.01,
        spread_bps=1.0,
        data_window_id=f"{sym}:{i}-{i}",
        ts=common_pb2.Timestamps(exchange_us=now_us, ingest_us=now_us, features_us=now_us, infer_us=now_us),
    )


def signal(i: int, now_us: int, *, symbol: str | None = None) -> signal_pb2.Signal:
    sym = symbol or SYMBOLS[i % len(SYMBOLS)]
    return signal_pb2.Signal(
        schema_version=SCHEMA_VERSION,
        signal_id=f"test:{sym}:{i}:m1:5",
        venue=common_pb2.SIMULATOR,
        symbol=sym,
        decision=signal_pb2.LONG,
        tier=signal_pb2.TIER_A,
        p_up=0.9,
        horizon_min=5,
        expected_return_bps=20.0,
        estimated_cost_bps=5.0,
        net_utility_bps=15.0,
        regime="vol_low_depth_thick",
        model_version="m1",
        feature_version="f1",
        cost_model_version="cost-v2",
        data_window_id=f"{sym}:{i}-{i}",
        price=100.0 + i * 0.01,
        ts=common_pb2.Timestamps(exchange_us=now_us, ingest_us=now_us, features_us=now_us, infer_us=now_us,
                                 decision_us=now_us + 1_000),
    )
