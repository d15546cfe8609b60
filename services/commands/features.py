"""Feature commands: ``surge features compute`` (batch features of captures or klines), ``list``, ``docs``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
features_app = typer.Typer(help="The feature library: batch computation, the feature table, docs.",
                           no_args_is_help=True)


@features_app.command("compute")
def compute(
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="Capture or klines file/folder (repeatable)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write")],
    symbol: Annotated[str | None, typer.Option(help="Klines: the symbol, if the file names do not tell")] = None,
    venue: Annotated[str | None, typer.Option(help="Captures: spot | usdm (default: detected)")] = None,
) -> None:
    """Compute the features of raw captures or 1-minute klines with the stream stage's own kernel."""
    from streams.features.batch import compute_inputs_frame, write_frame
    from streams.features.definitions import FEATURE_VERSION
    from streams.runtime.settings import Settings

    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        console.print(f"[red]not found:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    if venue is not None and venue not in ("spot", "usdm"):
        console.print(f"[red]unknown venue {venue!r}[/red]; choose spot or usdm")
        raise typer.Exit(2)
    try:  # captures are replayed with the ingest stage's SURGE_* settings, read here and passed down
        settings = Settings()
    except Exception as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc
    started = time.perf_counter()
    try:
        frame = compute_inputs_frame(inputs, symbol=symbol, venue=venue, settings=settings)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    write_frame(frame, output)
    symbols = sorted(frame["symbol"].unique()) if len(frame) else []
    console.print(f"wrote {output}: {len(frame)} rows, symbols {', '.join(symbols) or '-'}, feature_version "
                  f"{FEATURE_VERSION}, {time.perf_counter() - started:.1f}s")


@features_app.command("list")
def list_features() -> None:
    """Print the feature table (name, category, tier, window, unit)."""
    from streams.features import definitions as d
    from streams.features.docs import _window

    table = Table("#", "name", "category", "tier", "window", "unit", title=f"feature_version {d.FEATURE_VERSION}")
    for i, f in enumerate(d.FEATURES):
        table.add_row(str(i), f.name, f.category, d.TIER_NAMES[f.tier], _window(f.window_s), f.unit)
    Console().print(table)


@features_app.command("warm-up")
def warm_up() -> None:
    """Compile the features kernel into numba's on-disk cache (`make install` runs it, so a first `surge run`
    does not wait on the compiler)."""
    from streams.features.stage import warm_up_kernel

    Console().print(f"features kernel ready in {warm_up_kernel():.1f}s")


@features_app.command("docs")
def docs(
    check: Annotated[bool, typer.Option(help="Fail if the file is stale")] = False,
    out: Annotated[Path | None, typer.Option(help="Output file (default: the checkout's docs/features.md)")] = None,
) -> None:
    """Write docs/features.md from the feature table."""
    from streams.features.docs import main

    raise typer.Exit(main([*(["--check"] if check else []), *(["--out", str(out)] if out is not None else [])]))


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
