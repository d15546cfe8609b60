"""A real capture through `surge run --source replay:...`: signals, their outcomes and the live metrics, end to end,
with every outcome checked against the capture's own trades by an oracle written here."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.stack import StackProcesses, stack_env, wait_for

pytestmark = pytest.mark.integration

CAPTURES = {
    # venue: (capture, least realized round-trip cost in bps: two taker fees, cost model defaults)
    "spot": (Path("ws_messages/hftbacktest/spot/btcusdt_20240808.gz"), 20.0),
    "usdm": (Path("ws_messages/hftbacktest/usdm/btcusdt_20240808.gz"), 10.0),
}


def capture_trades(path: Path) -> list[tuple[int, float]]:
    """(trade time µs, price) of every trade frame in an hftbacktest capture, in file order."""
    trades = []
    with gzip.open(path, "rb") as lines:
        for line in lines:
            frame = orjson.loads(line.split(b" ", 1)[1])
            data = frame.get("data", frame) if isinstance(frame, dict) else {}
            if isinstance(data, dict) and data.get("e") == "trade":
                trades.append((int(data["T"]) * 1000, float(data["p"])))
    return trades


def oracle(trades: list[tuple[int, float]], o: dict[str, Any]) -> tuple[str, float]:
    """The triple barrier, by hand: the first trade after entry at/through the target or the stop, else TIMEOUT
    at the last trade before the deadline."""
    entry, entry_us = float(o["entry_price"]), int(o["entry_us"])
    up, down = float(o["upper_barrier_bps"]) / 1e4, float(o["lower_barrier_bps"]) / 1e4
    deadline = entry_us + int(o["horizon_min"]) * 60_000_000
    long = o["decision"] == "LONG"
    target, stop = (entry * (1 + up), entry * (1 - down)) if long else (entry * (1 - down), entry * (1 + up))
    last = entry
    for at_us, price in trades:
        if at_us <= entry_us:
            continue
        if at_us >= deadline:
            return "TIMEOUT", last
        if (price >= target) if long else (price <= target):
            return "HIT_TARGET", price
        if (price <= stop) if long else (price >= stop):
            return "HIT_STOP", price
        last = price
    return "OPEN", last


@pytest.fixture(scope="module", params=sorted(CAPTURES))
def venue(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, venue: str) -> Iterator[StackProcesses]:
    root = tmp_path_factory.mktemp(f"replay-{venue}")
    capture = shared_data / CAPTURES[venue][0]
    env = stack_env(root, SURGE_SOURCE=f"replay:{capture}", SURGE_REPLAY_SPEED="max",
                    SURGE_VENUE=venue, SURGE_SYMBOLS="BTCUSDT", SURGE_DECISION_HORIZONS="5",
                    SURGE_TAU_A="0", SURGE_KAPPA_A="-1000000", SURGE_COOLDOWN_LOW_VOL_S="60",
                    SURGE_COOLDOWN_MEDIUM_VOL_S="60", SURGE_COOLDOWN_HIGH_VOL_S="60",
                    # The risk machine out of reach: the live decision stage reads it from Redis a moment after
                    # the outcomes stage writes it, the backtest at once, and the parity test compares decisions.
                    SURGE_RISK_LOSS_STREAKS="1000000,1000000,1000000", SURGE_RISK_DRAWDOWNS="0.97,0.98,0.99")
    handle = StackProcesses(root=root, env=env)
    log = (root / "surge-run.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield handle
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait(10)
        log.close()


def outcomes(stack: StackProcesses) -> list[dict[str, Any]]:
    try:
        return stack.warehouse_rows(
            "SELECT signal_id, decision, label, entry_price, exit_price, entry_us, exit_us, horizon_min, "
            "upper_barrier_bps, lower_barrier_bps, realized_cost_bps, estimated_cost_bps "
            "FROM surge.outcomes FINAL ORDER BY entry_us")
    except Exception:  # the warehouse may not be up yet
        return []


def test_a_real_capture_yields_signals_outcomes_and_live_metrics(replay_run: StackProcesses, shared_data: Path,
                                                                venue: str) -> None:
    """Tried: the 5.8 minutes of spot BTCUSDT and the 5.7 minutes of USD-M BTCUSDT of 2024-08-08, each replayed
    at full speed through every stage."""
    capture, least_cost_bps = CAPTURES[venue]
    wait_for(lambda: len(outcomes(replay_run)) >= 1, 300, "the first resolved outcome", interval_s=2.0)
    rows = outcomes(replay_run)

    def stored_signals() -> dict[str, dict[str, Any]]:
        return {r["signal_id"]: r for r in replay_run.warehouse_rows(
            "SELECT signal_id, decision, price, cost_model_version FROM surge.signals FINAL")}

    # The sink stores signals.v1 and outcomes.v1 in flushes of their own: an outcome's signal may land a moment
    # after it. Every one of these outcomes' signals must be stored (waited for, then read).
    wait_for(lambda: all(r["signal_id"] in stored_signals() for r in rows), 60, "the outcomes' signals stored",
             interval_s=1.0)
    signals = stored_signals()
    trades = capture_trades(shared_data / capture)
    assert rows
    for r in rows:
        label, exit_price = oracle(trades, r)
        assert (r["label"], r["exit_price"]) == (label, exit_price), r
        assert signals[str(r["signal_id"])]["price"] == r["entry_price"]
        assert float(r["realized_cost_bps"]) >= least_cost_bps  # the two taker fees alone
    assert all(str(s["cost_model_version"]).startswith("cost-v3/") for s in signals.values())
    metrics = httpx.get(f"http://127.0.0.1:{replay_run.settings.stage_port('outcomes')}/metrics", timeout=5).text
    assert 'surge_live_quality{metric="n",stage="outcomes"}' in metrics
    assert "surge_outcomes_paper_equity" in metrics and "surge_risk_level" in metrics


def test_the_backtest_of_the_same_capture_gives_the_same_signals(replay_run: StackProcesses, shared_data: Path,
                                                                  venue: str) -> None:
    """Parity through the whole `surge run` (five processes over the broker): `surge backtest`'s engine on the
    same capture with the same settings and model yields the same signal ids, decisions and tiers as the live
    pipeline stored in ClickHouse (waited for until the replay has drained, then compared exactly)."""
    from services.backtest.engine import BacktestConfig, run_captures

    settings = replay_run.settings
    model = Path(replay_run.env["SURGE_MODEL_DIR"])
    result = run_captures(BacktestConfig(data=(shared_data / CAPTURES[venue][0],), model_dir=model, use_risk=False),
                          settings)
    expected = sorted((s.signal_id, signal_name(s.decision), tier_name(s.tier)) for s in result.signals)
    assert expected, "the backtest made no signal on the capture"

    def live() -> list[tuple[str, str, str]]:
        return sorted((str(r["signal_id"]), str(r["decision"]), str(r["tier"])) for r in replay_run.warehouse_rows(
            "SELECT signal_id, decision, tier FROM surge.signals FINAL"))

    wait_for(lambda: live() == expected, 240, "the live pipeline's signals to equal the backtest's",
             interval_s=2.0, context=lambda: f"live {len(live())} vs backtest {len(expected)}: "
                                            f"{sorted(set(live()) ^ set(expected))[:10]}")


def signal_name(decision: int) -> str:
    from schemas import signal_pb2

    return str(signal_pb2.Decision.Name(decision))


def tier_name(tier: int) -> str:
    from schemas import signal_pb2

    return str(signal_pb2.Tier.Name(tier))

