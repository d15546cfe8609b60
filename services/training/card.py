"""The human side of a model card: markdown from card.json and the reliability-diagram PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pp(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f} pp"


def labels_text(lab: dict[str, Any]) -> str:
    """The card's ``labels``: one barrier for every horizon (``theta_up`` / ``theta_dn``), or per horizon in bps."""
    if "theta_up" in lab:
        widths = f"upper +{lab['theta_up']:.2%}, lower -{lab['theta_dn']:.2%}"
    else:
        widths = "upper and lower " + ", ".join(
            f"{_f(bps, 2)} bps at {h} min" for h, bps in lab["barrier_bps"].items())
    return (f"triple barrier on {lab.get('bars', '1-minute')} bars, entry at the bar close, {widths}; both in one "
            f"bar = {lab['both_in_one_bar']}; timeout = {lab['timeout']}")


def card_markdown(card: dict[str, Any]) -> str:
    tr = card["training"]
    cfg = card["config"]
    lab = card["labels"]
    lines = [
        f"# Model card: {card['model_version']}",
        "",
        f"* **Intended use**: {card['intended_use']}.",
        f"* **Feature version** `{card['feature_version']}` ({len(cfg['features_used'])} features); "
        f"horizons (min) {card['horizons_min']}.",
        f"* **Labels**: {labels_text(lab)}.",
        f"* **Model**: LightGBM per horizon, shipped objective **{card['objective']}**"
        f"{' (gamma ' + str(cfg['gamma']) + ')' if card['objective'] == 'focal' else ''}, "
        f"{cfg['num_boost_round']} rounds, {cfg['num_leaves']} leaves, learning rate {cfg['learning_rate']}, "
        f"L2 {cfg['lambda_l2']:g}; weights: uniqueness={cfg['uniqueness']}, classes {cfg['class_weight']}"
        + (f"; monotone increasing in {', '.join(f'`{n}`' for n in cfg['monotone_increasing'])}"
           if cfg.get("monotone_increasing") else "") + ".",
        f"* **Validation**: purged {cfg['folds']}-fold CV on label spans, embargo {cfg['embargo_frac']:.0%} of the "
        f"training span; {cfg.get('calibration', 'isotonic')} calibration fitted on out-of-fold scores"
        + (f" of the last {_f(float(cfg['calibration_recent_days']), 0)} days of training (recent window)"
           if cfg.get("calibration_recent_days") else "")
        + " (cross-fitted on the other folds for the OOF metrics).",
        f"* **Training window**: {tr['train_window'].get('first_bar_utc', 'n/a')} to "
        f"{tr['train_window'].get('last_bar_utc', 'n/a')} UTC; "
        + (f"**evaluation window**: {tr['eval_window'].get('first_bar_utc', 'n/a')} to "
           f"{tr['eval_window'].get('last_bar_utc', 'n/a')} UTC (held out; labels of training samples never reach "
           "into it)." if tr["eval_window"] else "no held-out evaluation window."),
        f"* **ONNX parity**: max |onnx - native| = {card['onnx_parity']['max_abs_diff_raw']:.3g} (raw), "
        f"{card['onnx_parity']['max_abs_diff_calibrated']:.3g} (calibrated) over {card['onnx_parity']['rows']} rows, "
        f"half of them with {card['onnx_parity']['nan_share_of_half']:.0%} of inputs set to NaN (the calibrated "
        "difference is the raw one times the slope of the calibration table: an isotonic table has near-vertical "
        "steps); artifact "
        f"{card['artifact_bytes']} bytes.",
        "",
        "## Held-out evaluation (what the infer stage serves: ONNX + calibration table)",
        "",
    ]
    ev = card["metrics"]["eval"]
    if ev:
        lines += [
            "| horizon | n | base rate | mean p | Brier | Brier base rate | skill | skill (period rate) | ECE "
            "| ECE (quantile) | PR-AUC | ROC-AUC | log loss |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for h, m in ev.items():
            lines.append(f"| {h} | {m['n']} | {_f(m['base_rate'])} | {_f(m['mean_p'])} | {_f(m['brier'], 5)} | "
                         f"{_f(m['brier_base_rate'], 5)} | {_f(m['brier_skill'])} | "
                         f"{_f(m.get('brier_skill_period'))} | {_pp(m['ece'])} | "
                         f"{_pp(m['ece_quantile'])} | {_f(m['pr_auc'])} | {_f(m['roc_auc'])} | {_f(m['log_loss'])} |")
        lines += ["", "Brier base rate: the constant forecast of the training base rate (skill against it); skill "
                  "(period rate): against the evaluation period's own rate, known only afterwards. Hit@k: share of UP "
                  "among the k highest forecasts (non-overlapping: at most one open label span per symbol).", "",
                  "| horizon | " + " | ".join(f"hit@{k}" for k in next(iter(ev.values()))["hit_at_k"])
                  + " | " + " | ".join(f"hit@{k} non-overlapping" for k in next(iter(ev.values()))["hit_at_k"])
                  + " |",
                  "| --- |" + " --- |" * (2 * len(next(iter(ev.values()))["hit_at_k"]))]
        for h, m in ev.items():
            plain = " | ".join(_f(v, 3) for v in m["hit_at_k"].values())
            nonover = " | ".join(f"{_f(v['hit_rate'], 3)} ({v['chosen']})"
                                 for v in m.get("hit_at_k_nonoverlapping", {}).values())
            lines.append(f"| {h} | {plain} | {nonover} |")
    else:
        lines.append("No evaluation data was given.")
    lines += ["", "## Out-of-fold (training period, cross-fitted calibration)", "",
              "| horizon | n | base rate | Brier | Brier base rate | skill | ECE | PR-AUC | ROC-AUC |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h, m in card["metrics"]["oof"].items():
        lines.append(f"| {h} | {m['n']} | {_f(m['base_rate'])} | {_f(m['brier'], 5)} | {_f(m['brier_base_rate'], 5)} "
                     f"| {_f(m['brier_skill'])} | {_pp(m['ece'])} | {_f(m['pr_auc'])} | {_f(m['roc_auc'])} |")
    lines += variants_markdown(card)
    lines += ["", "## Focal loss vs plain log loss (both calibrated as shipped)", "",
              "| horizon | objective | OOF Brier skill | OOF PR-AUC | OOF ECE | eval Brier skill | eval PR-AUC | "
              "eval ECE | eval log loss |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h, per in card["objective_comparison"].items():
        for obj, m in per.items():
            e = m.get("eval", {})
            lines.append(f"| {h} | {obj}{' (shipped)' if obj == card['objective'] else ''} | "
                         f"{_f(m['oof']['brier_skill'])} | {_f(m['oof']['pr_auc'])} | {_pp(m['oof']['ece'])} | "
                         f"{_f(e.get('brier_skill'))} | {_f(e.get('pr_auc'))} | {_pp(e.get('ece'))} | "
                         f"{_f(e.get('log_loss'))} |")
    lines += ["", "## Reliability", "", "![reliability diagram](reliability.png)", ""]
    for h, m in ev.items():
        lines.append(f"Horizon {h} min (evaluation), bins of the calibrated forecast:")
        lines.append("")
        lines.append("| bin | n | mean forecast | observed |")
        lines.append("| --- | --- | --- | --- |")
        for b in m["reliability"]:
            if b["n"]:
                lines.append(f"| [{b['lo']:.1f}, {b['hi']:.1f}) | {b['n']} | {_f(b['mean_p'])} | {_f(b['freq'])} |")
        lines.append("")
    lines += ["## Feature importance (normalised gain, mean over horizons)", ""]
    lines += [f"{i + 1}. `{n}` {v:.3f}" for i, (n, v) in enumerate(card["feature_importance"][:20])]
    lines += ["", "## Data", "", "| role | file | rows | first bar (UTC) | last bar (UTC) | sha256 |",
              "| --- | --- | --- | --- | --- | --- |"]
    for role, files in (("train", tr["train_files"]), ("eval", tr["eval_files"])):
        for f in files:
            lines.append(f"| {role} | `{f['file']}` | {f.get('rows', 'n/a')} | {f.get('first_open_utc', 'n/a')} | "
                         f"{f.get('last_open_utc', 'n/a')} | `{f['sha256']}` |")
    if not tr["train_files"]:
        lines += ["", f"No data files: {tr['source']}."]
    lines += ["", f"Command: `{tr['command']}`", "", "## Limitations", ""]
    lines += [f"* {s}" for s in card["limitations"]]
    return "\n".join(lines) + "\n"


def variants_markdown(card: dict[str, Any]) -> list[str]:
    """Every variant tried (``services.training.variants``), winners and losers, on the evaluation period."""
    var = card.get("variants")
    if not var:
        return []
    lines = ["", f"## Every variant tried (horizon {var['horizon']} min, evaluation period)", "",
             "Each row is scored as it would be served (booster + calibration table). Calibration windows: "
             "*all OOF* = every out-of-fold score of training; *recent OOF* = the out-of-fold scores of the last "
             f"{_f(float(var['recent_days']), 0)} days only; *recent hold-out* = a booster fitted on the bars "
             "before that window (purged) and calibrated on it out of sample. Skill (train rate) is against the "
             "training base rate; skill (period rate) against the evaluation period's own rate, known only "
             "afterwards. **Selection caveat**: the shipped row was chosen with these evaluation numbers, so its "
             "row is optimistic; the walk-forward evaluation is the unbiased check.", "",
             "| variant | objective | L2 | calibration | window | ECE | ROC-AUC | PR-AUC | Brier | skill (train rate) "
             "| skill (period rate) | mean p | shipped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in var["rows"]:
        lines.append(f"| {v['variant']} | {v['objective']} | {v.get('lambda_l2', 'n/a')} | {v['calibration']} | "
                     f"{v['calibration_window']} | "
                     f"{_pp(v['ece'])} | {_f(v['roc_auc'], 3)} | {_f(v['pr_auc'], 3)} | {_f(v['brier'], 5)} | "
                     f"{_f(v['brier_skill'])} | {_f(v['brier_skill_period'])} | {_f(v['mean_p'])} | "
                     f"{'**yes**' if v.get('shipped_config') else ''} |")
    if var.get("pool_files"):
        lines += ["", "Pooled symbols (training only, bars whose labels end before the evaluation period): "
                  + ", ".join(f"`{f['file']}` ({f.get('pooled_bars', 'n/a')} bars)" for f in var["pool_files"])]
    return lines


def plot_reliability(card: dict[str, Any], path: Path) -> None:
    """One panel per horizon: calibrated and raw evaluation forecasts (OOF when there is no evaluation) against
    the diagonal, with the forecast counts per bin below on a log scale."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps the backend choice out of the caller's process state
    import matplotlib.pyplot as plt

    metrics = card["metrics"]["eval"] or card["metrics"]["oof"]
    which = "evaluation" if card["metrics"]["eval"] else "out-of-fold"
    horizons = list(metrics)
    fig, axes = plt.subplots(2, len(horizons), figsize=(4.2 * len(horizons), 6.2),
                             gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    for j, h in enumerate(horizons):
        m = metrics[h]
        ax, hist = axes[0][j], axes[1][j]
        curves = [(m, f"calibrated ({which})", "o-")]
        oof = card["metrics"]["oof"].get(h)
        if card["metrics"]["eval"] and oof:
            curves.append((oof, "calibrated (out-of-fold)", "s:"))
        top = 0.0
        for src, label, style in curves:
            bins = src["reliability_quantile"]
            ax.plot([b["mean_p"] for b in bins], [b["freq"] for b in bins], style, ms=4, label=label)
            top = max([top] + [b["mean_p"] for b in bins] + [b["freq"] for b in bins])
        lim = min(1.0, max(top, 0.01) * 1.15)
        ax.plot([0, lim], [0, lim], color="grey", lw=0.8, ls="--", label="perfect")
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        ax.set_title(f"{h} min: ECE {100 * m['ece']:.2f} pp (raw model {100 * m.get('ece_raw', float('nan')):.1f}),"
                     f" Brier skill {m['brier_skill']:.3f}", fontsize=8)
        ax.set_xlabel("forecast P(up), equal-mass bins")
        ax.set_ylabel("observed frequency")
        ax.legend(fontsize=7, loc="upper left")
        centers = [(b["lo"] + b["hi"]) / 2 for b in m["reliability"]]
        hist.bar(centers, [max(b["n"], 0) for b in m["reliability"]], width=0.09, color="tab:blue", alpha=0.6)
        hist.set_yscale("symlog")
        hist.set_xlim(0, 1)
        hist.set_xlabel("forecast bin (calibrated)")
        hist.set_ylabel("count")
    fig.suptitle(f"{card['model_version']}: reliability on the {which} data", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
