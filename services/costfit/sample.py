"""Book-walk samples from real depth captures, each labelled with the regime the features stage assigns.

A *session* is one symbol's contiguous recording: capture files of the same folder and symbol whose recorded
times follow each other (``btcusdt_20240808.gz`` + ``btcusdt_20240809.gz``, the second continuing the first).
Each session is replayed alone, with fresh state, exactly as the replay source does it (``streams.ingest.replay``
readers, the ingest core through ``Replayer``, 1 ms chunks on a manual clock). Two things are taken on the way:

* every ``every_us`` of recorded time, the ingest core's own ``OrderBook`` of the symbol (full depth, when it is
  synced) is walked for each notional of the grid with ``streams.decision.cost.walk_vwap``: buy and sell VWAP
  distance from the mid in bps (NaN when the book holds less than the notional);
* the TickBatches the core emits go, unchanged, through ``streams.features.core.compute_frame`` (the stage's
  code path, as ``surge features compute`` runs it), whose ``regime`` column labels each sample (as of the last
  vector at or before the book's exchange time, within 2 s; else "" = unknown). Trades on the way give the
  session's traded quote volume, an ADV estimate when no klines cover the session.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from schemas import market_pb2
from streams.decision.cost import BPS, walk_vwap
from streams.features.batch import detect_venue, kline_symbol
from streams.features.core import FeatureState, compute_frame
from streams.ingest.core import Frame
from streams.ingest.replay import CAPTURE_SUFFIXES, CHUNK_US, Replayer, read_capture
from streams.runtime.settings import Settings
from streams.venues.binance.spec import venue_spec

SESSION_GAP_US = 60_000_000      # files further apart than this are separate sessions
WALK_LEVELS = 1000               # levels per side walked (the REST snapshots hold 1000)
REGIME_TOLERANCE_US = 2_000_000  # a sample takes the regime of a vector at most this much older
ENVELOPE_SNIFF_LINES = 50


@dataclass(frozen=True, slots=True)
class CaptureFile:
    path: Path
    symbol: str
    first_us: int
    last_us: int
    lines: int


@dataclass(frozen=True, slots=True)
class Session:
    venue: str                       # spot | usdm
    symbol: str
    files: tuple[CaptureFile, ...]

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def name(self) -> str:
        first = self.files[0].path
        stems = "+".join(f.path.name.split(".")[0] for f in self.files)
        return f"{first.parent.name}/{stems}"


@dataclass
class SessionSamples:
    session: Session
    frame: pd.DataFrame              # one row per (sample time): see sample_session
    trade_quote: float = 0.0         # traded quote volume seen in the session
    trade_span_us: int = 0           # first to last trade time
    batches: int = 0
    regimes: dict[str, int] = field(default_factory=dict)

    @property
    def trade_adv_usd(self) -> float:
        """Traded quote volume per day at the session's pace (NaN without two trades)."""
        return self.trade_quote / self.trade_span_us * 86_400e6 if self.trade_span_us > 0 else math.nan


def _scan(path: Path) -> tuple[int, int, int, bool]:
    """(first, last recorded time, lines) of a capture and whether it holds combined-stream frames."""
    first = last = count = 0
    envelope = False
    for i, line in enumerate(read_capture(path)):
        if i == 0:
            first = line.local_us
        last = line.local_us
        count += 1
        if not envelope and i < ENVELOPE_SNIFF_LINES and b'"stream"' in line.payload[:32]:
            envelope = True
    return first, last, count, envelope


