"""Fitting cost-v3 tables from book-walk samples (``sample.py``): slippage quantiles, impact power law, ADV.

Per venue and regime (the nine labels, plus ``*`` pooled over every sample of the venue, warm-up included):

* slippage: the round-trip beyond-the-touch walk cost at the reference notional N0,
  ``buy_N0 + sell_N0 - spread`` (bps of mid, clipped at 0), its quantiles p25 ... p99 (linear interpolation);
* impact: ``lam (V / ADV)^psi`` by least squares in log space on the points (V / ADV_session, mean walk cost at
  V) of each session in the cell and each notional V of the grid with a positive mean; psi must come out > 0;
* a regime with fewer than ``min_samples`` samples takes the pooled entry (``fallback="venue"``), and the
  unknown regime "" the element-wise maximum over the regimes of the venue (``fallback="worst"``).

ADV per session: the klines' quote volume (mean per day over the 30 days before the session's last kline,
for klines of the same venue and symbol within 30 days of the session), else the session's own trade tape
scaled to a day. The artifact's ADV of a symbol is the geometric mean over its sessions (the same ADV that
normalised the fit), plus klines-only symbols from their klines.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from streams.decision.cost import (
    CONFIDENCE_N0,
    COST_V3,
    POOLED,
    QUANTILE_LEVELS,
    QUANTILES,
    TABLES_FORMAT,
    VENUES,
)
from streams.features.batch import kline_symbol, read_klines
from streams.runtime.regimes import REGIME_LABELS, UNKNOWN_REGIME

DAY_US = 86_400_000_000
KLINES_WINDOW_DAYS = 30


@dataclass(frozen=True)
class FitConfig:
    notional_usd: float = 10_000.0
    notionals: tuple[float, ...] = (1_000.0, 3_000.0, 10_000.0, 30_000.0, 100_000.0, 300_000.0, 1_000_000.0)
    sample_every_ms: int = 250
    min_samples: int = 50
    holdout_days: tuple[str, ...] = ("2024-07-19", "2024-08-09")
    mape_horizon_min: float = 1.0
    mape_notionals: tuple[float, ...] = (10_000.0, 100_000.0)
    adv_source: Literal["auto", "klines", "captures"] = "auto"

    def __post_init__(self) -> None:
        if self.notional_usd not in self.notionals:
            raise ValueError(f"the reference notional {self.notional_usd} must be in the grid {self.notionals}")
        missing = [n for n in self.mape_notionals if n not in self.notionals]
        if missing:
            raise ValueError(f"MAPE notionals {missing} are not in the grid {self.notionals}")


def beyond_touch(frame: pd.DataFrame, notional: float) -> pd.Series:
    """Round-trip walk cost beyond the touch at ``notional`` (bps), clipped at 0; NaN where a side ran dry."""
    n = int(notional)
    return (frame[f"buy_{n}"] + frame[f"sell_{n}"] - frame["spread_bps"]).clip(lower=0.0)


def utc_day(us: pd.Series) -> pd.Series:
    return pd.to_datetime(us, unit="us", utc=True).dt.strftime("%Y-%m-%d")


# --- ADV ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KlinesAdv:
    venue: str
    symbol: str
    adv_usd: float
    last_us: int
    days: float
    files: tuple[str, ...]


def kline_venue(path: Path) -> str:
    return "usdm" if "um-futures" in path.name or "usdm" in path.name.lower() else "spot"


def klines_adv(files: Sequence[Path]) -> list[KlinesAdv]:
    """Mean daily quote volume of the last 30 days of each (venue, symbol)'s klines."""
    groups: dict[tuple[str, str], list[tuple[Path, pd.DataFrame]]] = {}
    for f in files:
        groups.setdefault((kline_venue(f), kline_symbol(f).upper()), []).append((f, read_klines(f)))
    out = []
    for (venue, symbol), parts in sorted(groups.items()):
        bars = pd.concat([p for _, p in parts], ignore_index=True).drop_duplicates("open_us", keep="first")
        quote = bars["quote"].where(bars["quote"].notna(), bars["volume"] * bars["close"])
        last = int(bars["open_us"].max())
        recent = bars["open_us"] > last - KLINES_WINDOW_DAYS * DAY_US
        days = float(recent.sum()) / 1440.0
        if days > 0:
            out.append(KlinesAdv(venue, symbol, float(quote[recent].sum()) / days, last, round(days, 2),
                                 tuple(sorted(f.name for f, _ in parts))))
    return out


