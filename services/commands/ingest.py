"""Ingest commands: ``surge ingest`` (the ingest stage with its source options) and ``surge fake-exchange``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def ingest(
    *,
    source: Annotated[str | None, typer.Option(help="auto | sim | live | replay:PATH")] = None,
    venue: Annotated[str | None, typer.Option(help="Binance venue: spot | usdm")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT")] = None,
    top: Annotated[int | None, typer.Option(help="Live: the N symbols with the largest 24h quote volume")] = None,
    speed: Annotated[str | None, typer.Option(help="Replay pace: a factor of recorded time, or max")] = None,
    exit_when_done: Annotated[bool, typer.Option(help="Exit when a replay ends (else idle until stopped)")] = True,
) -> None:
    """Run the ingest stage alone: live Binance, a replayed capture or the simulator -> ticks.v1."""
    from streams.ingest.stage import spec
    from streams.runtime.observability import configure_logging
    from streams.runtime.settings import Settings
    from streams.runtime.source import run_source

    try:  # the flags go into the Settings object (init values win over SURGE_*), not into os.environ
        settings = Settings.with_overrides(source=source, venue=venue, symbols=symbols, top_n=top,
                                           replay_speed=speed, replay_exit=exit_when_done)
    except Exception as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc
    configure_logging(settings, "ingest")
    raise typer.Exit(run_source(spec(settings), settings))


def fake_exchange(
    *,
    capture: Annotated[list[Path], typer.Option(help="Capture file or folder (repeatable), e.g. hftbacktest/usdm")],
    venue: Annotated[str, typer.Option(help="spot | usdm: which Binance URLs to speak")] = "spot",
    port: Annotated[int, typer.Option(help="Port for both WebSocket and REST")] = 18080,
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    speed: Annotated[float, typer.Option(help="Replay pace, a factor of recorded time")] = 1.0,
    inject_gap_every: Annotated[int, typer.Option(help="Drop every Nth depth diff from the stream")] = 0,
    inject_duplicates: Annotated[int, typer.Option(help="Send every Nth message twice")] = 0,
    disconnect_after: Annotated[float, typer.Option(help="Abort each connection after S seconds")] = 0.0,
    malformed_every: Annotated[int, typer.Option(help="A malformed frame before every Nth message")] = 0,
    malformed_symbols: Annotated[str | None, typer.Option(help="Only these symbols get malformed frames")] = None,
    delay_ms: Annotated[float, typer.Option(help="Delay every WebSocket frame by D ms")] = 0.0,
    liquidations_every: Annotated[int, typer.Option(
        help="USD-M: synthesize a forceOrder liquidation from every Nth replayed trade of a symbol")] = 0,
    start_delay: Annotated[float, typer.Option(help="Seconds from the first connection to the market start")] = 1.0,
    start_now: Annotated[bool, typer.Option(help="Start the market at once, not on the first connection")] = False,
    rebase_time: Annotated[bool, typer.Option(help="Map recorded exchange times onto the wall clock")] = True,
) -> None:
    """Serve a recorded Binance capture over Binance's own WebSocket and REST URLs, with fault injection."""
    import logging

    from services.testing.fake_exchange.server import FakeOptions, main

    if venue not in ("spot", "usdm"):
        console.print(f"[red]unknown venue {venue!r}[/red]; choose spot or usdm")
        raise typer.Exit(2)
    logging.basicConfig(level=os.environ.get("SURGE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s [fake-exchange] %(message)s")
    wanted = frozenset(s.strip().upper() for s in (malformed_symbols or "").split(",") if s.strip())
    options = FakeOptions(venue=venue, speed=speed, inject_gap_every=inject_gap_every,
                          inject_duplicates=inject_duplicates, disconnect_after_s=disconnect_after,
                          malformed_every=malformed_every, malformed_symbols=wanted, delay_ms=delay_ms,
                          start_delay_s=start_delay, start_on_connect=not start_now, rebase_time=rebase_time,
                          liquidations_every=liquidations_every)
    try:
        main(capture, options, host, port)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("fake-exchange")(fake_exchange)
