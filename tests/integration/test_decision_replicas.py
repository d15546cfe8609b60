"""Two decision processes on the same input publish one signal per position idea, through a kill -9 and the
rebalances it causes."""

from __future__ import annotations

import sys
import time

import pytest

from tests.conftest import free_port
from tests.integration.factories import SYMBOLS, prediction
from tests.integration.stack import StackProcesses, http_ok, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# Long cooldowns: every instrument's predictions below belong to one idea per instrument.
REPLICA_ENV = {"SURGE_COOLDOWN_LOW_VOL_S": "1800", "SURGE_COOLDOWN_MEDIUM_VOL_S": "1800",
               "SURGE_COOLDOWN_HIGH_VOL_S": "1800"}
DECISION_INDEX = 3  # decision's offset from SURGE_METRICS_BASE_PORT


def start_replica(stack: StackProcesses, name: str) -> None:
    """A decision process with its own metrics port, in the same consumer group as the others."""
    port = free_port()
    saved = stack.env
    stack.env = {**saved, **REPLICA_ENV, "SURGE_METRICS_BASE_PORT": str(port - DECISION_INDEX)}
    try:
        proc = stack.start(name, [sys.executable, "-m", "services.cli", "stage", "decision"])
    finally:
        stack.env = saved
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz") or proc.poll() is not None, 60, f"{name} ready")
    assert proc.poll() is None, stack.log_path(name).read_text()[-3000:]


def test_one_signal_per_idea_across_two_replicas_and_a_kill9(infra: StackProcesses) -> None:
    """Tried: 20 rounds of LONG-worthy predictions for 6 instruments while two decision replicas share the
    partitions; replica A is killed with SIGKILL after round 7 (its partitions move to B, whose memory has no
    cooldown for them) and restarted after round 14 (partitions move again). Each instrument is one idea."""
    infra.start_stage("sink")
    start_replica(infra, "decision-a")
    start_replica(infra, "decision-b")
    now_us = time.time_ns() // 1000
    for round_ in range(20):
        preds = [prediction(round_ * len(SYMBOLS) + k, now_us + round_ * 200_000, symbol=sym)
                 for k, sym in enumerate(SYMBOLS)]
        infra.send("predictions.v1", preds)
        if round_ == 7:
            infra.kill9("decision-a")
        if round_ == 14:
            start_replica(infra, "decision-a")
        time.sleep(0.3)
    wait_for(lambda: signal_count(infra) >= len(SYMBOLS), 90, "a signal for every instrument", interval_s=0.5)
    time.sleep(8)  # let any second signal of an idea (the failure this test looks for) arrive
    rows = infra.warehouse_rows("SELECT symbol, count() AS n FROM surge.signals FINAL GROUP BY symbol "
                                "ORDER BY symbol")
    assert [(r["symbol"], int(r["n"])) for r in rows] == [(s, 1) for s in sorted(SYMBOLS)]
    assert infra.stop("decision-a") == 0 and infra.stop("decision-b") == 0


def signal_count(stack: StackProcesses) -> int:
    return int(stack.warehouse_rows("SELECT count() AS n FROM surge.signals FINAL")[0]["n"])
