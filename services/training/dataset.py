"""From a features frame of bars to labelled training samples.

The frame has one row per bar with ``symbol``, ``ts`` (bar open time, ms), the feature columns,
``feature_version`` and the bar's ``open/high/low/close``: for klines it comes from the features stage's batch
driver (``streams.features.batch.compute_klines_frame``), for the simulator from ``default_model``. This module
adds no feature arithmetic: it only chooses which of the frame's columns are features, labels the bars with
the triple barrier of ``labels.py`` (``LabelSpec``) and describes each label's span for purging, embargo and
uniqueness weights.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from services.training.labels import (
    TIMEOUTS,
    BarrierConfig,
    Timeout,
    average_uniqueness,
    outcome,
    triple_barrier_segmented,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

BAR_MS = 60_000
# Columns of a batch frame that are never model inputs: identity, bar prices and bookkeeping.
NON_FEATURE_COLUMNS = frozenset({
    "symbol", "ts", "feature_version", "open", "high", "low", "close", "volume", "quote_volume", "count",
    "taker_buy_base_volume", "taker_buy_quote_volume", "close_time", "ignore", "mid_price", "regime",
    "exchange_us", "vector_id", "window_insufficient", "venue", "source", "path",
})
REQUIRED_COLUMNS = ("symbol", "ts", "feature_version", "high", "low", "close")

FrameFn = Callable[[Sequence[Path]], pd.DataFrame]


class DataError(ValueError):
    """Input data that cannot be trained or scored on as it is."""


def klines_frame(paths: Sequence[Path]) -> pd.DataFrame:
    """Features of kline files from the features stage's batch driver (imported late: it is optional at
    import time so the rest of training stays importable and testable without it)."""
    try:
        from streams.features.batch import compute_klines_frame
    except ImportError as exc:  # pragma: no cover - depends on the features stage's deployment
        raise DataError(f"the features batch driver is not available: {exc}") from exc
    return compute_klines_frame(list(paths))


def capture_frame(paths: Sequence[Path]) -> pd.DataFrame:
    """Features of WebSocket captures from the features stage's batch driver."""
    try:
        from streams.features.batch import compute_capture_frame
    except ImportError as exc:  # pragma: no cover
        raise DataError(f"the features batch driver is not available: {exc}") from exc
    return compute_capture_frame(list(paths))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kline_lines(path: Path) -> list[str]:
    """Data lines of a Binance kline file (.zip holding one CSV, .csv.gz or .csv), header dropped."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            text = zf.read(zf.namelist()[0]).decode("ascii", "replace")
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    else:
        text = path.read_text(encoding="ascii", errors="replace")
    lines = [ln for ln in io.StringIO(text).read().splitlines() if ln.strip()]
    return [ln for ln in lines if ln[:1].isdigit()]


def _open_time_ms(field: str) -> int:
    v = int(field)
    return v // 1000 if v > 10**14 else v  # Binance spot dumps use µs from 2025 on, older files ms


def kline_time_range(path: Path) -> tuple[int, int, int]:
    """(first open time ms, last open time ms, rows) of a kline file: only the time column is read, to place
    the train/evaluation boundary; the bars themselves reach training through the batch driver only."""
    lines = _kline_lines(path)
    if not lines:
        raise DataError(f"{path}: no kline rows")
    return _open_time_ms(lines[0].split(",", 1)[0]), _open_time_ms(lines[-1].split(",", 1)[0]), len(lines)


def feature_columns(frame: pd.DataFrame, known: Sequence[str] | None = None) -> list[str]:
    """Numeric model-input columns in frame order; with ``known`` (the feature contract's names), only those."""
    if known is not None:
        return [c for c in known if c in frame.columns]
    return [c for c in frame.columns
            if c not in NON_FEATURE_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])]


