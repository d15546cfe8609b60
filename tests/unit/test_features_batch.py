"""Unit tests of the batch drivers: klines (formats, exact values, merging), real captures and klines, the CLI."""

from __future__ import annotations

import gzip
import io
import math
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from schemas import features_pb2
from streams.features import definitions as d
from streams.features.batch import (
    capture_batches,
    compute_capture_frame,
    compute_inputs_frame,
    compute_klines_frame,
    read_klines,
)
from streams.features.core import FeatureState, compute_frame, process
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord

pytestmark = pytest.mark.unit

OPEN0_MS = 1_772_323_200_000  # 2026-03-01T00:00:00Z
BOOK_NAMES = ("spread_bps", "qi_l1", "qi_l5", "qi_l10", "microprice_dev", "depth_l10_log", "ofi_1s", "ofi_30s",
              "book_pressure", "spread_bps_mean_1m", "depth_change_1m", "book_age_s")
SUB_BAR = ("ret_1s", "ret_10s", "ret_accel_10s", "trade_imbalance_5s", "trade_imbalance_30s", "vwap_gap_bps_30s",
           "trade_intensity_5s", "coverage_5s", "rv_1m", "rv_5m")


def bars(n: int = 70, seed: int = 1) -> pd.DataFrame:
    """Consistent random 1-minute bars with Binance's 12 columns (times in ms)."""
    rng = random.Random(seed)
    rows = []
    close = 60_000.0
    for k in range(n):
        o = close
        c = round(o * math.exp(rng.gauss(0.0, 6e-4)), 2)
        h = round(max(o, c) * (1 + rng.random() * 4e-4), 2)
        lo = round(min(o, c) * (1 - rng.random() * 4e-4), 2)
        v = round(5 + 20 * rng.random(), 5)
        tb = round(v * rng.random(), 5)
        vwap = (h + lo + c) / 3
        open_ms = OPEN0_MS + k * 60_000
        rows.append([open_ms, o, h, lo, c, v, open_ms + 59_999, round(v * vwap, 4), rng.randint(50, 3000), tb,
                     round(tb * vwap, 4), 0])
        close = c
    return pd.DataFrame(rows, columns=["open_time", "open", "high", "low", "close", "volume", "close_time",
                                       "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume",
                                       "ignore"])


