"""kill -9 stages mid-stream: every input is processed, nothing is lost, the sink de-duplicates."""

from __future__ import annotations

import time

import pytest

from tests.integration.factories import prediction
from tests.integration.stack import StackProcesses, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

N_PREDICTIONS = 3000
CHUNK = 250


def signal_count(stack: StackProcesses) -> int:
    rows = stack.warehouse_rows("SELECT count() AS n FROM surge.signals FINAL")
    return int(rows[0]["n"])


def test_kill9_decision_and_sink_mid_stream_loses_nothing(infra: StackProcesses) -> None:
    infra.start_stage("sink")
    infra.start_stage("decision")
    infra.wait_stage_ready("decision")
    infra.wait_stage_ready("sink")
    now_us = time.time_ns() // 1000
    expected_ids: set[str] = set()
    for chunk_start in range(0, N_PREDICTIONS, CHUNK):
        preds = [prediction(i, now_us + i) for i in range(chunk_start, chunk_start + CHUNK)]
        expected_ids.update(f"{p.prediction_id}:5" for p in preds)
        infra.send("predictions.v1", preds)
        if chunk_start == 3 * CHUNK:
            infra.kill9("decision")  # dies with records consumed but possibly not committed
            infra.start_stage("decision")
        if chunk_start == 7 * CHUNK:
            infra.kill9("sink")  # dies between inserts and commits: redelivery must not duplicate rows
            infra.start_stage("sink")
        time.sleep(0.05)

    wait_for(lambda: signal_count(infra) >= N_PREDICTIONS, 120, f"{N_PREDICTIONS} signals in ClickHouse",
             interval_s=0.5)
    time.sleep(3)  # let any redelivered duplicates arrive before the exact checks
    rows = infra.warehouse_rows(
        "SELECT count() AS n, uniqExact(signal_id) AS u FROM surge.signals FINAL")
    assert (int(rows[0]["n"]), int(rows[0]["u"])) == (N_PREDICTIONS, N_PREDICTIONS)
    ids = {r["signal_id"] for r in infra.warehouse_rows("SELECT signal_id FROM surge.signals FINAL")}
    assert ids == expected_ids
    decisions = infra.warehouse_rows("SELECT decision, tier, count() AS n FROM surge.signals FINAL "
                                     "GROUP BY decision, tier")
    assert [(r["decision"], r["tier"], int(r["n"])) for r in decisions] == [("LONG", "TIER_A", N_PREDICTIONS)]
    assert infra.stop("decision") == 0  # SIGTERM drains, commits and exits cleanly
    assert infra.stop("sink") == 0


def test_broker_outage_is_ridden_out(infra: StackProcesses) -> None:
    """Freeze the broker (SIGSTOP) for 8 s mid-stream: the stages reconnect and every input comes through.

    A real restart of Tansu cannot be used here: its memory storage would lose the topics themselves.
    """
    import signal as sig

    infra.start_stage("sink")
    infra.start_stage("decision")
    infra.wait_stage_ready("decision")
    infra.wait_stage_ready("sink")
    before = signal_count(infra)
    now_us = time.time_ns() // 1000
    first = [prediction(50_000 + i, now_us + i) for i in range(300)]
    infra.send("predictions.v1", first)
    broker = infra.procs["broker"]
    broker.send_signal(sig.SIGSTOP)
    try:
        time.sleep(8)
    finally:
        broker.send_signal(sig.SIGCONT)
    second = [prediction(60_000 + i, now_us + i) for i in range(300)]
    infra.send("predictions.v1", second)
    wait_for(lambda: signal_count(infra) >= before + 600, 120, "all 600 signals after the outage", interval_s=0.5)
    time.sleep(2)
    assert signal_count(infra) == before + 600
    assert infra.procs["decision"].poll() is None and infra.procs["sink"].poll() is None
    infra.stop("decision")
    infra.stop("sink")