def check_frame(frame: pd.DataFrame) -> str:
    """Validate the batch frame; returns its single feature_version."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"features frame lacks {missing}; training needs bar high/low/close from the batch driver")
    if frame.empty:
        raise DataError("features frame is empty")
    versions = sorted({str(v) for v in frame["feature_version"]})
    if len(versions) != 1:
        raise DataError(f"features frame mixes feature versions {versions}")
    return versions[0]


@dataclass(frozen=True)
class LabelSpec:
    """What a label is: one triple barrier per horizon (``labels.BarrierConfig``: widths, and the length in bars),
    keyed by the horizon in minutes; the bar length; and what a timeout counts as (``labels.outcome``)."""

    barriers: Mapping[int, BarrierConfig]
    bar_ms: int = BAR_MS
    timeout: Timeout = "not up"

    def __post_init__(self) -> None:
        if not self.barriers:
            raise ValueError("a label spec needs at least one horizon")
        if self.bar_ms < 1:
            raise ValueError(f"bar_ms must be positive, got {self.bar_ms}")
        if self.timeout not in TIMEOUTS:
            raise ValueError(f"timeout must be one of {TIMEOUTS}, got {self.timeout!r}")

    @classmethod
    def minute_bars(cls, horizons: Sequence[int], theta_up: float, theta_dn: float) -> LabelSpec:
        """The same barrier at every horizon on 1-minute bars (H minutes = H bars), timeouts "not up"."""
        return cls({h: BarrierConfig(theta_up, theta_dn, h) for h in horizons})

    @property
    def horizons(self) -> tuple[int, ...]:
        return tuple(self.barriers)


@dataclass(frozen=True)
class Labelled:
    """Bars sorted by (ts, symbol) with one label column per horizon."""

    frame: pd.DataFrame
    horizons: tuple[int, ...]
    y: dict[int, FloatArray]         # 1.0 UP, 0.0 not up (LabelSpec.timeout), NaN no label
    label: dict[int, IntArray]       # LABEL_* codes
    end_ts: dict[int, IntArray]      # open time of the deciding bar (ms), -1 without a label
    uniqueness: dict[int, FloatArray]
    symbol_codes: IntArray
    bar_ms: int = BAR_MS             # the unit of label spans (purged CV, embargo)

    @property
    def ts(self) -> IntArray:
        return np.asarray(self.frame["ts"].to_numpy(), dtype=np.int64)

    def valid(self, h: int) -> BoolArray:
        return np.asarray(np.isfinite(self.y[h]), dtype=np.bool_)


def label_frame(frame: pd.DataFrame, spec: LabelSpec) -> Labelled:
    """Triple-barrier labels per horizon on every bar (entry at the bar's close)."""
    frame = frame.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
    ts = frame["ts"].to_numpy(dtype=np.int64)
    codes, _ = pd.factorize(frame["symbol"], sort=True)
    codes = np.asarray(codes, dtype=np.int64)
    close, high, low = (frame[c].to_numpy(dtype=np.float64) for c in ("close", "high", "low"))
    # Position of each bar within its symbol's own series: the unit of label spans for uniqueness.
    pos = np.asarray(frame.groupby("symbol", sort=False).cumcount().to_numpy(), dtype=np.int64)
    y: dict[int, FloatArray] = {}
    lab: dict[int, IntArray] = {}
    end_ts: dict[int, IntArray] = {}
    uniq: dict[int, FloatArray] = {}
    for h, barrier in spec.barriers.items():
        seg = triple_barrier_segmented(ts, close, high, low, barrier, spec.bar_ms, codes)
        y[h] = outcome(seg.label, close, seg.touch_price, spec.timeout)
        ok = np.isfinite(y[h])
        lab[h] = seg.label
        end_ts[h] = np.where(ok, ts[np.maximum(seg.touch_row, 0)], -1)
        u = np.zeros(len(frame))
        for code in np.unique(codes):
            m = codes == code
            end_pos = np.where(ok[m], pos[np.maximum(seg.touch_row[m], 0)], -1)
            u[m] = average_uniqueness(pos[m], end_pos)
        uniq[h] = u
    return Labelled(frame, spec.horizons, y, lab, end_ts, uniq, codes, spec.bar_ms)