def session_adv(venue: str, symbol: str, session_end_us: int, trade_adv: float, klines: Sequence[KlinesAdv],
                source: str) -> tuple[float, str]:
    """(ADV, where it came from) for one session."""
    near = [k for k in klines if k.venue == venue and k.symbol == symbol
            and abs(k.last_us - session_end_us) <= KLINES_WINDOW_DAYS * DAY_US]
    anywhere = [k for k in klines if k.venue == venue and k.symbol == symbol]
    if source == "klines" and anywhere:
        return anywhere[-1].adv_usd, "klines"
    if source == "auto" and near:
        return near[-1].adv_usd, "klines"
    if math.isfinite(trade_adv) and trade_adv > 0:
        return trade_adv, "capture_trades"
    if anywhere:
        return anywhere[-1].adv_usd, "klines_not_covering"
    return math.nan, "none"


# --- tables ---------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    n: int
    quantiles: dict[str, float]
    mean_bps: float
    impact: dict[str, Any]
    confidence: float
    fallback: str = ""
    symbols: list[str] = field(default_factory=list)
    own_n: int = 0   # samples of this very regime (n is that of the entry used, the pooled one on a fallback)


def fit_impact(frame: pd.DataFrame, notionals: Sequence[float]) -> dict[str, Any] | None:
    """lam, psi of mean walk cost = lam (V / ADV)^psi over (session, V) points; None when it cannot be fitted."""
    xs: list[float] = []
    ys: list[float] = []
    for _, part in frame.groupby("session", sort=True):
        adv = float(part["adv_usd"].iloc[0])
        if not (math.isfinite(adv) and adv > 0):
            continue
        for v in notionals:
            mean = float(beyond_touch(part, v).mean())
            if math.isfinite(mean) and mean > 1e-9:
                xs.append(math.log(v / adv))
                ys.append(math.log(mean))
    if len(xs) < 3 or len(set(xs)) < 2:
        return None
    x, y = np.asarray(xs), np.asarray(ys)
    psi, intercept = np.polyfit(x, y, 1)
    if not psi > 0:
        return None
    residual = y - (intercept + psi * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else 1.0
    return {"lambda": float(math.exp(intercept)), "psi": float(psi), "r2": round(r2, 4),
            "rmse_log": round(float(np.sqrt((residual ** 2).mean())), 4), "points": len(xs)}


def fit_cell(frame: pd.DataFrame, cfg: FitConfig) -> Cell:
    slip = beyond_touch(frame, cfg.notional_usd).dropna()
    levels = [QUANTILE_LEVELS[q] for q in QUANTILES]
    values = np.quantile(slip.to_numpy(), levels) if len(slip) else np.zeros(len(levels))
    quantiles = {q: round(float(v), 6) for q, v in zip(QUANTILES, np.maximum.accumulate(values), strict=True)}
    impact = fit_impact(frame, cfg.notionals) or {}
    return Cell(len(slip), quantiles, round(float(slip.mean()), 6) if len(slip) else 0.0, impact,
                round(len(slip) / (len(slip) + CONFIDENCE_N0), 4), "", sorted(frame["symbol"].unique().tolist()))


def fit_tables(samples: pd.DataFrame, cfg: FitConfig) -> dict[str, dict[str, Cell]]:
    """venue -> regime (REGIME_LABELS, "", POOLED) -> Cell, every entry resolved."""
    tables: dict[str, dict[str, Cell]] = {}
    for venue in VENUES:
        part = samples[samples["venue"] == venue]
        if part.empty:
            raise ValueError(f"no samples for venue {venue}: the tables need spot and USD-M captures")
        pooled = fit_cell(part, cfg)
        pooled.own_n = pooled.n
        if not pooled.impact:
            pooled.impact = {"lambda": 0.0, "psi": 1.0, "r2": None, "rmse_log": None, "points": 0}
        cells: dict[str, Cell] = {POOLED: pooled}
        for regime in REGIME_LABELS:
            rows = part[part["regime"] == regime]
            if len(rows) >= cfg.min_samples:
                cell = fit_cell(rows, cfg)
                if not cell.impact:
                    cell.impact = {**pooled.impact, "from": POOLED}
            else:
                cell = Cell(pooled.n, dict(pooled.quantiles), pooled.mean_bps, {**pooled.impact, "from": POOLED},
                            round(pooled.confidence * 0.5, 4), "venue", pooled.symbols)
            cell.own_n = len(rows)
            cells[regime] = cell
        own = [cells[r] for r in REGIME_LABELS if not cells[r].fallback] or [pooled]
        worst_q = {q: max(c.quantiles[q] for c in own) for q in QUANTILES}
        cells[UNKNOWN_REGIME] = Cell(min(c.n for c in own), worst_q, max(c.mean_bps for c in own),
                                     {**pooled.impact, "from": POOLED}, round(min(c.confidence for c in own) * 0.5, 4),
                                     "worst", pooled.symbols)
        tables[venue] = cells
    return tables


# --- the artifact ---------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry_json(cell: Cell) -> dict[str, Any]:
    impact = cell.impact
    return {"n": cell.n, "own_n": cell.own_n, "quantiles": cell.quantiles, "mean_bps": cell.mean_bps,
            "confidence": cell.confidence, "fallback": cell.fallback, "symbols": cell.symbols,
            "impact": {"lambda": float(impact.get("lambda", 0.0)), "psi": float(impact.get("psi", 1.0)),
                       **{k: v for k, v in impact.items() if k not in ("lambda", "psi")}}}


def build_artifact(tables: Mapping[str, Mapping[str, Cell]], adv: Mapping[str, Mapping[str, Any]],
                   cfg: FitConfig, sources: Sequence[Mapping[str, Any]], diagnostics: Mapping[str, Any],
                   fitted_at: datetime) -> dict[str, Any]:
    """The JSON document ``CostTables.from_json`` reads. ``version`` hashes the fitted content and the fit
    configuration (not the fit time), so refitting the same data gives the same version."""
    body: dict[str, Any] = {
        "format": TABLES_FORMAT,
        "model": COST_V3,
        "notional_usd": cfg.notional_usd,
        "quantiles": list(QUANTILES),
        "fit": asdict(cfg),
        "tables": {venue: {regime: _entry_json(cell) for regime, cell in cells.items()}
                   for venue, cells in tables.items()},
        "adv_usd": {key: dict(row) for key, row in sorted(adv.items())},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return {"format": TABLES_FORMAT, "model": COST_V3, "version": f"ct-{digest}",
            "fitted_at": fitted_at.astimezone(UTC).isoformat(timespec="seconds"), **body,
            "sources": list(sources), "diagnostics": dict(diagnostics)}


def adv_table(per_session: Sequence[Mapping[str, Any]], klines: Sequence[KlinesAdv]) -> dict[str, dict[str, Any]]:
    """``venue:symbol`` -> {adv_usd, source, sessions}: geometric mean of the sessions' ADVs; klines-only symbols
    from their klines."""
    out: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in per_session:
        if math.isfinite(row["adv_usd"]) and row["adv_usd"] > 0:
            groups.setdefault(f"{row['venue']}:{row['symbol']}", []).append(row)
    for key, rows in groups.items():
        geo = math.exp(sum(math.log(r["adv_usd"]) for r in rows) / len(rows))
        out[key] = {"adv_usd": round(geo, 2), "source": "+".join(sorted({r["adv_source"] for r in rows})),
                    "sessions": sorted(r["session"] for r in rows)}
    for k in klines:
        key = f"{k.venue}:{k.symbol}"
        if key not in out:
            out[key] = {"adv_usd": round(k.adv_usd, 2), "source": "klines", "sessions": [],
                        "klines_days": k.days, "files": list(k.files)}
        else:
            out[key]["klines_adv_usd"] = round(k.adv_usd, 2)
    return out


def split_holdout(samples: pd.DataFrame, days: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    held = utc_day(samples["exchange_us"]).isin(list(days)).to_numpy()
    return samples[~held].reset_index(drop=True), samples[held].reset_index(drop=True)


def now_utc() -> datetime:
    """The fit's timestamp (the only wall-clock read of the fitter)."""
    from streams.runtime.clock import LiveClock

    return datetime.fromtimestamp(LiveClock().now_us() / 1e6, tz=UTC)
