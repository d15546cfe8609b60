"""Backtest engine: timing wheel, matching, the bar fill model on hand-computed scenarios, metrics, no look-ahead."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas import SCHEMA_VERSION, common_pb2, market_pb2, prediction_pb2
from services.backtest import matching as mt
from services.backtest import metrics
from services.backtest.engine import BacktestConfig, Pipeline, Simulation, run_klines, simulate_bars
from services.backtest.wheel import TimingWheel, parse_latency
from streams.infer.artifacts import shipped
from streams.infer.model import load_model
from streams.runtime.settings import Settings

pytestmark = pytest.mark.unit

MIN = 60_000_000
T0 = 1_780_000_020 * 1_000_000 // MIN * MIN  # a minute boundary


# --- timing wheel --------------------------------------------------------------------------------------------------


def test_wheel_releases_in_due_order_never_early() -> None:
    wheel: TimingWheel[str] = TimingWheel(slots=8)
    wheel.schedule(1_035_000, "c")
    wheel.schedule(1_005_000, "a")
    wheel.schedule(1_020_000, "b")
    wheel.schedule(1_020_000, "b2")          # same time: insertion order
    assert wheel.pop_due(1_004_999) == []
    assert wheel.pop_due(1_020_000) == ["a", "b", "b2"]
    assert len(wheel) == 1
    assert wheel.pop_due(1_034_999) == []    # inside c's 10 ms tick but before it
    assert wheel.pop_due(1_035_000) == ["c"]


def test_wheel_overflow_beyond_its_span() -> None:
    wheel: TimingWheel[int] = TimingWheel(slots=4)   # 40 ms span
    for i, due in enumerate((0, 500_000, 30_000, 120_000, 45_000)):
        wheel.schedule(due, i)
    assert wheel.pop_due(50_000) == [0, 2, 4]
    assert wheel.pop_due(119_999) == []
    assert wheel.pop_due(10_000_000) == [3, 1]
    assert len(wheel) == 0


def test_latency_distributions_are_seeded_and_on_the_10ms_grid() -> None:
    lat = parse_latency("uniform:10-100")
    a = [lat.sampler(7).sample_us() for _ in range(1)]
    s1, s2 = lat.sampler(7), lat.sampler(7)
    xs = [s1.sample_us() for _ in range(1000)]
    assert xs == [s2.sample_us() for _ in range(1000)]
    assert a[0] == xs[0]
    assert min(xs) >= 10_000 and max(xs) <= 100_000
    assert all(x % 10_000 == 0 for x in xs)
    assert parse_latency("50").sampler(1).sample_us() == 50_000
    assert parse_latency("fixed:0").sampler(1).sample_us() == 0
    with pytest.raises(ValueError):
        parse_latency("uniform:100-10")
    with pytest.raises(ValueError):
        parse_latency("poisson:3")


# --- matching ----------------------------------------------------------------------------------------------------


FEES = mt.Fees(taker_bps=5.0, maker_bps=2.0)


def test_market_order_walks_levels_partially_fills_and_pays_taker() -> None:
    book = mt.Book()
    book.replace(bids=[(99.0, 1.0)], asks=[(100.0, 1.0), (101.0, 2.0), (102.0, 5.0)], t_us=0)
    conservative = mt.mode_of("conservative")   # 2 levels
    fill = mt.market_fill(book, mt.BUY, 4.0, 10, conservative, 0.0, FEES)
    assert fill is not None
    # 1 @ 100 + 2 @ 101 = 302 for 3: the third level is out of reach, 1 of 4 unfilled
    assert fill.qty == pytest.approx(3.0)
    assert fill.price == pytest.approx(302.0 / 3.0)
    assert fill.fee == pytest.approx(302.0 * 5.0 / 1e4)
    assert fill.levels == 2
    # liquidity taken stays taken until the next snapshot
    again = mt.market_fill(book, mt.BUY, 1.0, 20, mt.mode_of("aggressive"), 0.0, FEES)
    assert again is not None and again.price == pytest.approx(102.0)
    book.replace(bids=[(99.0, 1.0)], asks=[(100.0, 1.0)], t_us=30)
    assert mt.market_fill(book, mt.BUY, 1.0, 40, conservative, 0.0, FEES).price == pytest.approx(100.0)  # type: ignore[union-attr]


def test_a_recorded_snapshot_fills_as_its_tuples_do_and_replaces_what_was_taken() -> None:
    """The capture's PriceLevel messages, kept as they are until an order needs them (``replace_recorded``)."""
    snapshot = market_pb2.BookSnapshot(bids=[market_pb2.PriceLevel(price=99.0, qty=1.0)],
                                       asks=[market_pb2.PriceLevel(price=100.0, qty=1.0),
                                             market_pb2.PriceLevel(price=101.0, qty=2.0)])
    recorded, plain = mt.Book(), mt.Book()
    recorded.replace_recorded(snapshot.bids, snapshot.asks, 5)
    plain.replace([(99.0, 1.0)], [(100.0, 1.0), (101.0, 2.0)], 5)
    assert not recorded.empty() and recorded.mid() == plain.mid() == 99.5
    assert recorded.qty_at(mt.SELL, 101.0) == 2.0 and recorded.touch(mt.BUY) == 100.0
    neutral = mt.mode_of("neutral")
    assert mt.market_fill(recorded, mt.BUY, 2.0, 10, neutral, 0.0, FEES) == \
        mt.market_fill(plain, mt.BUY, 2.0, 10, neutral, 0.0, FEES)
    assert recorded.taken == {(mt.BUY, 100.0): 1.0, (mt.BUY, 101.0): 1.0}
    recorded.replace_recorded(snapshot.bids, snapshot.asks, 20)  # the next snapshot: nothing taken any more
    assert recorded.taken == {} and recorded.asks == [(100.0, 1.0), (101.0, 2.0)]
    empty = mt.Book()
    empty.replace_recorded(market_pb2.BookSnapshot().bids, snapshot.asks, 30)
    assert empty.empty() and empty.mid() == 0.0


