"""The `surge` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.runtime.settings import STAGES, Settings, env_documentation
from streams.runtime.topics import Topic

app = typer.Typer(help="surge: real-time crypto market signals over a Kafka-protocol bus.", no_args_is_help=True)
console = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    """The SURGE_* environment with the given CLI flags on top (flags left at None are not given).

    The flags go into the Settings object, never into os.environ: child processes get them from
    ``Settings.to_env()`` (services/stack/supervisor.py)."""
    try:
        return Settings.with_overrides(**overrides)
    except Exception as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def run(
    source: Annotated[str | None, typer.Option(help="auto | sim | live | replay:PATH")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols")] = None,
    rate: Annotated[float | None, typer.Option(help="Simulator raw events per second")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded stack state folder")] = None,
) -> None:
    """Run the whole pipeline: embedded broker, ClickHouse (chdb), Redis, five stages and the gateway."""
    import logging

    from services.stack.supervisor import RecyclePolicy, Supervisor, plan_children, resolve_source

    settings = _settings(source=source, symbols=symbols, sim_events_per_s=rate, data_dir=data_dir)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s [supervisor] %(message)s")
    for noisy in ("httpx", "httpcore"):  # one line per readiness poll and /metrics scrape otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    chosen = resolve_source(settings)
    children = plan_children(settings, chosen)
    supervisor = Supervisor(settings, children, settings.data_dir.resolve() / "logs",
                            recycle=RecyclePolicy.for_run(settings, chosen))

    def ready() -> None:
        console.print(f"[green]surge is running[/green] (source: [bold]{chosen}[/bold]). "
                      f"Dashboard: http://{settings.gateway_host}:{settings.gateway_port}/  "
                      f"Signals: `surge tail signals.v1`. Ctrl-C stops everything.")

    raise typer.Exit(supervisor.run(on_ready=ready))


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGES)}")],
    *,
    source: Annotated[str | None, typer.Option(help="ingest: auto | sim | live | replay:PATH")] = None,
    venue: Annotated[str | None, typer.Option(help="ingest: Binance venue, spot | usdm")] = None,
    symbols: Annotated[str | None, typer.Option(help="ingest: comma-separated symbols")] = None,
    top: Annotated[int | None, typer.Option(help="ingest: the N symbols with the largest 24h quote volume")] = None,
    speed: Annotated[str | None, typer.Option(help="ingest: replay pace, a factor or max")] = None,
) -> None:
    """Run one stage alone against SURGE_BROKERS (or the embedded broker address)."""
    from streams.runtime.observability import configure_logging

    if name not in STAGES:
        console.print(f"[red]unknown stage {name!r}[/red]; choose one of {', '.join(STAGES)}")
        raise typer.Exit(2)
    settings = _settings(source=source, venue=venue, symbols=symbols, top_n=top, replay_speed=speed)
    configure_logging(settings, name)
    import importlib

    from streams.runtime.runner import StageRunner
    from streams.runtime.source import SourceSpec, run_source

    stage_spec = importlib.import_module(f"streams.{name}.stage").spec(settings)
    # A source-driven stage (ingest) is a SourceSpec; every consumer-driven stage a StageSpec.
    if isinstance(stage_spec, SourceSpec):
        raise typer.Exit(run_source(stage_spec, settings))
    raise typer.Exit(StageRunner(stage_spec, settings).run())


@app.command()
def broker(port: Annotated[int, typer.Option(help="Listen port")] = 19092) -> None:
    """Run the embedded Tansu broker (memory storage) in the foreground."""
    from services.stack.binaries import tansu_command

    argv = tansu_command(port)
    console.print(f"Tansu broker on 127.0.0.1:{port} (memory storage: everything is lost on exit)")
    os.execv(argv[0], argv)


@app.command()
def warehouse(
    path: Annotated[Path, typer.Option(help="chdb data folder (owned by this process alone)")],
    port: Annotated[int, typer.Option(help="Listen port")] = 8124,
) -> None:
    """Serve a chdb folder to the other processes (only one process may open it).

    Requires SURGE_WAREHOUSE_TOKEN (clients send it as a bearer token); `surge run` generates one."""
    from services.warehouse.server import MIN_TOKEN_CHARS, serve
    from streams.storage.warehouse import settings_ttl_days

    settings = _settings()
    token = settings.warehouse_token.get_secret_value() if settings.warehouse_token is not None else ""
    if len(token) < MIN_TOKEN_CHARS:
        console.print(f"[red]refusing to start:[/red] set SURGE_WAREHOUSE_TOKEN (at least {MIN_TOKEN_CHARS} "
                      "characters; e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        raise typer.Exit(2)
    serve(path.resolve(), "127.0.0.1", port, settings.clickhouse_database, token, settings_ttl_days(settings))


@app.command()
def gateway() -> None:
    """Run the HTTP gateway and live dashboard."""
    from services.gateway.app import serve

    serve(_settings())


@app.command()
def topics(partitions: Annotated[int | None, typer.Option(help="Partitions for new topics")] = None) -> None:
    """Create the bus topics idempotently and list them."""
    from streams.runtime.kafka import admin_client, ensure_topics

    settings = _settings(partitions=partitions)
    created = ensure_topics(settings)
    metadata = admin_client(settings).list_topics(timeout=10)
    table = Table("topic", "partitions", "created now")
    for t in Topic:
        info = metadata.topics.get(t.value)
        table.add_row(t.value, str(len(info.partitions)) if info else "-", "yes" if t.value in created else "")
    Console().print(table)


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic, e.g. signals.v1")],
    json_: Annotated[bool, typer.Option("--json", help="Machine output: one JSON value per line")] = False,
    meta: Annotated[bool, typer.Option(help="Wrap each value with topic/partition/offset/key/timestamp")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest record")] = False,
    idle_timeout: Annotated[float, typer.Option(help="Exit after this many seconds without a record")] = 10.0,
    max_messages: Annotated[int | None, typer.Option("--max", help="Exit after this many records")] = None,
) -> None:
    """Print a topic's messages decoded from protobuf (field names as in the .proto)."""
    from services.tail import tail as tail_topic

    try:
        kind = Topic(topic)
    except ValueError as exc:
        console.print(f"[red]unknown topic {topic!r}[/red]; choose one of {', '.join(t.value for t in Topic)}")
        raise typer.Exit(2) from exc
    out = Console()
    for record in tail_topic(_settings(), kind, from_beginning=from_beginning, idle_timeout_s=idle_timeout,
                             max_messages=max_messages):
        line = record.to_json(with_meta=meta)
        if json_:
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.flush()
        else:
            out.print(f"[cyan]{record.topic}[/cyan][{record.partition}]@{record.offset} "
                      f"[bold]{record.key}[/bold] ", end="")
            out.print_json(line.decode())


@app.command()
def config(
    markdown: Annotated[bool, typer.Option(help="Print the README's settings table")] = False,
    update_readme: Annotated[Path | None, typer.Option(help="Rewrite the settings table in this README")] = None,
) -> None:
    """List every SURGE_* setting with its default."""
    from streams.runtime.settings import settings_markdown

    if update_readme is not None:
        text = update_readme.read_text()
        head, rest = text.split("<!-- settings:start", 1)
        marker_rest, _ = rest.split("-->", 1)
        _, tail = rest.split("<!-- settings:end -->", 1)
        update_readme.write_text(f"{head}<!-- settings:start{marker_rest}-->\n{settings_markdown()}\n"
                                 f"<!-- settings:end -->{tail}")
        return
    if markdown:
        sys.stdout.write(settings_markdown() + "\n")
        return
    table = Table("variable", "default", "meaning")
    for name, default, desc in env_documentation():
        table.add_row(name, default, desc)
    Console().print(table)


def _register_command_groups() -> None:
    """Domain command groups live beside their code; each adds its commands to the one app."""
    import importlib
    import pkgutil

    from services import commands

    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"services.commands.{module.name}").register(app)


_register_command_groups()

if __name__ == "__main__":
    app()
