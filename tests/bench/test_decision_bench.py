"""Decision core throughput (make bench, not make test). Results: bench/results/decision.json.

The decision stage's pure core, ``streams.decision.core.process``, on batches of 500 valid predictions for 50
instruments with three horizons each, priced by the stage's cost model over the shipped cost tables read through
the L1 cache in front of a real redis-server (as ``surge stage decision`` runs it). One thread = one core.

* ``no_cooldown``: every prediction is evaluated and every actionable one emitted (the worst case: a signal
  built per horizon);
* ``cooldown``: the default 10-30 min cooldowns, so after the first batch almost every idea is cooling and the
  work is the evaluation itself (the steady state of a live stage).

Goal (issue 8): >= 200k decisions/s per core including the cost lookup; a decision is one horizon of one
prediction.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator

import pytest
import redis

from schemas import SCHEMA_VERSION, common_pb2, prediction_pb2
from streams.decision.core import DecisionState, process
from streams.decision.cost import CostModel, load_into_redis, packaged_tables
from streams.runtime.clock import LiveClock, ManualClock
from streams.runtime.core import InRecord
from streams.runtime.regimes import REGIME_LABELS
from streams.runtime.settings import Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.bench

RESULTS = REPO_ROOT / "bench" / "results"
T0 = 1_780_000_000_000_000
BATCH = 500
BATCHES = 200
HORIZONS = (5, 10, 30)
GOAL_DECISIONS_PER_S = 200_000


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    load_into_redis(r, packaged_tables())
    yield r
    r.close()


def batch(n: int, at_us: int) -> list[InRecord[prediction_pb2.Prediction]]:
    out = []
    for i in range(BATCH):
        k = n * BATCH + i
        symbol = f"SYM{k % 50:02d}USDT"
        p = prediction_pb2.Prediction(
            schema_version=SCHEMA_VERSION, prediction_id=f"{symbol}:{k}:m", venue=common_pb2.BINANCE_USDM,
            symbol=symbol, model_version="m", feature_version="f", regime=REGIME_LABELS[k % len(REGIME_LABELS)],
            mid_price=100.0 + (k % 7), spread_bps=1.0 + (k % 3) * 0.5, data_window_id=f"{symbol}:{k}",
            horizons=[prediction_pb2.HorizonProbability(horizon_min=h, p_up=0.05 + 0.9 * ((k * 7 + h) % 19) / 18)
                      for h in HORIZONS],
            ts=common_pb2.Timestamps(exchange_us=at_us - 40_000, ingest_us=at_us - 30_000,
                                     features_us=at_us - 20_000, infer_us=at_us - 10_000))
        out.append(InRecord(value=p, key=""))
    return out


def run(client: redis.Redis, **overrides: object) -> dict[str, object]:
    settings = Settings(redis_url="redis://unused", **overrides)  # type: ignore[arg-type]  # typed at run time
    clock = ManualClock(T0)
    cost = CostModel.from_settings(settings, clock=LiveClock(), client=client)
    state = DecisionState.from_settings(settings, cost)
    batches = [batch(n, T0 + n * 1_000) for n in range(BATCHES)]
    process(batches[0], state, clock)  # warm the L1 cache
    emitted = 0
    t0 = time.perf_counter()
    for n, b in enumerate(batches):
        clock.set_us(T0 + n * 1_000)
        emitted += len(process(b, state, clock).emits)
    elapsed = time.perf_counter() - t0
    decisions = BATCHES * BATCH * len(HORIZONS)
    return {"decisions_per_s": round(decisions / elapsed), "us_per_decision": round(elapsed / decisions * 1e6, 3),
            "decisions": decisions, "signals": emitted, "rule_changes": dict(state.rule_counts)}


def test_decision_core_throughput(client: redis.Redis) -> None:
    results = {
        "no_cooldown": run(client, cooldown_low_vol_s=0, cooldown_medium_vol_s=0, cooldown_high_vol_s=0,
                           decision_max_exchange_lag_s=0, tau_a=0.0, kappa_a=-1e9),
        "cooldown": run(client, decision_max_exchange_lag_s=0),
    }
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_1m": os.getloadavg()[0]},
           "goal_decisions_per_s": GOAL_DECISIONS_PER_S, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decision.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    assert all(r["decisions"] == BATCHES * BATCH * len(HORIZONS) for r in results.values())
