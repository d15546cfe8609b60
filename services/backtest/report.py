"""Backtest outputs: ``report.json`` (config, metrics, run info), ``trades.parquet`` and a self-contained
``report.html`` (figures embedded as base64 PNG: equity, drawdown, PnL by hour and by regime, calibration)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from services.backtest import metrics as m
from services.backtest.engine import BacktestResult

MAX_EQUITY_POINTS = 5_000


def run_id_of(result: BacktestResult) -> str:
    """Deterministic: the same data, model, settings and seed give the same run id."""
    doc = {"config": _config_doc(result), "model": result.info.get("model_version"),
           "n_trades": len(result.trades), "net": float(result.trades["net_pnl"].sum()) if len(result.trades) else 0}
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _config_doc(result: BacktestResult) -> dict[str, Any]:
    doc = asdict(result.config)
    doc["data"] = [str(p) for p in result.config.data]
    doc["model_dir"] = str(result.config.model_dir)
    return doc


def build_report(result: BacktestResult, settings_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    info = dict(result.info)
    info["actionable_signals"] = sum(1 for s in result.signals if s.decision in (1, 2))
    metrics = m.compute(result.trades, result.equity, result.config.capital, info)
    symbols = sorted(set(result.trades["symbol"])) if len(result.trades) else sorted({s.symbol for s in result.signals})
    t = result.equity["t_us"]
    return {
        "run_id": run_id_of(result),
        "kind": result.kind,
        "config": _config_doc(result),
        "settings": settings_doc or {},
        "symbols": symbols,
        "data_from_us": int(t.iloc[0]) if len(t) else 0,
        "data_to_us": int(t.iloc[-1]) if len(t) else 0,
        "metrics": metrics,
        "info": info,
        "signals": {"total": len(result.signals), "actionable": info["actionable_signals"]},
    }


def write_outputs(result: BacktestResult, report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "trades": out / "trades.parquet", "html": out / "report.html"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    result.trades.to_parquet(paths["trades"], index=False)
    paths["html"].write_text(render_html(result, report), encoding="utf-8")
    return paths


# --- html --------------------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thin(equity: pd.DataFrame) -> pd.DataFrame:
    if len(equity) <= MAX_EQUITY_POINTS:
        return equity
    idx = np.unique(np.linspace(0, len(equity) - 1, MAX_EQUITY_POINTS).astype(int))
    return equity.iloc[idx]


def figures(result: BacktestResult, report: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    met = report["metrics"]
    eq = _thin(result.equity)
    t = pd.to_datetime(eq["t_us"], unit="us", utc=True)
    out: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.plot(t, eq["equity"], lw=1)
    ax.set_title("Equity (marked to market)")
    ax.grid(alpha=0.3)
    out["equity"] = _png(fig)
    fig, ax = plt.subplots(figsize=(9, 2.5))
    dd = m.drawdown(eq["equity"].to_numpy(dtype=np.float64))
    ax.fill_between(t, -dd * 100, 0, color="tab:red", alpha=0.5)
    ax.set_title("Drawdown (%)")
    ax.grid(alpha=0.3)
    out["drawdown"] = _png(fig)
    for key, title in (("by_hour", "Net PnL by hour of entry (UTC)"), ("by_regime", "Net PnL by regime")):
        fig, ax = plt.subplots(figsize=(9, 2.8))
        rows = met[key]
        label = "hour" if key == "by_hour" else "regime"
        names = [str(r[label]) for r in rows]
        values = [r["net_pnl"] for r in rows]
        ax.bar(names, values, color=["tab:green" if x > 0 else "tab:red" for x in values])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=45 if key == "by_regime" else 0, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
        out[key] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    cal = met["calibration"]
    if cal:
        ax.plot([r["p_mean"] for r in cal], [r["realized"] for r in cal], "o-", label="signals")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.set_xlabel("p_up of the signal")
    ax.set_ylabel("realized: target first")
    ax.set_title("Calibration")
    ax.legend()
    out["calibration"] = _png(fig)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>no trades</em></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    return html.escape(str(v))


def render_html(result: BacktestResult, report: dict[str, Any]) -> str:
    met = report["metrics"]
    figs = figures(result, report)
    scalar = {k: v for k, v in met.items() if not isinstance(v, list | dict)}
    scalar.update({f"latency_{k}_ms": v for k, v in met["latency_ms"].items()})
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in scalar.items())
    cfg = html.escape(json.dumps(report["config"], indent=1))
    imgs = {k: f'<img src="{v}" alt="{k}">' for k, v in figs.items()}
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>surge backtest {report['run_id']}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right;font-size:13px}}img{{max-width:100%}}</style>
</head><body>
<h1>Backtest {report['run_id']}</h1>
<p>{html.escape(report['kind'])}, mode <b>{html.escape(report['config']['mode'])}</b>, model
{html.escape(str(report['info'].get('model_version')))}, symbols {html.escape(', '.join(report['symbols']) or '-')}.
Features, inference, decisions and risk ran through the live pipeline's cores; fills through the matching engine.</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Equity</h2>{imgs['equity']}{imgs['drawdown']}
<h2>PnL by hour</h2>{imgs['by_hour']}{_table(met['by_hour'])}
<h2>PnL by regime</h2>{imgs['by_regime']}{_table(met['by_regime'])}
<h2>By horizon</h2>{_table(met['by_horizon'])}
<h2>Calibration</h2>{imgs['calibration']}{_table(met['calibration'])}
<h2>Configuration</h2><pre>{cfg}</pre>
</body></html>
"""
