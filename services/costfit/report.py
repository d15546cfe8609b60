"""The fit report (markdown) written beside the table artifact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.decision.cost import POOLED, QUANTILES
from streams.runtime.regimes import REGIME_LABELS, UNKNOWN_REGIME


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(doc: Mapping[str, Any]) -> str:
    fit = doc["fit"]
    diag = doc["diagnostics"]
    lines = [
        f"# Cost tables {doc['version']} ({doc['model']})",
        "",
        f"Fitted {doc['fitted_at']} by `surge cost fit` from {len(diag['sessions'])} capture session(s) and "
        f"{sum(1 for s in doc['sources'] if s['role'] == 'klines')} kline file(s). Reference notional "
        f"N0 = {fit['notional_usd']:,.0f} USDT; books walked every {fit['sample_every_ms']} ms of recorded time at "
        f"{', '.join(f'{n:,.0f}' for n in fit['notionals'])} USDT. Held-out UTC days (not fitted): "
        f"{', '.join(fit['holdout_days']) or 'none'}.",
        "",
        "Slippage = round-trip walk cost beyond the touch at N0 (bps of mid). Impact = `lam (V/ADV)^psi` on the "
        "mean walk cost over the notional grid (log-space least squares). `fallback`: `venue` = too few samples, "
        "the venue's pooled entry; `worst` = the unknown regime, element-wise max of the fitted regimes.",
        "",
        "## Sessions",
        "",
        "| session | venue | split | samples | regimes known | ADV (USDT/day) | ADV source |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in diag["sessions"]:
        lines.append(f"| {s['session']} | {s['venue']} | {s['split']} | {s['samples']} | {s['known']} | "
                     f"{s['adv_usd']:,.0f} | {s['adv_source']} |")
    for skipped in diag.get("skipped", []):
        lines.append(f"| {skipped['session']} | {skipped['venue']} | skipped | 0 | - | - | {skipped['reason']} |")
    for venue, table in doc["tables"].items():
        lines += ["", f"## {venue}", "",
                  f"| regime | own samples | n used | {' | '.join(QUANTILES)} | mean | lam | psi | r2 | conf | "
                  "fallback |",
                  "|---|---|---|" + "---|" * len(QUANTILES) + "---|---|---|---|---|---|"]
        for regime in (*REGIME_LABELS, UNKNOWN_REGIME, POOLED):
            e = table[regime]
            im = e["impact"]
            name = regime or "(unknown)"
            own = e.get("own_n", "-") if regime else "-"
            lines.append(f"| {name} | {own} | {e['n']} | " + " | ".join(_fmt(e["quantiles"][q]) for q in QUANTILES)
                         + f" | {_fmt(e['mean_bps'])} | {_fmt(im['lambda'], 2)} | {_fmt(im['psi'])} | "
                         f"{_fmt(im.get('r2'))} | {_fmt(e['confidence'], 2)} | {e['fallback'] or '-'} |")
    lines += ["", "## ADV", "", "| venue:symbol | ADV (USDT/day) | source | klines ADV |", "|---|---|---|---|"]
    for key, row in doc["adv_usd"].items():
        lines.append(f"| {key} | {row['adv_usd']:,.0f} | {row['source']} | "
                     f"{_fmt(row.get('klines_adv_usd'), 0) if row.get('klines_adv_usd') else '-'} |")
    mape = diag.get("mape")
    if mape and mape.get("venues"):
        lines += ["", f"## Realized cost MAPE on the held-out days (exit {mape['horizon_min']:g} min after entry)",
                  "",
                  "Realized = the book walked at entry plus the book walked at exit (both half spreads and both "
                  "walks); `exec` compares spread + slippage + impact, `total` adds the round-trip taker fee to "
                  "both. LONG and SHORT round trips of every held-out sample. `table` = `CostModel.estimate` at "
                  "p50 without a book (what the decision stage has today), `book` = the live book at entry walked "
                  "both ways, `cost-v2` = the previous hand-set slippage table with the same fees. Coverage: share "
                  "of realized execution costs at or below the table's p95 / p97.5 estimate.",
                  "",
                  "Execution MAPE is dominated by near-zero realized costs (a BTCUSDT spot round trip at 10k is "
                  "usually one tick, 0.0016 bps, so a 0.25 bps walk is an APE of 15,000 %): read WAPE "
                  "(sum |error| / sum realized) and the median APE beside it. Beyond N0 the size term is added to "
                  "the N0 quantile, so the table's quantiles do not widen with size (coverage at 100k).",
                  "",
                  "| venue | notional | estimator | n | MAPE exec % | median APE % | WAPE exec % | bias bps | "
                  "MAPE total % | coverage p95 / p97.5 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for venue, per in mape["venues"].items():
            for notional, res in per["notionals"].items():
                cov = res["coverage"]
                for name in ("table", "book", "cost-v2"):
                    m, t = res[name]["exec"], res[name]["total"]
                    cover = f"{cov['p95']:.3f} / {cov['p97.5']:.3f}" if name == "table" else ""
                    lines.append(f"| {venue} | {int(notional):,} | {name} | {m['n']} | {m['mape_pct']:.1f} | "
                                 f"{m['median_ape_pct']:.1f} | {m['wape_pct']:.1f} | {m['bias_bps']:+.4f} | "
                                 f"{t['mape_pct']:.2f} | {cover} |")
    notes = diag.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in notes]
    lines += ["", "## Sources", "", "| file | role | sha256 |", "|---|---|---|"]
    for s in doc["sources"]:
        lines.append(f"| {s['file']} | {s['role']} | `{s['sha256'][:16]}` |")
    return "\n".join(lines) + "\n"