def write_csv(frame: pd.DataFrame, path: Path, *, header: bool, kind: str = "plain") -> Path:
    text = frame.to_csv(index=False, header=header)
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(path.name.replace(".zip", ".csv"), text)
        path.write_bytes(buf.getvalue())
    elif kind == "gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_kline_features_are_exact(tmp_path: Path) -> None:
    raw = bars()
    us = raw.copy()
    us["open_time"] *= 1000  # data.binance.vision spot files are in µs since 2025
    path = write_csv(us, tmp_path / "BTCUSDT-1m-2026-03.zip", header=False, kind="zip")
    frame = compute_klines_frame([path])
    n = len(raw)
    assert len(frame) == n and set(frame["symbol"]) == {"BTCUSDT"}
    assert list(frame["ts"]) == list(raw["open_time"])  # the bar's open time, in ms
    assert list(frame.columns[:2]) == ["symbol", "ts"]
    assert list(frame.columns[2:2 + d.N_FEATURES]) == list(d.FEATURE_NAMES)
    assert list(frame.columns[2 + d.N_FEATURES:]) == ["feature_version", "open", "high", "low", "close", "volume",
                                                       "window_insufficient"]
    h, lo, c, v = (raw[k].to_numpy() for k in ("high", "low", "close", "volume"))
    q, cnt, tb = raw["quote_volume"].to_numpy(), raw["count"].to_numpy(), raw["taker_buy_volume"].to_numpy()
    np.testing.assert_array_equal(frame["close"].to_numpy(), c)
    k = n - 1
    row = frame.iloc[k]
    assert row["ret_60s"] == math.log(c[k] / c[k - 1])
    # Running window sums (add this bar, remove the last): equal up to float rounding.
    assert row["trade_imbalance_1m"] == pytest.approx((tb[k] - (v[k] - tb[k])) / v[k], rel=1e-12)
    assert row["trade_intensity_1m"] == pytest.approx(cnt[k] / 60.0, rel=1e-12)
    assert row["notional_rate_log_1m"] == pytest.approx(math.log(q[k] / 60.0), rel=1e-12)
    assert row["ret_5m"] == math.log(c[k] / c[k - 5])
    assert row["ret_15m"] == math.log(c[k] / c[k - 15])
    assert row["ret_1h"] == math.log(c[k] / c[k - 60])
    assert row["ret_accel_5m"] == math.log(c[k] / c[k - 5]) - math.log(c[k - 5] / c[k - 10])
    hl = sum(math.log(h[j] / lo[j]) ** 2 for j in range(k - 4, k + 1))
    assert row["parkinson_5m"] == pytest.approx(math.sqrt(hl / (4 * math.log(2))), rel=1e-14)
    vwap = q[k - 4:k + 1].sum() / v[k - 4:k + 1].sum()
    assert row["vwap_gap_bps_5m"] == pytest.approx((c[k] - vwap) / vwap * 1e4, rel=1e-12)
    r = np.log(c[k - 59:k + 1] / c[k - 60:k])
    assert row["rv_1h"] == pytest.approx(math.sqrt(float(np.sum(r * r))), rel=1e-12)
    lv = np.log(v[k - 59:k + 1])
    assert row["volume_zscore_1h"] == pytest.approx((lv[-1] - lv.mean()) / lv.std(), rel=1e-9)
    signed = 2 * raw["taker_buy_quote_volume"].to_numpy()[k - 59:k + 1] - q[k - 59:k + 1]
    assert row["kyle_lambda_1h"] == pytest.approx(float(np.sum(r * signed) / np.sum(signed ** 2)) * 1e10, rel=1e-9)
    assert row["amihud_1h"] == pytest.approx(float(np.mean(np.abs(r) / q[k - 59:k + 1])) * 1e10, rel=1e-9)
    assert (row["coverage_1m"], row["coverage_1h"], row["quality_score"]) == (1.0, 1.0, 1.0)
    # No book and no sub-minute resolution: NaN, and not counted as insufficient.
    for name in (*BOOK_NAMES, *SUB_BAR, "hawkes_buy_intensity", "trade_sign_imbalance_1m", "time_since_trade_s",
                 "funding_rate_bps"):
        assert frame[name].isna().all(), name
    assert not row["window_insufficient"] and frame["window_insufficient"].iloc[:60].all()
    assert (frame["feature_age_medium_s"] == 0.0).all()  # every bar closes a second and a 5 s block
    assert math.isnan(frame["ret_60s"].iloc[0])


def test_kline_formats_agree(tmp_path: Path) -> None:
    raw = bars(30, seed=2)
    us = raw.copy()
    us["open_time"] *= 1000
    a = compute_klines_frame([write_csv(us, tmp_path / "ETHUSDT-1m-a.zip", header=False, kind="zip")])
    b = compute_klines_frame([write_csv(raw, tmp_path / "ETHUSDT-1m-b.csv.gz", header=True, kind="gz")])
    c = compute_klines_frame([write_csv(raw, tmp_path / "x.csv", header=False)], symbol="ethusdt")
    for other in (b, c):
        pd.testing.assert_frame_equal(a, other)


def test_ohlcv_only_klines_have_no_flow_features(tmp_path: Path) -> None:
    raw = bars(70, seed=3)[["open_time", "open", "high", "low", "close", "volume"]]
    frame = compute_klines_frame([write_csv(raw, tmp_path / "BTCUSDT-1m-ohlcv.csv.gz", header=True, kind="gz")])
    last = frame.iloc[-1]
    for name in ("trade_imbalance_1m", "trade_intensity_1m", "notional_rate_log_1m", "vwap_gap_bps_5m",
                 "kyle_lambda_1h", "amihud_1h"):
        assert math.isnan(last[name]), name
    for name in ("ret_60s", "ret_5m", "rv_1h", "parkinson_1h", "volume_zscore_1h", "price_zscore_1h"):
        assert not math.isnan(last[name]), name
    assert not last["window_insufficient"] and last["quality_score"] == 1.0


def test_overlapping_files_prefer_full_rows_and_bad_rows_are_dropped(tmp_path: Path) -> None:
    raw = bars(40, seed=4)
    full = write_csv(raw.iloc[:30], tmp_path / "BTCUSDT-1m-full.csv", header=True)
    ohlcv = raw.iloc[20:][["open_time", "open", "high", "low", "close", "volume"]].copy()
    ohlcv.loc[ohlcv.index[-1], "high"] = ohlcv["low"].iloc[-1] / 2  # high below low: not a bar
    part = write_csv(ohlcv, tmp_path / "BTCUSDT-1m-ohlcv.csv", header=True)
    assert read_klines(part).attrs["dropped"] == 1
    frame = compute_klines_frame([part, full])
    assert len(frame) == 39 and frame["ts"].is_monotonic_increasing
    assert frame["trade_intensity_1m"].iloc[:30].notna().all()  # minutes 20..29 come from the 12-column file
    assert frame["trade_intensity_1m"].iloc[30:].isna().all()
    with pytest.raises(ValueError, match="columns"):
        read_klines(write_csv(raw.iloc[:, :4], tmp_path / "bad.csv", header=True))


