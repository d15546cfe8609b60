"""The outcomes stage as a real process: signals and ticks in, outcomes in ClickHouse, the risk state in Redis,
transitions audited, and open positions that survive a kill -9."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from schemas import SCHEMA_VERSION, common_pb2, market_pb2
from streams.storage.cache import OUTCOMES_SNAPSHOT_KEY, RISK_KEY
from tests.integration.factories import SYMBOLS, signal
from tests.integration.stack import StackProcesses, wait_for
from tests.integration.test_faults import FaultResult, record

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# The shared infrastructure puts the risk thresholds out of reach (tests/integration/conftest.py); this test is
# about them, so the outcomes stage gets the defaults back.
RISK_DEFAULTS = {"SURGE_RISK_LOSS_STREAKS": "3,5,8", "SURGE_RISK_DRAWDOWNS": "0.05,0.10,0.15"}


def trade_batch(symbol: str, at_us: int, price: float, seq: int) -> market_pb2.TickBatch:
    batch = market_pb2.TickBatch(schema_version=SCHEMA_VERSION, batch_id=f"t:{symbol}:{seq}",
                                 venue=common_pb2.SIMULATOR, symbol=symbol, sequence=seq)
    batch.events.add().trade.CopyFrom(market_pb2.Trade(trade_id=seq, price=price, qty=1.0, exchange_us=at_us,
                                                       ingest_us=at_us))
    batch.ts.exchange_us = batch.ts.ingest_us = at_us
    return batch


def snapshot_open(client: redis.Redis) -> int:
    raw = client.get(OUTCOMES_SNAPSHOT_KEY)
    return 0 if raw is None else len(orjson.loads(raw)["open"])


def test_signals_resolve_after_a_kill9_and_losses_move_the_risk_state(infra: StackProcesses) -> None:
    """Tried: six LONG signals (entry 100, +60/-40 bps) are opened, the stage is killed with SIGKILL and
    restarted, then three symbols trade through the target and, after those are stored, three through the stop."""
    client = redis.Redis.from_url(infra.settings.redis_connection_url())
    infra.start_stage("sink")
    infra.start_stage("outcomes", extra_env=RISK_DEFAULTS)
    infra.wait_stage_ready("outcomes")
    now_us = time.time_ns() // 1000
    signals = []
    for i, symbol in enumerate(SYMBOLS):
        s = signal(i, now_us, symbol=symbol)
        s.price, s.upper_barrier_bps, s.lower_barrier_bps, s.horizon_min = 100.0, 60.0, 40.0, 30
        signals.append(s)
    infra.send("signals.v1", signals)
    wait_for(lambda: snapshot_open(client) == len(SYMBOLS), 60, "six open signals in the snapshot", interval_s=0.2)

    killed = time.monotonic()
    infra.kill9("outcomes")
    infra.start_stage("outcomes", extra_env=RISK_DEFAULTS)
    infra.wait_stage_ready("outcomes")
    recovery_s = time.monotonic() - killed

    winners, losers = SYMBOLS[:3], SYMBOLS[3:]
    infra.send("ticks.v1", [trade_batch(sym, now_us + 1_000 + i, 100.7, 1) for i, sym in enumerate(winners)])
    wait_for(lambda: outcome_count(infra) == 3, 60, "three wins stored", interval_s=0.5)
    infra.send("ticks.v1", [trade_batch(sym, now_us + 2_000 + i, 99.5, 1) for i, sym in enumerate(losers)])
    wait_for(lambda: outcome_count(infra) == 6, 60, "six outcomes stored", interval_s=0.5)

    rows = infra.warehouse_rows("SELECT symbol, label, exit_price, risk_state FROM surge.outcomes FINAL "
                                "ORDER BY symbol")
    assert {(r["symbol"], r["label"], r["exit_price"]) for r in rows} == (
        {(s, "HIT_TARGET", 100.7) for s in winners} | {(s, "HIT_STOP", 99.5) for s in losers})
    risk = orjson.loads(client.get(RISK_KEY))  # type: ignore[arg-type]  # sync client: bytes
    assert (risk["level"], risk["consecutive_losses"]) == ("CAUTIOUS", 3)
    audits = infra.warehouse_rows("SELECT action, actor, previous_version FROM surge.audit_logs "
                                  "WHERE action LIKE 'risk_%'")
    assert audits == [{"action": "risk_cautious", "actor": "outcomes-stage", "previous_version": "NORMAL"}]
    assert snapshot_open(client) == 0
    stored = infra.warehouse_rows("SELECT count() AS n, uniqExact(signal_id) AS u FROM surge.outcomes")[0]
    record(FaultResult("kill -9 outcomes", "6 open signals, then the ticks that resolve them", recovery_s,
                       "kill -> restarted and assigned, open signals restored", len(SYMBOLS), len(SYMBOLS) - len(rows),
                       outcome_count(infra) - int(stored["u"]), int(stored["n"]) - int(stored["u"]),
                       "open positions come back from the Redis snapshot written at each commit; every signal "
                       "resolved once, with the oracle's label and exit"))
    assert infra.stop("outcomes") == 0
    assert infra.stop("sink") == 0


def outcome_count(stack: StackProcesses) -> int:
    return int(stack.warehouse_rows("SELECT count() AS n FROM surge.outcomes FINAL")[0]["n"])