def split_inputs(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(capture files, kline files) under ``paths`` (files or folders, searched recursively). Klines are named
    ``SYMBOL-1m-...``; captures are the replay formats (``CAPTURE_SUFFIXES``) that are not klines."""
    captures: list[Path] = []
    klines: list[Path] = []
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise FileNotFoundError(f"{root} not found")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                      if p.is_file() and not p.name.startswith("."))
        for f in files:
            if kline_symbol(f):
                klines.append(f)
            elif f.name.endswith(CAPTURE_SUFFIXES):
                captures.append(f)
    return sorted(set(captures)), sorted(set(klines))


def discover_sessions(captures: Sequence[Path]) -> tuple[list[Session], list[Path]]:
    """Group capture files into sessions; returns (sessions, skipped files that hold no stream frames)."""
    by_key: dict[tuple[Path, str], list[CaptureFile]] = {}
    skipped: list[Path] = []
    for path in captures:
        first, last, count, envelope = _scan(path)
        if not envelope:
            skipped.append(path)
            continue
        symbol = path.name.split("_")[0].split(".")[0].upper()
        by_key.setdefault((path.parent, symbol), []).append(CaptureFile(path, symbol, first, last, count))
    sessions: list[Session] = []
    for (_, symbol), files in sorted(by_key.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        files.sort(key=lambda f: f.first_us)
        group: list[CaptureFile] = [files[0]]
        for f in files[1:]:
            if f.first_us - group[-1].last_us > SESSION_GAP_US:
                sessions.append(_session(symbol, group))
                group = []
            group.append(f)
        sessions.append(_session(symbol, group))
    return sessions, skipped


def _session(symbol: str, files: list[CaptureFile]) -> Session:
    return Session(detect_venue([f.path for f in files]), symbol, tuple(files))


def walk_columns(notionals: Sequence[float]) -> list[str]:
    return [f"{side}_{int(n)}" for n in notionals for side in ("buy", "sell")]


def sample_session(session: Session, notionals: Sequence[float], every_us: int, *,
                   settings: Settings | None = None,
                   progress: Callable[[int], None] | None = None) -> SessionSamples:
    """Replay one session; the frame has ``local_us``, ``exchange_us``, ``symbol``, ``mid``, ``spread_bps``,
    ``buy_<N>``/``sell_<N>`` (VWAP distance from the mid in bps for notional N, NaN if the book is too shallow)
    and ``regime``. ``progress`` is called with the number of capture lines consumed so far."""
    spec = venue_spec(session.venue)
    settings = settings if settings is not None else Settings.defaults()
    iterators = [read_capture(f.path, i) for i, f in enumerate(session.files)]
    lines = heapq.merge(*iterators, key=lambda ln: (ln.local_us, ln.file_index, ln.line_no))
    out = SessionSamples(session, pd.DataFrame())
    rows: list[list[float]] = []
    meta: list[tuple[int, int, str]] = []
    first_trade_us = last_trade_us = 0

    def sample(now_us: int, replayer: Replayer) -> None:
        for symbol, st in replayer.state.symbols.items():
            book = st.book
            if not book.synced:
                continue
            bids, asks = book.top(WALK_LEVELS)
            if not bids or not asks:
                continue
            best_bid, best_ask = bids[0][0], asks[0][0]
            mid = (best_bid + best_ask) / 2.0
            row = [mid, (best_ask - best_bid) / mid * BPS]
            for n in notionals:
                vwap_buy, filled_buy = walk_vwap(asks, n)
                vwap_sell, filled_sell = walk_vwap(bids, n)
                row.append((vwap_buy / mid - 1.0) * BPS if filled_buy >= n * (1 - 1e-9) else math.nan)
                row.append((1.0 - vwap_sell / mid) * BPS if filled_sell >= n * (1 - 1e-9) else math.nan)
            rows.append(row)
            meta.append((now_us, book.last_exchange_us, symbol))

    def batches() -> Iterator[market_pb2.TickBatch]:
        nonlocal first_trade_us, last_trade_us
        first = next(lines, None)
        if first is None:
            return
        replayer = Replayer.for_capture(settings, spec, first.local_us)
        chunk: list[Frame] = [(first.hint, first.payload, first.local_us)]
        chunk_us = first.local_us
        next_sample_us = first.local_us
        consumed = 1

        def emitted(emits: Sequence[object]) -> Iterator[market_pb2.TickBatch]:
            nonlocal first_trade_us, last_trade_us
            for emit in emits:
                tb = getattr(emit, "value", None)
                if not isinstance(tb, market_pb2.TickBatch):
                    continue
                out.batches += 1
                for ev in tb.events:
                    if ev.WhichOneof("event") == "trade":
                        out.trade_quote += ev.trade.price * ev.trade.qty
                        t = ev.trade.exchange_us
                        first_trade_us = t if first_trade_us == 0 else min(first_trade_us, t)
                        last_trade_us = max(last_trade_us, t)
                yield tb

        for line in lines:
            consumed += 1
            if line.local_us - chunk_us >= CHUNK_US:
                yield from emitted(replayer.feed(chunk, chunk_us).emits)
                while chunk_us >= next_sample_us:
                    sample(chunk_us, replayer)
                    next_sample_us += every_us
                chunk = []
                chunk_us = line.local_us
                if progress is not None and consumed % 2000 == 0:
                    progress(consumed)
            chunk.append((line.hint, line.payload, line.local_us))
        yield from emitted(replayer.feed(chunk, chunk_us).emits)
        yield from emitted(replayer.finish().emits)
        if progress is not None:
            progress(consumed)

    vectors = compute_frame(batches(), FeatureState())
    out.trade_span_us = last_trade_us - first_trade_us
    cols = ["mid", "spread_bps", *walk_columns(notionals)]
    frame = pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(len(rows), len(cols)), columns=cols)
    frame.insert(0, "local_us", np.asarray([m[0] for m in meta], dtype=np.int64))
    frame.insert(1, "exchange_us", np.asarray([m[1] for m in meta], dtype=np.int64))
    frame.insert(2, "symbol", [m[2] for m in meta])
    frame = _label_regimes(frame, vectors)
    frame.insert(0, "session", session.name)
    frame.insert(1, "venue", session.venue)
    out.frame = frame
    out.regimes = {str(k): int(v) for k, v in frame["regime"].value_counts().items()}
    return out


def _label_regimes(samples: pd.DataFrame, vectors: pd.DataFrame) -> pd.DataFrame:
    """Each sample's regime: that of the newest vector of its symbol at or before its book's exchange time."""
    if samples.empty:
        samples["regime"] = pd.Series(dtype=str)
        return samples
    if vectors.empty:
        samples["regime"] = ""
        return samples
    left = samples.reset_index(names="_row").sort_values("exchange_us", kind="stable")
    right = (vectors[["symbol", "exchange_us", "regime"]]
             .assign(exchange_us=lambda f: f.groupby("symbol")["exchange_us"].cummax())
             .sort_values("exchange_us", kind="stable"))
    merged = pd.merge_asof(left, right, on="exchange_us", by="symbol", direction="backward",
                           tolerance=REGIME_TOLERANCE_US)
    merged["regime"] = merged["regime"].fillna("").astype(str)
    return merged.sort_values("_row").drop(columns="_row").reset_index(drop=True)