def test_slippage_quantile_floor_applies_when_the_walk_is_better() -> None:
    book = mt.Book()
    book.replace(bids=[(100.0, 10.0)], asks=[(100.02, 10.0)], t_us=0)
    fill = mt.market_fill(book, mt.SELL, 1.0, 0, mt.mode_of("neutral"), 3.0, FEES)
    assert fill is not None
    assert fill.price == pytest.approx(100.0 * (1 - 3.0 / 1e4))   # the touch moved 3 bps against the seller


def test_resting_limit_is_price_time() -> None:
    lim = mt.RestingLimit(side=mt.SELL, price=101.0, qty=2.0, ahead=3.0)
    assert lim.on_trade(100.5, 10.0) == 0.0           # below our price: nothing
    assert lim.on_trade(101.0, 2.0) == 0.0            # eats the queue ahead (3 -> 1)
    assert lim.ahead == pytest.approx(1.0)
    assert lim.on_trade(101.0, 1.5) == pytest.approx(0.5)   # 1 ahead, then 0.5 for us: a partial fill
    assert lim.on_trade(101.5, 0.1) == pytest.approx(1.5)   # traded through: the rest is filled
    assert lim.on_trade(102.0, 1.0) == 0.0


def test_bar_fill_model() -> None:
    bar = mt.Bar(0, open=100.0, high=101.0, low=99.0, close=100.5, volume=50.0)
    cons, aggr = mt.mode_of("conservative"), mt.mode_of("aggressive")
    f = mt.bar_market_fill(bar, mt.BUY, 1.0, 0, cons, 2.0, FEES)
    assert f is not None and f.qty == pytest.approx(0.5)     # 1 % of the bar's 50: partial
    assert f.price == pytest.approx(100.0 * 1.0002)
    stop = mt.bar_market_fill(bar, mt.SELL, 1.0, 0, aggr, 0.0, FEES, reference=99.5)
    assert stop is not None and stop.price == pytest.approx(99.5)
    gap = mt.bar_market_fill(bar, mt.SELL, 1.0, 0, aggr, 0.0, FEES, reference=100.5)   # opened below the stop
    assert gap is not None and gap.price == pytest.approx(100.0)
    assert not mt.bar_limit_reached(bar, mt.SELL, 101.0, cons)   # touched, not traded through
    assert mt.bar_limit_reached(bar, mt.SELL, 101.0, aggr)
    assert mt.bar_stop_reached(bar, mt.SELL, 99.0)


# --- hand-computed bar scenarios through the decision core ---------------------------------------------------------


def _settings() -> Settings:
    # Tier B for any p_up >= 0.5 with positive utility; only the 5-minute horizon.
    return Settings.model_construct(tau_a=0.99, kappa_a=1e6, tau_b=0.5, kappa_b=-1e6, decision_horizons="5")


