"""Batch drivers: the streaming features kernel over recorded captures and over Binance 1-minute klines.

* Captures (the replay formats of ``streams.ingest.replay``: hftbacktest ``<local_ts> <json>`` files with their
  REST snapshot line, cryptofeed ``<ts>: <json>`` files, plain JSON lines) are read by the replay reader, fed
  through the ingest core exactly as the ingest stage replays them (1 ms chunks of recorded time on a manual
  clock), and the resulting TickBatches go through ``core.compute_frame``, the code path of the stage.
* Klines (Binance's 12-column CSV, in a zip or gzipped or plain, with or without a header, open times in µs
  or ms; or the 6-column ``open_time,open,high,low,close,volume`` file) become one bar row each, folded by the
  same kernel. Book features and windows shorter than the bar are NaN; flow features need the taker columns.

Output rows: ``symbol``, ``ts`` (exchange time, ms), the features, ``feature_version``, then extra columns.
For captures each row is the state after every event with time <= ts (one row per (symbol, ts): batches that
share a millisecond keep the last). For klines ``ts`` is the bar's open time and the features are those at
the bar's close, with ``open``, ``high``, ``low``, ``close``, ``volume`` of the bar for labelling.
"""

from __future__ import annotations

import gzip
import heapq
import io
import logging
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from schemas import market_pb2
from streams.features import definitions as d
from streams.features.core import FeatureState, compute_frame, fold_rows
from streams.features.rows import encode_bars
from streams.runtime.settings import Settings

log = logging.getLogger("surge.features.batch")

KLINE_FIELDS = ("open_us", "open", "high", "low", "close", "volume", "quote", "count", "taker_base", "taker_quote")
KLINE_EXTRA_COLUMNS = ("open", "high", "low", "close", "volume", "window_insufficient")
_KLINE_SYMBOL = re.compile(r"^([A-Z0-9]+)-1m-", re.IGNORECASE)
_VENUE_SNIFF_LINES = 2_000


