"""``surge backtest``: recorded klines or captures through the live pipeline's cores and the matching engine."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.runtime.settings import Settings

console = Console(stderr=True)


def parse_time(text: str | None) -> int | None:
    """ISO date/time (UTC unless it says otherwise) or Unix seconds/ms/µs -> µs."""
    if text is None:
        return None
    s = text.strip()
    if s.isdigit():
        n = int(s)
        return n if n >= 10**14 else n * 1_000 if n >= 10**11 else n * 1_000_000
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def backtest(
    data: Annotated[list[Path], typer.Option("--data", help="Klines or capture file/folder (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json, trades.parquet, report.html")],
    model: Annotated[Path | None, typer.Option("--model", help="Model folder (default: the shipped klines model "
                                                               "for klines, else SURGE_MODEL_DIR)")] = None,
    mode: Annotated[str, typer.Option(help="Matching: conservative | neutral | aggressive")] = "conservative",
    latency_ms: Annotated[str, typer.Option("--latency-ms", help="Order latency distribution (ms): uniform:A-B, "
                                                                 "fixed:X, normal:M,SD, lognormal:MEDIAN,SIGMA")]
    = "uniform:10-100",
    start: Annotated[str | None, typer.Option("--from", help="First decision time (ISO UTC or Unix time)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Decisions before this time")] = None,
    seed: Annotated[int, typer.Option(help="Latency random seed")] = 7,
    capital: Annotated[float, typer.Option(help="Starting capital (quote currency)")] = 100_000.0,
    venue: Annotated[str | None, typer.Option(help="spot | usdm (default: from the data)")] = None,
    kline_spread_bps: Annotated[float, typer.Option(help="Klines: assumed full spread (bps) of the bar fill model")]
    = 1.0,
    profile: Annotated[str | None, typer.Option(help="Decision profile: conservative | balanced | aggressive "
                                                     "(SURGE_DECISION_PROFILE)")] = None,
    tau_a: Annotated[float | None, typer.Option(help="SURGE_TAU_A")] = None,
    kappa_a: Annotated[float | None, typer.Option(help="SURGE_KAPPA_A")] = None,
    tau_b: Annotated[float | None, typer.Option(help="SURGE_TAU_B")] = None,
    kappa_b: Annotated[float | None, typer.Option(help="SURGE_KAPPA_B")] = None,
    horizons: Annotated[str | None, typer.Option(help="SURGE_DECISION_HORIZONS, e.g. 30")] = None,
    store: Annotated[bool, typer.Option(help="Store the run in ClickHouse backtest_runs")] = True,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Klines: processes for the features (one symbol "
                                                             "each) and the inference; the result is the same")]
    = 1,
) -> None:
    """Backtest recorded data with the live features, model, decision core and risk state machine."""
    from services.backtest.engine import BacktestConfig, default_model, run
    from services.backtest.matching import MODE_NAMES
    from services.backtest.report import build_report, write_outputs
    from services.backtest.wheel import parse_latency

    missing = [str(p) for p in data if not p.exists()]
    if missing:
        console.print(f"[red]not found:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    if mode not in MODE_NAMES:
        console.print(f"[red]unknown mode {mode!r}[/red]; choose one of {', '.join(MODE_NAMES)}")
        raise typer.Exit(2)
    try:
        parse_latency(latency_ms)
        start_us, end_us = parse_time(start), parse_time(end)
        settings = Settings.with_overrides(decision_profile=profile, tau_a=tau_a, kappa_a=kappa_a, tau_b=tau_b,
                                           kappa_b=kappa_b, decision_horizons=horizons)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if model is None:
        model = default_model(data, settings)
    cfg = BacktestConfig(data=tuple(data), model_dir=model, mode=mode, latency=latency_ms, start_us=start_us,
                         end_us=end_us, seed=seed, capital=capital, kline_spread_bps=kline_spread_bps, venue=venue,
                         workers=workers)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]backtest[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("features + inference", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None, description="decisions + matching")

        try:
            result = run(cfg, settings, progress)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    report = build_report(result, settings.to_env())
    paths = write_outputs(result, report, out)
    if store:
        _store(settings, report)
    _print_summary(report, time.perf_counter() - started)
    console.print(f"wrote {paths['json']}, {paths['trades']}, {paths['html']}")


def _store(settings: Settings, report: dict[str, object]) -> None:
    from services.backtest.store import store_report
    from streams.storage.warehouse import WarehouseError

    try:
        table = store_report(settings, report, time.time_ns() // 1000)
        console.print(f"stored run {report['run_id']} in {table}")
    except (WarehouseError, OSError, RuntimeError) as exc:
        console.print(f"[yellow]run not stored in ClickHouse ({type(exc).__name__}: {exc}); the files have it[/yellow]")


def _print_summary(report: dict[str, object], seconds: float) -> None:
    met = report["metrics"]
    assert isinstance(met, dict)
    table = Table("metric", "value", title=f"backtest {report['run_id']} ({seconds:.1f} s)")
    for key in ("trades", "total_return", "annualized_return", "sharpe", "sortino", "max_drawdown", "win_rate",
                "avg_win", "avg_loss", "profit_factor", "fill_rate", "avg_slippage_bps", "fees", "avg_hold_s"):
        value = met.get(key)
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest)