def _prediction(close_us: int, price: float, p_up: float, symbol: str = "TESTUSDT") -> prediction_pb2.Prediction:
    p = prediction_pb2.Prediction(schema_version=SCHEMA_VERSION, prediction_id=f"{symbol}:{close_us}:m",
                                  venue=common_pb2.BINANCE_SPOT, symbol=symbol, model_version="m",
                                  feature_version="f", regime="", mid_price=price, spread_bps=1.0)
    p.horizons.add(horizon_min=5, p_up=p_up, upper_barrier_bps=60.0, lower_barrier_bps=40.0,
                   timeout_counts_as_not_up=True)
    p.ts.exchange_us = close_us
    return p


def _bars(rows: list[tuple[float, float, float, float]], symbol: str = "TESTUSDT") -> pd.DataFrame:
    return pd.DataFrame({"symbol": symbol, "ts": [(T0 + i * MIN) // 1000 for i in range(len(rows))],
                         "open": [r[0] for r in rows], "high": [r[1] for r in rows], "low": [r[2] for r in rows],
                         "close": [r[3] for r in rows], "volume": 1e6})


def _sim(mode: str = "conservative", latency: str = "fixed:50") -> Simulation:
    settings = _settings()
    cfg = BacktestConfig(data=(), model_dir=shipped("btcusdt-klines"), mode=mode, latency=latency,
                         slippage_bps=2.0, kline_spread_bps=1.0)
    return Simulation(cfg, settings, Pipeline(settings, load_model(cfg.model_dir)), "spot")


def test_bar_long_hits_target_hand_computed() -> None:
    sim = _sim()
    frame = _bars([(100.0, 100.0, 100.0, 100.0),     # bar 0: the signal at its close, price 100
                   (100.1, 100.5, 99.9, 100.3),      # bar 1: entry at its open or worse
                   (100.3, 100.7, 100.2, 100.6)])    # bar 2: trades through the target 100.6
    preds = {f"TESTUSDT:{T0 + MIN}": _prediction(T0 + MIN, 100.0, 0.9)}
    res = simulate_bars(sim, frame, preds)
    assert len(res.trades) == 1
    t = res.trades.iloc[0]
    # Sizing: 10 % of 100,000 at the signal's price 100 -> 100 units. Entry: 100.1 x (1 + (2 + 1/2) / 1e4).
    entry = 100.1 * (1 + 2.5e-4)
    assert t["qty"] == pytest.approx(100.0)
    assert t["entry_price"] == pytest.approx(entry)
    assert t["entry_us"] == T0 + MIN + 50_000                   # latency 50 ms after the signal
    # Target 100 x 1.006 = 100.6 is a resting limit: filled at its price, maker fee (spot 10 bps).
    assert t["exit_reason"] == "target"
    assert t["exit_price"] == pytest.approx(100.6)
    fees = 100 * entry * 10 / 1e4 + 100 * 100.6 * 10 / 1e4
    assert t["fees"] == pytest.approx(fees)
    assert t["net_pnl"] == pytest.approx(100 * (100.6 - entry) - fees)   # 47.4975 - 20.0725 = 27.425
    assert t["net_pnl"] == pytest.approx(27.4249975)
    assert res.equity["equity"].iloc[-1] == pytest.approx(100_000 + 27.4249975)
    assert res.book.risk_state.outcomes == 1 and res.book.risk_state.consecutive_wins == 1


def test_bar_short_not_priced_and_stop_with_gap_hand_computed() -> None:
    sim = _sim(mode="aggressive")
    frame = _bars([(100.0, 100.0, 100.0, 100.0),
                   (100.0, 100.2, 99.8, 100.0),      # entry at 100 x 1.00025 = 100.025
                   (99.5, 99.7, 99.2, 99.3)])        # opens below the stop 99.6: fills at the open 99.5, worse
    preds = {f"TESTUSDT:{T0 + MIN}": _prediction(T0 + MIN, 100.0, 0.9)}
    res = simulate_bars(sim, frame, preds)
    t = res.trades.iloc[0]
    assert t["exit_reason"] == "stop"
    exit_price = 99.5 * (1 - 2.5e-4)
    assert t["exit_price"] == pytest.approx(exit_price)
    entry = 100.0 * (1 + 2.5e-4)
    fees = 100 * entry * 10 / 1e4 + 100 * exit_price * 10 / 1e4
    assert t["net_pnl"] == pytest.approx(100 * (exit_price - entry) - fees)
    assert t["net_bps"] < -40


def test_bar_timeout_exits_at_the_next_open_after_the_deadline() -> None:
    sim = _sim()
    flat = (100.0, 100.1, 99.9, 100.0)
    frame = _bars([flat] * 8)
    preds = {f"TESTUSDT:{T0 + MIN}": _prediction(T0 + MIN, 100.0, 0.9)}
    res = simulate_bars(sim, frame, preds)
    t = res.trades.iloc[0]
    assert t["exit_reason"] == "timeout"
    # signal at the close of bar 0 (T0 + 1 min), 5 min horizon: deadline T0 + 6 min = bar 6's open
    assert t["exit_us"] == T0 + 6 * MIN
    assert t["exit_price"] == pytest.approx(100.0 * (1 - 2.5e-4))
    assert t["hold_s"] == pytest.approx(5 * 60 - 0.05)


def test_risk_state_machine_gates_the_decision_core() -> None:
    """Three stopped-out LONGs: the outcomes risk machine goes CAUTIOUS, and the decision core then allows tier A
    only, so the fourth (tier B) signal is not taken."""
    sim = _sim(mode="aggressive")
    rows: list[tuple[float, float, float, float]] = []
    preds = {}
    for k in range(4):
        base = len(rows)
        rows += [(100.0, 100.0, 100.0, 100.0), (100.0, 100.0, 100.0, 100.0), (100.0, 100.0, 99.0, 99.5)]
        close_us = T0 + (base + 1) * MIN
        preds[f"TESTUSDT:{close_us}"] = _prediction(close_us, 100.0, 0.9)
        rows += [(100.0, 100.0, 100.0, 100.0)] * 10  # past the cooldown (600 s for an unknown regime) ... partly
        del k
    res = simulate_bars(sim, _bars(rows), preds)
    assert res.book.transitions and res.book.transitions[0][1] == "CAUTIOUS"
    assert len(res.trades) == 3
    assert all(r == "stop" for r in res.trades["exit_reason"])


# --- metrics -----------------------------------------------------------------------------------------------------


def test_metrics_hand_computed() -> None:
    t = [T0 + i * 86_400_000_000 for i in range(8)]
    eq = pd.DataFrame({"t_us": t, "equity": [100.0, 110.0, 99.0, 99.0, 108.9, 108.9, 108.9, 108.9]})
    trades = pd.DataFrame({"net_pnl": [10.0, -11.0, 9.9], "gross_pnl": [11.0, -10.0, 11.0], "fees": [1.0, 1.0, 1.1],
                           "net_bps": [100.0, -100.0, 100.0], "entry_slippage_bps": [1.0, 1.0, 1.0],
                           "exit_slippage_bps": [0.0, 2.0, 0.0], "hold_s": [60.0, 120.0, 60.0],
                           "latency_ms": [10.0, 20.0, 30.0], "exit_reason": ["target", "stop", "target"],
                           "entry_us": t[:3], "regime": "", "horizon_min": 5, "p_up": [0.7, 0.6, 0.8],
                           "target_hit": [True, False, True], "decision": "LONG"})
    m = metrics.compute(trades, eq, 100.0, {"wanted_qty": 4.0, "filled_qty": 3.0})
    assert m["total_return"] == pytest.approx(0.089)
    assert m["max_drawdown"] == pytest.approx(0.1)            # 110 -> 99
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx(19.9 / 11.0)
    assert m["avg_win"] == pytest.approx(9.95) and m["avg_loss"] == pytest.approx(-11.0)
    assert m["fill_rate"] == pytest.approx(0.75)
    assert m["avg_slippage_bps"] == pytest.approx(5.0 / 6.0)
    assert m["fees"] == pytest.approx(3.1)
    daily = np.array([0.0, 0.1, -0.1, 0.0, 0.1, 0.0, 0.0, 0.0])  # the first day against the capital
    assert m["sharpe"] == pytest.approx(daily.mean() / daily.std(ddof=1) * math.sqrt(365))
    assert m["latency_ms"]["mean"] == pytest.approx(20.0)


# --- no look-ahead -------------------------------------------------------------------------------------------------


def _write_klines(path: Path, closes: np.ndarray) -> None:
    n = len(closes)
    opens = np.r_[closes[0], closes[:-1]]
    rng = np.random.default_rng(3)
    high = np.maximum(opens, closes) * (1 + rng.uniform(0, 0.002, n))
    low = np.minimum(opens, closes) * (1 - rng.uniform(0, 0.002, n))
    vol = rng.uniform(5, 50, n)
    t = (T0 + np.arange(n) * MIN).astype(np.int64)
    frame = pd.DataFrame({0: t, 1: opens, 2: high, 3: low, 4: closes, 5: vol, 6: t + MIN - 1, 7: vol * closes,
                          8: 100, 9: vol / 2, 10: vol * closes / 2, 11: 0})
    frame.to_csv(path, header=False, index=False)


def test_shuffling_future_bars_changes_nothing_before_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n, cut = 600, 450
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, n)))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _write_klines(a / "TESTUSDT-1m-2026-01.csv", closes)
    shuffled = closes.copy()
    shuffled[cut:] = rng.permutation(closes[cut:])
    _write_klines(b / "TESTUSDT-1m-2026-01.csv", shuffled)
    # Tiny thresholds: the (BTCUSDT) model's p_up decides LONGs on the synthetic bars.
    settings = Settings.model_construct(tau_a=0.0, kappa_a=-1e6, tau_b=0.0, kappa_b=-1e6)  # tier A, even degraded
    results = [run_klines(BacktestConfig(data=(d / "TESTUSDT-1m-2026-01.csv",), model_dir=shipped("btcusdt-klines"),
                                         mode="neutral"), settings) for d in (a, b)]
    cut_us = T0 + cut * MIN
    before = [[(s.signal_id, s.decision, s.tier, s.p_up) for s in r.signals if s.ts.exchange_us <= cut_us]
              for r in results]
    assert before[0], "the scenario must produce signals before the cut"
    assert before[0] == before[1]
    done = [r.trades[r.trades["exit_us"] < cut_us].reset_index(drop=True) for r in results]
    assert len(done[0]) > 0
    pd.testing.assert_frame_equal(done[0], done[1])
    eq = [r.equity[r.equity["t_us"] <= cut_us].reset_index(drop=True) for r in results]
    pd.testing.assert_frame_equal(eq[0], eq[1])
    # and the future did change something after the cut
    assert [s.signal_id for s in results[0].signals] != [s.signal_id for s in results[1].signals] or \
        not results[0].trades.equals(results[1].trades)