def is_kline_path(path: Path) -> bool:
    """Klines are CSV files (optionally gzipped) or zips of them; everything else is a capture."""
    if path.is_dir():
        return any(is_kline_path(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    name = path.name.lower()
    return name.endswith(".zip") or ".csv" in name


def kline_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and is_kline_path(p))
    if not path.is_file():
        raise FileNotFoundError(f"klines {path} not found")
    return [path]


def kline_symbol(path: Path) -> str:
    """``BTCUSDT-1m-2026-03.zip`` -> ``BTCUSDT``; "" when the name does not tell."""
    match = _KLINE_SYMBOL.match(path.name)
    return match.group(1).upper() if match else ""


def _kline_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = [n for n in zf.namelist() if not n.endswith("/")]
            if len(members) != 1:
                raise ValueError(f"{path}: expected one CSV in the zip, found {members}")
            raw = zf.read(members[0])
    elif raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def _to_micros(values: d.IntArray) -> d.IntArray:
    """Open times in s, ms or µs (told apart by magnitude, per file) -> µs."""
    top = int(values.max()) if values.size else 0
    if top >= 10**14:
        return values
    if top >= 10**11:
        return values * 1_000
    return values * 1_000_000


def read_klines(path: Path) -> pd.DataFrame:
    """One kline file -> KLINE_FIELDS columns (NaN for columns a 6-column file lacks), invalid rows dropped."""
    text = _kline_text(path)
    first = text.lstrip()[:1]
    header = 0 if first and not first.isdigit() else None
    raw = pd.read_csv(io.StringIO(text), header=header)
    ncols = raw.shape[1]
    if ncols not in (6, 12):
        raise ValueError(f"{path}: expected 12 (Binance klines) or 6 (OHLCV) columns, found {ncols}")
    cols = raw.to_numpy()
    n = len(raw)
    out = pd.DataFrame({"open_us": _to_micros(cols[:, 0].astype(np.int64))})
    for j, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
        out[name] = cols[:, j].astype(np.float64)
    if ncols == 12:
        out["quote"] = cols[:, 7].astype(np.float64)
        out["count"] = cols[:, 8].astype(np.float64)
        out["taker_base"] = cols[:, 9].astype(np.float64)
        out["taker_quote"] = cols[:, 10].astype(np.float64)
    else:
        for name in ("quote", "count", "taker_base", "taker_quote"):
            out[name] = np.full(n, np.nan)
    o, h, lo, c, v = (out[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    prices_ok = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & (lo > 0)
    ok = prices_ok & (h >= np.maximum(o, c)) & (lo <= np.minimum(o, c)) & np.isfinite(v) & (v >= 0)
    ok &= out["open_us"].to_numpy() % d.BAR_US == 0
    if ncols == 12:
        tb = out["taker_base"].to_numpy()
        ok &= np.isfinite(out["quote"].to_numpy()) & np.isfinite(tb) & (tb >= 0) & (tb <= v * (1 + 1e-9))
    dropped = int(n - ok.sum())
    if dropped:
        log.warning("%s: dropped %d of %d klines that are not consistent 1-minute OHLCV rows", path, dropped, n)
    out = out[ok].reset_index(drop=True)
    out["rich"] = 1 if ncols == 12 else 0
    out.attrs["dropped"] = dropped
    return out


def compute_klines_frame(paths: Sequence[Path], symbol: str | None = None) -> pd.DataFrame:
    """Features at the close of every 1-minute kline in ``paths`` (files or folders), per symbol.

    The symbol comes from the file name (``BTCUSDT-1m-...``) unless ``symbol`` is given. Overlapping files are
    merged by open time; a full 12-column row wins over an OHLCV-only one for the same minute.
    """
    by_symbol: dict[str, list[pd.DataFrame]] = {}
    for path in paths:
        for f in kline_files(Path(path)):
            sym = (symbol or kline_symbol(f)).upper()
            if not sym:
                raise ValueError(f"{f}: cannot tell the symbol from the file name; pass symbol=")
            by_symbol.setdefault(sym, []).append(read_klines(f))
    if not by_symbol:
        raise FileNotFoundError(f"no kline files in {[str(p) for p in paths]}")
    frames = []
    for sym in sorted(by_symbol):
        bars = pd.concat(by_symbol[sym], ignore_index=True)
        bars = bars.sort_values(["open_us", "rich"], ascending=[True, False], kind="stable")
        bars = bars.drop_duplicates("open_us", keep="first").reset_index(drop=True)
        frames.append(_klines_features(sym, bars))
    return pd.concat(frames, ignore_index=True)


def _klines_features(symbol: str, bars: pd.DataFrame) -> pd.DataFrame:
    col = {k: bars[k].to_numpy() for k in KLINE_FIELDS}
    rows = encode_bars(col["open_us"], col["open"], col["high"], col["low"], col["close"], col["volume"],
                       col["quote"], col["count"], col["taker_base"], col["taker_quote"])
    res = fold_rows(d.new_kernel_state(), rows)
    frame = pd.DataFrame({"symbol": symbol, "ts": col["open_us"] // 1000})
    frame = pd.concat([frame, pd.DataFrame(res.values, columns=list(d.FEATURE_NAMES))], axis=1)
    frame["feature_version"] = d.FEATURE_VERSION
    for k in ("open", "high", "low", "close", "volume"):
        frame[k] = col[k]
    frame["window_insufficient"] = (res.status & d.STATUS_INSUFFICIENT) != 0
    return frame


# --- captures ---------------------------------------------------------------------------------------------------


def detect_venue(files: Sequence[Path]) -> str:
    """``usdm`` when a capture has USD-M frames (``pu`` in depth diffs, mark prices), else ``spot``."""
    from streams.ingest.replay import read_capture

    for f in files:
        for i, line in enumerate(read_capture(f)):
            if b'"pu":' in line.payload or b"markPriceUpdate" in line.payload:
                return "usdm"
            if i >= _VENUE_SNIFF_LINES:
                break
    return "spot"


def capture_batches(paths: Sequence[Path], venue: str | None = None, *,
                    settings: Settings | None = None) -> Iterator[market_pb2.TickBatch]:
    """TickBatches of the captures in ``paths`` (merged by recorded time) exactly as the replay source emits them.

    ``settings`` are the ingest stage's (micro-batch window, trade backfill, quarantine); the environment is
    never read: without them, every setting is at its default (``Settings.defaults()``)."""
    from streams.ingest.core import Frame
    from streams.ingest.replay import CHUNK_US, Replayer, capture_files, read_capture
    from streams.venues.binance.spec import venue_spec

    files = [f for p in paths for f in capture_files(Path(p))]
    spec = venue_spec(venue or detect_venue(files))
    iterators = [read_capture(f, i) for i, f in enumerate(files)]
    lines = iterators[0] if len(iterators) == 1 else heapq.merge(
        *iterators, key=lambda ln: (ln.local_us, ln.file_index, ln.line_no))
    first = next(lines, None)
    if first is None:
        return
    replayer = Replayer.for_capture(settings if settings is not None else Settings.defaults(), spec, first.local_us)
    chunk: list[Frame] = [(first.hint, first.payload, first.local_us)]
    chunk_us = first.local_us
    for line in lines:
        if line.local_us - chunk_us >= CHUNK_US:
            yield from _tick_batches(replayer.feed(chunk, chunk_us).emits)
            chunk = []
            chunk_us = line.local_us
        chunk.append((line.hint, line.payload, line.local_us))
    yield from _tick_batches(replayer.feed(chunk, chunk_us).emits)
    yield from _tick_batches(replayer.finish().emits)
    stats = replayer.stats
    log.info("captures %s: %d frames, %d batches, %d dead letters, %d unserved resyncs",
             [str(p) for p in paths], stats.frames, stats.batches, stats.dead_letters, stats.unserved_resyncs)


def _tick_batches(emits: Sequence[object]) -> Iterator[market_pb2.TickBatch]:
    for emit in emits:
        value = getattr(emit, "value", None)
        if isinstance(value, market_pb2.TickBatch):
            yield value


def compute_capture_frame(paths: Sequence[Path], venue: str | None = None, *,
                          settings: Settings | None = None) -> pd.DataFrame:
    """Features of raw captures: the stage's vectors, one row per (symbol, ts) with the state after ts.

    ``settings`` as for ``capture_batches`` (defaults when not given, never the environment)."""
    frame = compute_frame(capture_batches(paths, venue, settings=settings), FeatureState())
    if frame.empty:
        return frame
    # The state's clock never goes backwards; a row stands for everything up to its millisecond.
    frame["ts"] = frame.groupby("symbol", sort=False)["exchange_us"].cummax().to_numpy() // 1000
    last = ~frame.duplicated(["symbol", "ts"], keep="last")
    return frame[last].reset_index(drop=True)


# --- dispatch and output --------------------------------------------------------------------------------------


def compute_inputs_frame(paths: Sequence[Path], *, symbol: str | None = None, venue: str | None = None,
                         settings: Settings | None = None) -> pd.DataFrame:
    """Klines or captures (not both in one call) -> the feature frame (``settings``: see ``capture_batches``;
    klines need none)."""
    kinds = {is_kline_path(Path(p)) for p in paths}
    if not paths:
        raise ValueError("no input")
    if len(kinds) > 1:
        raise ValueError("mixing klines and captures in one output is not supported: run them separately")
    if kinds == {True}:
        return compute_klines_frame(paths, symbol)
    return compute_capture_frame(paths, venue, settings=settings)


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
