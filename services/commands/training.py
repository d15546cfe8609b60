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
    quiet: Annotated[bool, typer.Option(help="No progress output")] = False,
) -> None:
    """Train calibrated multi-horizon LightGBM models and export an infer-stage artifact with its model card."""
    from services.training.dataset import DataError
    from services.training.train import TrainConfig
    from services.training.train import train as run_training

    if objective not in ("focal", "logloss"):
        raise typer.BadParameter("objective must be focal or logloss")
    try:
        cfg = TrainConfig(horizons=_horizons(horizons), gamma=gamma, objective=objective,  # type: ignore[arg-type]
                          theta_up=theta_up, theta_dn=theta_dn, folds=folds, num_boost_round=rounds, seed=seed)
        card = run_training(_files(data), out, cfg, eval_data=_files(eval_data or []), quiet=quiet,
                            command="surge " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
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


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("score")(score)
