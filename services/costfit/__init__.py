"""``surge cost fit``: cost-v3 tables from real depth captures and klines (see ``streams/decision/cost.py``).

``run_fit`` = discover capture sessions and kline files under the inputs -> replay and sample each session's
book (``sample.py``) -> split off the held-out UTC days -> fit slippage quantiles and the impact law per venue
and regime on the rest (``fit.py``) -> realized cost MAPE of those tables on the held-out days
(``evaluate.py``) -> the versioned artifact (JSON) and its report (``report.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from services.costfit.evaluate import realized_mape
from services.costfit.fit import (
    FitConfig,
    adv_table,
    build_artifact,
    fit_tables,
    klines_adv,
    now_utc,
    session_adv,
    sha256_of,
    split_holdout,
    utc_day,
)
from services.costfit.report import render
from services.costfit.sample import Session, SessionSamples, discover_sessions, sample_session, split_inputs
from streams.decision.cost import CostTables
from streams.runtime.settings import Settings

__all__ = ["ARTIFACT_NAME", "REPORT_NAME", "FitConfig", "FitResult", "Session", "collect_samples", "run_fit"]

ARTIFACT_NAME = "cost_tables.json"
REPORT_NAME = "cost_report.md"

# Called with (session, lines consumed, lines in the session) while sampling; (session, -1, total) when done.
Progress = Callable[[Session, int, int], None]


@dataclass
class FitResult:
    doc: dict[str, Any]
    report: str
    samples: pd.DataFrame
    tables: CostTables

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        artifact, report = out / ARTIFACT_NAME, out / REPORT_NAME
        artifact.write_text(json.dumps(self.doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        report.write_text(self.report, encoding="utf-8")
        return artifact, report


def collect_samples(sessions: Sequence[Session], cfg: FitConfig, *, settings: Settings | None = None,
                    progress: Progress | None = None) -> list[SessionSamples]:
    out = []
    for session in sessions:
        def tick(done: int, s: Session = session) -> None:
            if progress is not None:
                progress(s, done, s.lines)
        out.append(sample_session(session, cfg.notionals, cfg.sample_every_ms * 1000, settings=settings,
                                  progress=tick))
        if progress is not None:
            progress(session, -1, session.lines)
    return out


def run_fit(paths: Sequence[Path], cfg: FitConfig | None = None, *, settings: Settings | None = None,
            progress: Progress | None = None, on_sessions: Callable[[Sequence[Session]], None] | None = None,
            fitted_at: datetime | None = None) -> FitResult:
    cfg = cfg or FitConfig()
    captures, kline_files = split_inputs(paths)
    if not captures:
        raise FileNotFoundError(f"no capture files under {[str(p) for p in paths]}")
    sessions, no_frames = discover_sessions(captures)
    if on_sessions is not None:
        on_sessions(sessions)
    klines = klines_adv(kline_files)
    sampled = collect_samples(sessions, cfg, settings=settings, progress=progress)

    frames: list[pd.DataFrame] = []
    per_session: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = [{"session": p.name, "venue": "-", "reason": "no stream frames"}
                                     for p in no_frames]
    holdout_days = set(cfg.holdout_days)
    for s in sampled:
        frame = s.frame
        if frame.empty:
            skipped.append({"session": s.session.name, "venue": s.session.venue,
                            "reason": "no synced book (no REST snapshot in the capture)"})
            continue
        end_us = int(frame["exchange_us"].max())
        adv_usd, source = session_adv(s.session.venue, s.session.symbol, end_us, s.trade_adv_usd, klines,
                                      cfg.adv_source)
        frame = frame.assign(adv_usd=adv_usd)
        days = sorted(utc_day(frame["exchange_us"]).unique().tolist())
        held = [d for d in days if d in holdout_days]
        per_session.append({
            "session": s.session.name, "venue": s.session.venue, "symbol": s.session.symbol,
            "files": [f.path.name for f in s.session.files], "samples": len(frame),
            "known": int((frame["regime"] != "").sum()), "regimes": s.regimes, "days": days,
            "split": "holdout" if held == days else "fit" if not held else f"fit + holdout {', '.join(held)}",
            "adv_usd": adv_usd, "adv_source": source, "trade_adv_usd": s.trade_adv_usd, "tick_batches": s.batches,
        })
        frames.append(frame)
    if not frames:
        raise ValueError("no capture session produced a book sample")
    samples = pd.concat(frames, ignore_index=True)
    fit_part, holdout = split_holdout(samples, cfg.holdout_days)
    tables = fit_tables(fit_part, cfg)
    adv = adv_table(per_session, klines)

    roots = [Path(p) for p in paths]
    sources: list[dict[str, Any]] = [
        {"file": f.path.name, "path": _shown(f.path, roots), "role": "capture", "session": s.name,
         "sha256": sha256_of(f.path)} for s in sessions for f in s.files]
    sources += [{"file": p.name, "path": _shown(p, roots), "role": "capture", "session": None,
                 "sha256": sha256_of(p)} for p in no_frames]
    sources += [{"file": p.name, "path": _shown(p, roots), "role": "klines", "session": None,
                 "sha256": sha256_of(p)} for p in kline_files]
    diagnostics: dict[str, Any] = {
        "sessions": per_session, "skipped": skipped,
        "samples": {"fit": len(fit_part), "holdout": len(holdout)},
        "klines_adv": [{"venue": k.venue, "symbol": k.symbol, "adv_usd": round(k.adv_usd, 2), "days": k.days,
                        "files": list(k.files)} for k in klines],
        "notes": NOTES,
    }
    provisional = build_artifact(tables, adv, cfg, sources, diagnostics, fitted_at or now_utc())
    fitted = CostTables.from_json(provisional)
    if len(holdout):
        diagnostics["mape"] = realized_mape(holdout, fitted, horizon_min=cfg.mape_horizon_min,
                                            notionals=cfg.mape_notionals, universe=samples)
    doc = {**provisional, "diagnostics": _finite(diagnostics)}
    return FitResult(doc, render(doc), samples, CostTables.from_json(doc))


def _shown(path: Path, roots: Sequence[Path]) -> str:
    """A source's path as the artifact records it: relative to the folder holding the input it was found under."""
    for root in roots:
        base = root.parent
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return path.name


def _finite(value: Any) -> Any:
    """NaN / inf -> None, so the artifact is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


NOTES = [
    "Regimes are those of the features stage (streams.features.core.compute_frame over the session's own "
    "TickBatches): the vol/depth tercile thresholds are frozen per symbol from the first 120 s of each session, "
    "so a session's first ~3 minutes are the unknown regime (they count in the pooled entry only).",
    "The captures are short (6 to 11 minutes per session, around midnight UTC, 2023-04 and 2024-07/08): few "
    "regimes have enough samples of their own, so most fall back to the venue's pooled entry. More captures "
    "make the per-regime cells real.",
    "Tables pool the symbols of a venue (BTCUSDT, ETHUSDT); only the impact term is normalised by each "
    "symbol's ADV.",
    "ADV: the klines here (BTCUSDT spot 2026-03..07, AVAX/FIL USD-M) do not cover the capture dates, so each "
    "session's ADV is its own trade tape scaled to a day (midnight UTC is busier than the daily average); "
    "klines ADV is kept for the klines-only symbols.",
    "Impact is the size term of the visible-book walk, not a metaorder impact fitted on executed trades: the "
    "captures hold no order of ours.",
    "Funding and opportunity cost are not in the MAPE: the walk holds neither.",
]
