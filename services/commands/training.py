"""``surge train`` and ``surge score``: model artifacts from 1-minute klines, and batch scoring with them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def _files(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for its data files in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise typer.BadParameter(f"{p} does not exist")
    return out


def _horizons(text: str) -> tuple[int, ...]:
    try:
        hs = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"horizons must be comma-separated minutes, got {text!r}") from exc
    if not hs or any(h < 1 for h in hs) or len(set(hs)) != len(hs):
        raise typer.BadParameter(f"horizons must be distinct positive minutes, got {text!r}")
    return hs


def train(
    data: Annotated[list[Path], typer.Option("--data", help="Training kline file(s) (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="Artifact folder to write")],
    horizons: Annotated[str, typer.Option(help="Comma-separated horizons in minutes")] = "5,10,30",
    gamma: Annotated[float, typer.Option(help="Focal-loss gamma (0 = log loss)")] = 1.5,
    eval_data: Annotated[list[Path] | None, typer.Option("--eval", help="Held-out evaluation file(s)")] = None,
    objective: Annotated[str, typer.Option(help="Objective to ship: focal | logloss (both are reported)")] = "focal",
    theta_up: Annotated[float, typer.Option(help="Upper barrier, fraction of the entry price")] = 0.006,
    theta_dn: Annotated[float, typer.Option(help="Lower barrier, fraction of the entry price")] = 0.004,
    folds: Annotated[int, typer.Option(help="Purged CV folds")] = 5,
    rounds: Annotated[int, typer.Option(help="Boosting rounds")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed")] = 7,
    class_weight: Annotated[str, typer.Option(help="balanced | none (uniqueness weights only)")] = "balanced",
    lambda_l2: Annotated[float, typer.Option(help="LightGBM L2 leaf penalty (weights have mean 1)")] = 10.0,
    monotone: Annotated[str, typer.Option(help="Comma-separated features the forecast may only rise with")] = "",
    calibration: Annotated[str, typer.Option(help="isotonic | platt | beta | temperature")] = "isotonic",
    calibration_days: Annotated[float, typer.Option(
        help="Fit the calibration on the out-of-fold scores of the last N days of training (0: all)")] = 0.0,
    variants: Annotated[int | None, typer.Option(
        help="Also evaluate every variant (weights, monotone, objective, calibration) on this horizon and "
             "report them all in the card")] = None,
    pool: Annotated[list[Path] | None, typer.Option(
        "--pool", help="Other symbols' kline files for the pooled variant (with --variants)")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output")] = False,
) -> None:
    """Train calibrated multi-horizon LightGBM models and export an infer-stage artifact with its model card."""
    from services.training.dataset import DataError
    from services.training.train import TrainConfig
    from services.training.train import train as run_training

    if objective not in ("focal", "logloss"):
        raise typer.BadParameter("objective must be focal or logloss")
    if class_weight not in ("balanced", "none"):
        raise typer.BadParameter("class-weight must be balanced or none")
    try:
        cfg = TrainConfig(horizons=_horizons(horizons), gamma=gamma, objective=objective,  # type: ignore[arg-type]
                          theta_up=theta_up, theta_dn=theta_dn, folds=folds, num_boost_round=rounds, seed=seed,
                          class_weight=class_weight,  # type: ignore[arg-type]
                          monotone_increasing=tuple(m.strip() for m in monotone.split(",") if m.strip()),
                          calibration=calibration,  # type: ignore[arg-type]
                          calibration_recent_days=calibration_days, lambda_l2=lambda_l2)
        card = run_training(_files(data), out, cfg, eval_data=_files(eval_data or []), quiet=quiet,
                            command="surge " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                            variants_horizon=variants, pool_data=_files(pool or []))
    except (DataError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for h, m in card["metrics"]["eval"].items():
        console.print(f"h={h}: eval n={m['n']} base={m['base_rate']:.4f} Brier {m['brier']:.5f} vs base rate "
                      f"{m['brier_base_rate']:.5f} (skill {m['brier_skill']:.4f}), ECE {100 * m['ece']:.2f} pp, "
                      f"PR-AUC {m['pr_auc']:.4f}")
    console.print(f"[green]{card['model_version']}[/green] -> {out} (register: surge models register {out})")


def score(
    model: Annotated[Path, typer.Option("--model", help="Model artifact folder")],
    data: Annotated[list[Path], typer.Option("--data", help="Kline or capture file(s) to score")],
    out: Annotated[Path, typer.Option("--out", help="Output parquet file")],
    kind: Annotated[str, typer.Option(help="auto | klines | capture")] = "auto",
) -> None:
    """Calibrated p_up_<H> for every row of the data (symbol, ts = bar open time ms or event time ms)."""
    from services.training.dataset import DataError
    from services.training.score import score as run_score
    from streams.infer.model import ModelError

    if kind not in ("auto", "klines", "capture"):
        raise typer.BadParameter("kind must be auto, klines or capture")
    try:
        frame = run_score(model, _files(data), out, kind=kind)  # type: ignore[arg-type]
    except (DataError, ModelError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"scored {len(frame)} rows with {frame.attrs['model_version']} -> {out}")


def evaluate(
    data: Annotated[list[Path], typer.Option("--data", help="Kline file(s), oldest first (repeatable)")],
    walk_forward: Annotated[bool, typer.Option("--walk-forward", help="Walk-forward refits (the only mode)")] = False,
    step: Annotated[str, typer.Option(help="month | week: length of each test window")] = "month",
    horizon: Annotated[int, typer.Option(help="Horizon in minutes")] = 30,
    min_train_days: Annotated[float, typer.Option(help="Days of data before the first test window")] = 28.0,
    window_days: Annotated[float, typer.Option(help="Rolling training window in days (0: expanding)")] = 0.0,
    class_weight: Annotated[str, typer.Option(help="balanced | none")] = "none",
    lambda_l2: Annotated[float, typer.Option(help="LightGBM L2 leaf penalty (weights have mean 1)")] = 270.0,
    monotone: Annotated[str, typer.Option(help="Comma-separated monotone-increasing features")] =
        "parkinson_5m,parkinson_1h,rv_1h",
    calibration: Annotated[str, typer.Option(help="isotonic | platt | beta | temperature")] = "temperature",
    calibration_days: Annotated[float, typer.Option(help="Recent calibration window in days (0: all)")] = 15.0,
    objective: Annotated[str, typer.Option(help="focal | logloss")] = "logloss",
    folds: Annotated[int, typer.Option(help="Purged CV folds inside each training window")] = 5,
    out: Annotated[Path | None, typer.Option("--out", help="Write the report as JSON (and .md beside it)")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output")] = False,
) -> None:
    """Walk-forward evaluation with purge and embargo: ECE / Brier / AUC per fold and a PSI/KS drift test that
    says when a retrain is due (defaults: the shipped klines model's recipe)."""
    import json

    from services.training.dataset import DataError, klines_frame
    from services.training.train import TrainConfig, strict_json
    from services.training.walkforward import report_markdown
    from services.training.walkforward import walk_forward as run_walk_forward

    if not walk_forward:
        raise typer.BadParameter("only --walk-forward is implemented")
    try:
        cfg = TrainConfig(horizons=(horizon,), class_weight=class_weight,  # type: ignore[arg-type]
                          monotone_increasing=tuple(m.strip() for m in monotone.split(",") if m.strip()),
                          calibration=calibration,  # type: ignore[arg-type]
                          calibration_recent_days=calibration_days, objective=objective,  # type: ignore[arg-type]
                          folds=folds, lambda_l2=lambda_l2)
        frame = klines_frame(_files(data))
        report = run_walk_forward(frame, cfg, horizon=horizon, step=step, min_train_days=min_train_days,
                              window_days=window_days, log=(lambda _m: None) if quiet else console.print)
    except (DataError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    text = report_markdown(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(strict_json(report), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(text, encoding="utf-8")
    typer.echo(text)
    raise typer.Exit(1 if report["summary"]["retrain_due_now"] else 0)


def retrain(
    data: Annotated[list[Path], typer.Option("--data", help="Kline file(s) to retrain on (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="Artifact folder to write")],
    eval_data: Annotated[list[Path] | None, typer.Option("--eval", help="Held-out evaluation file(s)")] = None,
    since_hours: Annotated[float, typer.Option(help="Realized outcomes of the last N hours (0: all)")] = 0.0,
    min_outcomes: Annotated[int, typer.Option(help="Refuse with fewer realized labels than this")] = 1,
    max_ece: Annotated[float, typer.Option(help="Gate: largest calibration ECE of any horizon")] = 0.05,
    horizons: Annotated[str, typer.Option(help="Comma-separated horizons in minutes")] = "5,10,30",
    calibration_days: Annotated[float, typer.Option(help="Recent calibration window in days")] = 15.0,
) -> None:
    """Closed loop: realized outcomes from the warehouse -> retrain (the shipped klines recipe) -> gate ->
    register -> canary at SURGE_CANARY_SHARE (5-10 %); every step in audit_logs."""
    import time

    from services.commands.models import os_actor
    from services.training.dataset import DataError
    from services.training.retrain import RetrainError
    from services.training.retrain import retrain as run_retrain
    from services.training.train import KLINES_RECIPE, TrainConfig
    from streams.runtime.clock import LiveClock
    from streams.runtime.settings import Settings
    from streams.storage.registry import RegistryError
    from streams.storage.warehouse import apply_ddl_from, open_warehouse_from

    settings = Settings()
    warehouse = open_warehouse_from(settings)
    apply_ddl_from(warehouse, settings)
    since_us = int((time.time() - since_hours * 3600) * 1e6) if since_hours > 0 else 0
    try:
        cfg = TrainConfig(horizons=_horizons(horizons), **{**KLINES_RECIPE,
                                                           "calibration_recent_days": calibration_days})
        result = run_retrain(warehouse, LiveClock(), _files(data), out, cfg, canary_share=settings.canary_share,
                             eval_data=_files(eval_data or []), since_us=since_us, min_outcomes=min_outcomes,
                             max_ece=max_ece, actor=f"retrain:{os_actor()}",
                             command="surge " + " ".join(shlex.quote(a) for a in sys.argv[1:]), log=console.print)
    except (DataError, RetrainError, RegistryError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    finally:
        warehouse.close()
    colour = "green" if result.deployed else "yellow"
    console.print(f"[{colour}]{result.model_version}[/{colour}]: "
                  f"{'canary deployed' if result.deployed else 'not deployed'} ({result.reason})")
    raise typer.Exit(0 if result.deployed else 1)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("score")(score)
    app.command("evaluate")(evaluate)
    app.command("retrain")(retrain)