def test_cli_compute_writes_parquet(tmp_path: Path) -> None:
    from services.cli import app

    path = write_csv(bars(20, seed=5), tmp_path / "SOLUSDT-1m-2026-03.csv", header=False)
    out = tmp_path / "out" / "features.parquet"
    result = CliRunner().invoke(app, ["features", "compute", "--input", str(path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert len(frame) == 20 and set(frame["feature_version"]) == {d.FEATURE_VERSION}
    pd.testing.assert_frame_equal(frame, compute_klines_frame([path]), check_dtype=False)
    missing = CliRunner().invoke(app, ["features", "compute", "--input", str(tmp_path / "nope"), "--output",
                                       str(out)])
    assert missing.exit_code == 2
    with pytest.raises(ValueError, match="mixing"):
        compute_inputs_frame([path, tmp_path / "capture.gz"])


# --- real data -------------------------------------------------------------------------------------------------


def test_three_months_of_real_btcusdt_klines_in_seconds(shared_data: Path) -> None:
    paths = [shared_data / f"klines_1m/BTCUSDT-1m-2026-0{m}.zip" for m in (3, 4, 5)]
    started = time.perf_counter()
    frame = compute_klines_frame(paths)
    took = time.perf_counter() - started
    print(f"\n92 days of 1-minute klines: {len(frame)} rows in {took:.2f}s")
    assert took < 60.0
    assert len(frame) == 132_480 and frame["ts"].is_unique and frame["ts"].is_monotonic_increasing
    assert frame["ts"].iloc[0] == OPEN0_MS and (frame["ts"].diff().iloc[1:] == 60_000).all()
    # PROVENANCE: complete, consistent data; once an hour of history exists every kline feature has a value.
    assert not frame["window_insufficient"].iloc[60:].any()
    raw = read_klines(paths[1])
    k = 1_000
    row = frame[frame["ts"] == raw["open_us"].iloc[k] // 1000].iloc[0]
    c, v, tb = raw["close"].to_numpy(), raw["volume"].to_numpy(), raw["taker_base"].to_numpy()
    assert row["ret_5m"] == math.log(c[k] / c[k - 5])
    assert row["trade_imbalance_1m"] == pytest.approx((tb[k] - (v[k] - tb[k])) / v[k], rel=1e-9)


def test_a_real_usdm_capture_gives_the_stage_vectors(shared_data: Path) -> None:
    paths = [shared_data / "ws_messages/hftbacktest/usdm/btcusdt_20230404.dat.gz",
             shared_data / "ws_messages/hftbacktest/usdm/btcusdt_20230405.dat.gz"]
    batches = list(capture_batches(paths))
    assert len(batches) > 10_000
    frame = compute_frame(batches)
    # The stage's vectors, consumed in arbitrary micro-batches, are the same numbers.
    state, clock = FeatureState(), ManualClock()
    streamed: list[features_pb2.FeatureVector] = []
    rng = random.Random(7)
    i = 0
    while i < len(batches):
        j = min(len(batches), i + rng.randint(1, 500))
        out = process([InRecord(value=b, key=b.symbol) for b in batches[i:j]], state, clock)
        streamed += [e.value for e in out.emits if isinstance(e.value, features_pb2.FeatureVector)]
        i = j
    assert [v.vector_id for v in streamed] == list(frame["vector_id"])
    np.testing.assert_array_equal(np.array([list(v.values) for v in streamed]),
                                  frame[list(d.FEATURE_NAMES)].to_numpy())
    last = frame.iloc[-1]
    assert last["funding_rate_bps"] == pytest.approx(0.2754, abs=0.5)  # markPrice@1s "r" ~ 0.00002754
    assert not math.isnan(last["basis_bps"]) and not math.isnan(last["rv_5m"])
    # The capture frame: one row per (symbol, ts), the state after every event up to ts.
    cap = compute_capture_frame(paths)
    assert cap["ts"].is_monotonic_increasing and not cap.duplicated(["symbol", "ts"]).any()
    assert set(cap["vector_id"]) <= set(frame["vector_id"]) and len(cap) > 0.5 * len(frame)
