"""A plain-numpy oracle for the kernel's windows: every feature recomputed from the full history per row.

The kernel keeps O(1) running state; this module recomputes each window from scratch with numpy slices over
per-batch arrays (the obvious, slow way). It checks the windowing of the kernel (which samples are inside,
coverage, outages, references, minute buckets) on random streams, and is the "plain-numpy recompute" baseline of
the features benchmark. Arithmetic goes through the same formula functions: the formulas themselves are
checked with exact hand-computed values elsewhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from schemas import market_pb2
from streams.features import definitions as d
from streams.features.core import compute_frame
from streams.features.rows import parse_batch
from tests.unit.test_features_core import T0, tick_batch

pytestmark = pytest.mark.unit

US = 1_000_000
FloatArray = d.FloatArray


@dataclass
class Table:
    """Per-batch columns of one symbol, as the kernel sees them."""

    t: d.IntArray
    book: npt.NDArray[np.bool_]
    mid: FloatArray
    bid: FloatArray
    bid_qty: FloatArray
    ask: FloatArray
    ask_qty: FloatArray
    depth: FloatArray
    spread: FloatArray
    buy: FloatArray
    sell: FloatArray
    nbuy: FloatArray
    nsell: FloatArray
    trades: FloatArray
    notional: FloatArray
    buy_notional: FloatArray
    volume: FloatArray
    cov: FloatArray
    ofi: FloatArray


def table_of(batches: Sequence[market_pb2.TickBatch]) -> Table:
    """Columns of consecutive batches of one symbol (no sequence breaks)."""
    parsed = [parse_batch(tb) for tb in batches]
    n = len(parsed)
    cols = {k: np.full(n, np.nan) for k in ("mid", "bid", "bid_qty", "ask", "ask_qty", "depth", "spread")}
    flow = {k: np.zeros(n) for k in ("buy", "sell", "nbuy", "nsell", "trades", "notional", "buy_notional",
                                     "volume", "cov", "ofi")}
    t = np.zeros(n, np.int64)
    book = np.zeros(n, bool)
    last_t = 0
    last_valid = -1
    prev: tuple[float, float, float, float] | None = None
    for i, p in enumerate(parsed):
        last_t = max(last_t, p.t_us)
        t[i] = last_t
        for _, price, qty, sold in p.trades:
            flow["trades"][i] += 1
            flow["notional"][i] += price * qty
            flow["volume"][i] += qty
            if sold:
                flow["sell"][i] += qty
                flow["nsell"][i] += 1
            else:
                flow["buy"][i] += qty
                flow["nbuy"][i] += 1
                flow["buy_notional"][i] += price * qty
        if p.book is None:
            prev, last_valid = None, -1
            continue
        book[i] = True
        (bid, bq), (ask, aq) = p.book.bids[0], p.book.asks[0]
        cols["bid"][i], cols["bid_qty"][i], cols["ask"][i], cols["ask_qty"][i] = bid, bq, ask, aq
        cols["mid"][i] = d.mid_price(bid, ask)
        cols["spread"][i] = d.spread_bps(bid, ask)
        qty10 = sum(q for _, q in p.book.bids[:10]) + sum(q for _, q in p.book.asks[:10])
        cols["depth"][i] = d.depth_log(qty10)
        gap = last_t - last_valid if last_valid >= 0 else d.MAX_SAMPLE_GAP_US + 1
        in_stream = gap <= d.MAX_SAMPLE_GAP_US
        flow["cov"][i] = gap if in_stream else 0.0
        if prev is not None and in_stream:
            flow["ofi"][i] = d.ofi_increment(prev, (bid, bq, ask, aq))
        prev, last_valid = (bid, bq, ask, aq), last_t
    return Table(t=t, book=book, **cols, **flow)


def window(tab: Table, k: int, width_us: int) -> slice:
    """Rows with time in (t_k - width, t_k]."""
    lo = int(np.searchsorted(tab.t, tab.t[k] - width_us, side="right"))
    return slice(lo, k + 1)


def covered_us(tab: Table, k: int, width_us: int) -> float:
    sl = window(tab, k, width_us)
    cov = tab.cov[sl]
    vouching = np.flatnonzero(cov > 0)
    if not len(vouching):
        return 0.0
    first = sl.start + int(vouching[0])
    c = tab.cov[first]
    inside = float(tab.t[first] - (tab.t[k] - width_us))
    return float(cov.sum() - c + min(c, inside))


def reference(tab: Table, k: int, width_us: int) -> float:
    lo = window(tab, k, width_us).start - 1
    if lo < 0 or tab.t[lo] < tab.t[k] - width_us - d.MAX_SAMPLE_GAP_US:
        return math.nan
    return float(tab.mid[lo])


def fine_features(tab: Table, k: int) -> dict[str, float]:
    """The fine-window features at row k, recomputed from scratch."""
    out: dict[str, float] = {}
    w = {s: window(tab, k, s * US) for s in (1, 5, 10, 20, 30, 60)}
    cov = {s: covered_us(tab, k, s * US) for s in w}
    ok = {s: cov[s] >= d.MIN_WINDOW_COVERAGE * s * US for s in w}
    nan = math.nan

    def ofi(s: int) -> float:
        sl = w[s]
        top = (tab.bid_qty[sl] + tab.ask_qty[sl]) / 2.0
        return d.ofi_normalised(tab.ofi[sl].sum(), np.nansum(top), float(tab.book[sl].sum())) if ok[s] else nan

    def ti(s: int) -> float:
        sl = w[s]
        return d.trade_imbalance(tab.buy[sl].sum(), tab.sell[sl].sum(), tab.trades[sl].sum()) if ok[s] else nan

    out["ofi_1s"], out["ofi_5s"], out["ofi_30s"] = ofi(1), ofi(5), ofi(30)
    out["trade_imbalance_5s"], out["trade_imbalance_30s"], out["trade_imbalance_1m"] = ti(5), ti(30), ti(60)
    out["trade_intensity_5s"] = d.trade_intensity(tab.trades[w[5]].sum(), cov[5] / 1e6) if ok[5] else nan
    out["trade_intensity_1m"] = d.trade_intensity(tab.trades[w[60]].sum(), cov[60] / 1e6) if ok[60] else nan
    out["trade_sign_imbalance_5s"] = d.count_imbalance(tab.nbuy[w[5]].sum(), tab.nsell[w[5]].sum()) if ok[5] else nan
    out["buy_intensity_5s"] = d.trade_intensity(tab.nbuy[w[5]].sum(), cov[5] / 1e6) if ok[5] else nan
    out["notional_rate_log_1m"] = d.log_rate(tab.notional[w[60]].sum(), cov[60] / 1e6) if ok[60] else nan
    out["spread_bps_mean_1m"] = d.mean_of(np.nansum(tab.spread[w[60]]), float(tab.book[w[60]].sum())) \
        if ok[60] else nan
    mid = float(tab.mid[k])
    for s, name in ((1, "ret_1s"), (10, "ret_10s"), (60, "ret_60s")):
        ref = reference(tab, k, s * US)
        out[name] = d.log_return(mid, ref) if ok[s] and not math.isnan(mid) and not math.isnan(ref) else nan
    r10, r20 = reference(tab, k, 10 * US), reference(tab, k, 20 * US)
    valid = ok[10] and ok[20] and not (math.isnan(mid) or math.isnan(r10) or math.isnan(r20))
    out["ret_accel_10s"] = d.acceleration(mid, r10, r20) if valid else nan
    sl30 = w[30]
    vwap_ok = ok[30] and not math.isnan(mid)
    out["vwap_gap_bps_30s"] = d.vwap_gap_bps(mid, tab.notional[sl30].sum(), tab.volume[sl30].sum(),
                                             tab.trades[sl30].sum()) if vwap_ok else nan
    lo60 = w[60].start - 1
    ref_ok = lo60 >= 0 and tab.t[lo60] >= tab.t[k] - 61 * US
    out["depth_change_1m"] = d.difference(tab.depth[k], tab.depth[lo60]) if ok[60] and ref_ok else nan
    out["coverage_5s"] = d.fraction(cov[5], 5 * US)
    out["coverage_1m"] = d.fraction(cov[60], 60 * US)
    return out


def minute_buckets(tab: Table) -> dict[int, dict[str, float]]:
    """Completed-or-not minute buckets: OHLC of the mids, coverage and flow sums."""
    out: dict[int, dict[str, float]] = {}
    for i in range(len(tab.t)):
        m = int(tab.t[i] // (60 * US))
        b = out.setdefault(m, {"open": math.nan, "high": -math.inf, "low": math.inf, "close": math.nan, "cov": 0.0,
                               "notional": 0.0, "buy_notional": 0.0, "volume": 0.0, "trades": 0.0})
        if tab.book[i]:
            if math.isnan(b["open"]):
                b["open"] = float(tab.mid[i])
            b["high"] = max(b["high"], float(tab.mid[i]))
            b["low"] = min(b["low"], float(tab.mid[i]))
            b["close"] = float(tab.mid[i])
        b["cov"] += float(tab.cov[i])
        for k in ("notional", "buy_notional", "volume", "trades"):
            b[k] += float(getattr(tab, k)[i])
    return out


def minute_features(buckets: dict[int, dict[str, float]], last: int) -> dict[str, float]:
    """Minute-grid features over the completed minutes up to ``last``, recomputed from scratch."""

    def valid(m: int) -> bool:
        b = buckets.get(m)
        return b is not None and not math.isnan(b["close"]) and b["cov"] >= 30 * US

    def close(m: int) -> float:
        return buckets[m]["close"]

    def ret(m: int) -> float:
        return d.log_return(close(m), close(m - 1)) if valid(m) and valid(m - 1) else math.nan

    def n_valid(n: int) -> int:
        return sum(valid(m) for m in range(last - n + 1, last + 1))

    def mret(n: int) -> float:
        if not (valid(last) and valid(last - n)) or n_valid(n) < n / 2:
            return math.nan
        return d.log_return(close(last), close(last - n))

    out = {"ret_5m": mret(5), "ret_15m": mret(15), "ret_1h": mret(60)}
    hl = [d.log_return(buckets[m]["high"], buckets[m]["low"]) ** 2 for m in range(last - 4, last + 1) if valid(m)]
    out["parkinson_5m"] = d.parkinson_vol(sum(hl), len(hl), 5) if len(hl) >= 2.5 else math.nan
    hl60 = [d.log_return(buckets[m]["high"], buckets[m]["low"]) ** 2 for m in range(last - 59, last + 1) if valid(m)]
    out["parkinson_1h"] = d.parkinson_vol(sum(hl60), len(hl60), 60) if len(hl60) >= 30 else math.nan
    rs = np.array([ret(m) for m in range(last - 59, last + 1)])
    good = ~np.isnan(rs)
    r2 = float(np.sum(rs[good] ** 2))
    out["rv_1h"] = d.realized_vol(r2, int(good.sum()), 60) if good.sum() >= 30 else math.nan
    r5 = rs[55:][~np.isnan(rs[55:])]
    out["rv_ratio_5m_1h"] = d.vol_ratio(float(np.sum(r5 ** 2)), len(r5), r2, int(good.sum())) \
        if good.sum() >= 30 and len(r5) >= 2.5 else math.nan
    sums5 = np.array([rs[j - 4:j + 1].sum() for j in range(4, 60)])
    sums5 = sums5[~np.isnan(sums5)]
    out["variance_ratio_1h"] = d.variance_ratio(float(np.sum(sums5 ** 2)), len(sums5), r2, int(good.sum()), 5) \
        if good.sum() >= 30 and len(sums5) >= 28 else math.nan
    q = np.array([2 * buckets[m]["buy_notional"] - buckets[m]["notional"] if valid(m) else math.nan
                  for m in range(last - 59, last + 1)])
    out["kyle_lambda_1h"] = d.kyle_lambda(float(np.sum(rs[good] * q[good])), float(np.sum(q[good] ** 2))) \
        if good.sum() >= 30 else math.nan
    notional = np.array([buckets[m]["notional"] if valid(m) else math.nan for m in range(last - 59, last + 1)])
    am = good & (notional > 0)
    out["amihud_1h"] = d.amihud(float(np.sum(np.abs(rs[am]) / notional[am])), int(am.sum())) \
        if am.sum() >= 30 else math.nan
    b5 = [buckets[m] for m in range(last - 4, last + 1) if valid(m)]
    out["vwap_gap_bps_5m"] = d.vwap_gap_bps(close(last), sum(b["notional"] for b in b5),
                                            sum(b["volume"] for b in b5), sum(b["trades"] for b in b5)) \
        if valid(last) and len(b5) >= 2.5 else math.nan
    closes = np.array([close(m) for m in range(last - 59, last + 1) if valid(m)])
    out["price_zscore_1h"] = d.zscore(close(last), float(closes.mean()), float(closes.std())) \
        if valid(last) and len(closes) >= 30 else math.nan
    out["coverage_1h"] = n_valid(60) / 60
    return out


def walk(n: int, step_us: int, *, seed: int = 5, gaps: Sequence[tuple[int, int]] = (), symbol: str = "BTCUSDT",
         no_book: Sequence[int] = ()) -> Iterator[market_pb2.TickBatch]:
    """A random walk of books and trades; ``gaps`` (batch index, extra µs) open outages before those batches."""
    rng = random.Random(seed)
    m = 100.0
    extra = 0
    gap_at = dict(gaps)
    for i in range(n):
        extra += gap_at.get(i, 0)
        m = round(m * math.exp(rng.gauss(0.0, 3e-4)), 2)
        bids = [(round(m - 0.01 * (k + 1), 2), round(0.5 + rng.random(), 3)) for k in range(12)]
        asks = [(round(m + 0.01 * (k + 1), 2), round(0.5 + rng.random(), 3)) for k in range(12)]
        trades = [(m, round(rng.random() + 0.01, 3), rng.random() < 0.45) for _ in range(rng.randint(0, 3))]
        book = i not in no_book
        yield tick_batch(i + 1, T0 + i * step_us + extra + rng.randint(0, step_us // 4), bids=bids if book else None,
                         asks=asks if book else None, trades=trades, symbol=symbol)


def first_of_second(ts_us: d.IntArray) -> d.IntArray:
    """Index of the batch at which the medium tier was evaluated for each row: the first of its second."""
    sec = ts_us // US
    idx = np.arange(len(ts_us))
    starts = np.r_[True, sec[1:] != sec[:-1]]
    return np.maximum.accumulate(np.where(starts, idx, 0))


def assert_close(actual: float, expected: float, name: str, row: int) -> None:
    if math.isnan(expected):
        assert math.isnan(actual), f"{name} row {row}: {actual} != NaN"
    else:
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), f"{name} row {row}"


def test_fine_windows_match_a_full_recompute_with_outages() -> None:
    # 150 s of 50 ms batches, a 3 s and a 20 s outage and a stretch without a book.
    batches = list(walk(3_000, 50_000, gaps=[(900, 3_000_000), (1_900, 20_000_000)], no_book=range(2_400, 2_460)))
    frame = compute_frame(batches)
    tab = table_of(batches)
    medium = {f.name for f in d.FEATURES if f.tier == d.TIER_MEDIUM}
    evaluated = first_of_second(tab.t)
    checked = 0
    for k in range(0, len(batches), 7):
        row = frame.iloc[k]
        fast = fine_features(tab, k)
        held = fine_features(tab, int(evaluated[k]))
        for name, expected in fast.items():
            assert_close(float(row[name]), held[name] if name in medium else expected, name, k)
            checked += 1
    assert checked > 8_000
    # The outages really made windows insufficient somewhere, and they recovered.
    assert frame["ofi_30s"].isna().sum() > 50 and not math.isnan(frame["ofi_30s"].iloc[-1])


def test_minute_windows_match_a_full_recompute() -> None:
    # 100 minutes of 0.5 s batches with a 4-minute outage: every minute feature exists somewhere and is NaN somewhere.
    batches = list(walk(12_000, 500_000, seed=9, gaps=[(5_000, 240_000_000)]))
    frame = compute_frame(batches)
    tab = table_of(batches)
    buckets = minute_buckets(tab)
    names = ("ret_5m", "ret_15m", "ret_1h", "parkinson_5m", "parkinson_1h", "rv_1h", "rv_ratio_5m_1h",
             "variance_ratio_1h", "kyle_lambda_1h", "amihud_1h", "vwap_gap_bps_5m", "price_zscore_1h", "coverage_1h")
    seen_value = dict.fromkeys(names, False)
    for k in range(0, len(batches), 37):
        last = int(tab.t[k] // (60 * US)) - 1
        expected = minute_features(buckets, last)
        row = frame.iloc[k]
        for name in names:
            assert_close(float(row[name]), expected[name], name, k)
            seen_value[name] |= not math.isnan(expected[name])
    assert all(seen_value.values()), seen_value
