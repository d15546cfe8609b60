"""Cost model commands: ``surge cost fit`` (tables from captures), ``load`` (into Redis), ``show``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
cost_app = typer.Typer(help="The transaction-cost model (cost-v3): fit tables from captures, load them into "
                       "Redis, show them.", no_args_is_help=True)

DEFAULT_HOLDOUT = ("2024-07-19", "2024-08-09")


@cost_app.command("fit")
def fit(
    data: Annotated[list[Path], typer.Option("--data", "-d", help="Capture and/or klines file or folder "
                                             "(repeatable; folders are searched recursively)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for cost_tables.json and cost_report.md")],
    notional: Annotated[float, typer.Option(help="Reference notional N0 of the slippage tables (USDT)")] = 10_000.0,
    sample_every_ms: Annotated[int, typer.Option(help="Walk the books every this many ms of recorded time")] = 250,
    min_samples: Annotated[int, typer.Option(help="Samples a regime needs for its own entry")] = 50,
    holdout_day: Annotated[list[str] | None, typer.Option(
        help="UTC day (YYYY-MM-DD) held out of the fit for the MAPE (repeatable; 'none' for no holdout)")] = None,
    horizon_min: Annotated[float, typer.Option(help="MAPE: exit this many minutes after entry")] = 1.0,
    adv_source: Annotated[str, typer.Option(help="auto | klines | captures")] = "auto",
) -> None:
    """Fit slippage quantiles and impact per venue and regime from depth captures; write the versioned artifact."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from services.costfit import FitConfig, Session, run_fit

    missing = [str(p) for p in data if not p.exists()]
    if missing:
        console.print(f"[red]not found:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    if adv_source not in ("auto", "klines", "captures"):
        console.print(f"[red]unknown ADV source {adv_source!r}[/red]; choose auto, klines or captures")
        raise typer.Exit(2)
    days = DEFAULT_HOLDOUT if holdout_day is None else tuple(d for d in holdout_day if d.lower() != "none")
    cfg_kwargs: dict[str, object] = {"sample_every_ms": sample_every_ms, "min_samples": min_samples,
                                     "holdout_days": days, "mape_horizon_min": horizon_min,
                                     "adv_source": adv_source}
    try:
        defaults = FitConfig()
        grid = tuple(sorted({*defaults.notionals, notional}))
        cfg = FitConfig(notional_usd=notional, notionals=grid, **cfg_kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def on_sessions(sessions: object) -> None:
            for s in sessions:  # type: ignore[attr-defined]
                tasks[s.name] = bar.add_task(f"{s.venue} {s.name}", total=s.lines)

        def progress(session: Session, done: int, total: int) -> None:
            bar.update(tasks[session.name], completed=total if done < 0 else done)

        try:
            result = run_fit(data, cfg, progress=progress, on_sessions=on_sessions)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    artifact, report = result.write(out)
    doc = result.doc
    console.print(f"wrote {artifact} ({doc['version']}) and {report}: {doc['diagnostics']['samples']['fit']} fit "
                  f"and {doc['diagnostics']['samples']['holdout']} held-out samples, "
                  f"{time.perf_counter() - started:.1f}s")
    mape = doc["diagnostics"].get("mape") or {}
    for venue, per in mape.get("venues", {}).items():
        for n, res in per["notionals"].items():
            m = res["table"]
            console.print(f"  {venue} {int(n):>7,} USDT: MAPE exec {m['exec']['mape_pct']:.1f} % "
                          f"(WAPE {m['exec']['wape_pct']:.1f} %), total {m['total']['mape_pct']:.2f} %")


@cost_app.command("load")
def load(
    tables: Annotated[Path | None, typer.Option(help="Artifact to load (default: the packaged one)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL (default: SURGE_REDIS_URL or the embedded "
                                                  "one)")] = None,
    activate: Annotated[bool, typer.Option(help="Make it the active version")] = True,
) -> None:
    """Load a table artifact into Redis (one hash per version; the decision stages pick it up within the TTL)."""
    import redis

    from streams.decision.cost import CostTables, load_into_redis, packaged_tables
    from streams.runtime.settings import Settings
    from streams.storage.cache import open_redis

    try:
        artifact = CostTables.load(tables) if tables is not None else packaged_tables()
    except (OSError, ValueError, KeyError) as exc:
        console.print(f"[red]cannot read the cost tables:[/red] {exc}")
        raise typer.Exit(2) from exc
    url = redis_url or Settings.defaults().redis_connection_url()
    try:
        key = load_into_redis(open_redis(url), artifact, activate=activate)
    except redis.RedisError as exc:
        console.print(f"[red]Redis at {url} refused the tables:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"loaded {artifact.version} into {key}{' (active)' if activate else ''}")


@cost_app.command("show")
def show(
    tables: Annotated[Path | None, typer.Option(help="Artifact (default: the packaged one)")] = None,
    venue: Annotated[str, typer.Option(help="spot | usdm")] = "spot",
) -> None:
    """Print one venue's slippage quantiles and impact per regime."""
    from streams.decision.cost import POOLED, QUANTILES, CostTables, packaged_tables
    from streams.runtime.regimes import REGIME_LABELS, UNKNOWN_REGIME

    artifact = CostTables.load(tables) if tables is not None else packaged_tables()
    if venue not in ("spot", "usdm"):
        console.print(f"[red]unknown venue {venue!r}[/red]; choose spot or usdm")
        raise typer.Exit(2)
    table = Table("regime", "n", *QUANTILES, "lam", "psi", "conf", "fallback",
                  title=f"{artifact.model_version} {venue}, N0 {artifact.notional_usd:,.0f} (bps)")
    for regime in (*REGIME_LABELS, UNKNOWN_REGIME, POOLED):
        e = artifact.entry(venue, regime)
        table.add_row(regime or "(unknown)", str(e.n), *(f"{e.quantiles[q]:.3f}" for q in QUANTILES),
                      f"{e.impact_lambda:.2f}", f"{e.impact_psi:.3f}", f"{e.confidence:.2f}", e.fallback or "-")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(cost_app, name="cost")