def test_cli_writes_the_three_outputs_and_honours_the_window(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    data = tmp_path / "TESTUSDT-1m-2026-01.csv"
    _write_klines(data, 100 * np.exp(np.cumsum(np.random.default_rng(5).normal(0, 0.003, 300))))
    start, end = T0 + 100 * MIN, T0 + 200 * MIN
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["backtest", "--data", str(data), "--out", str(out), "--mode", "neutral",
                                   "--from", str(start), "--to", str(end), "--tau-a", "0", "--kappa-a", "-1000000",
                                   "--no-store"])
    assert res.exit_code == 0, res.output
    import orjson

    report = orjson.loads((out / "report.json").read_bytes())
    assert report["metrics"]["trades"] > 0
    trades = pd.read_parquet(out / "trades.parquet")
    assert trades["signal_us"].between(start, end - 1).all()
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    bad = CliRunner().invoke(app, ["backtest", "--data", str(data), "--out", str(out), "--mode", "fast"])
    assert bad.exit_code == 2


def test_parallel_features_and_inference_give_the_one_process_result(tmp_path: Path) -> None:
    """Tried: two symbols of 4,000 synthetic bars each (8,000 vectors: two inference chunks), backtested in one
    process and with --workers 2 (each symbol's features in its own process, each chunk's inference in one):
    the same signals, trades and equity curve, to the last digit."""
    rng = np.random.default_rng(23)
    for symbol in ("TESTUSDT", "OTHERUSDT"):
        _write_klines(tmp_path / f"{symbol}-1m-2026-01.csv", 100 * np.exp(np.cumsum(rng.normal(0, 0.003, 4_000))))
    settings = Settings.model_construct(tau_a=0.0, kappa_a=-1e6, tau_b=0.0, kappa_b=-1e6)
    results = [run_klines(BacktestConfig(data=(tmp_path,), model_dir=shipped("btcusdt-klines"), mode="neutral",
                                         workers=workers), settings) for workers in (1, 2)]
    one, two = results
    assert one.info["predictions"] == two.info["predictions"] == 8_000
    assert [s.SerializeToString() for s in one.signals] == [s.SerializeToString() for s in two.signals]
    assert len(one.signals) > 0 and {s.symbol for s in one.signals} == {"TESTUSDT", "OTHERUSDT"}
    pd.testing.assert_frame_equal(one.trades, two.trades)
    pd.testing.assert_frame_equal(one.equity, two.equity)
