"""`surge jobs worker|submit|list|show`: training, evaluation and backtest jobs (services/jobs/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from services.commands.models import os_actor

if TYPE_CHECKING:
    from services.jobs.store import JobStore

jobs_app = typer.Typer(help="Jobs: training, walk-forward evaluation and backtests run by a worker, with progress.",
                       no_args_is_help=True)
console = Console(stderr=True)


def _store() -> JobStore:
    from services.jobs.store import JobStore
    from streams.runtime.clock import LiveClock
    from streams.runtime.settings import Settings
    from streams.storage.cache import open_redis

    settings = Settings()
    return JobStore(open_redis(settings.redis_connection_url(), timeout_s=10.0), LiveClock(), settings.jobs_ttl_days)


@jobs_app.command()
def worker(port: Annotated[int | None, typer.Option(help="Serve /metrics, /healthz, /readyz on this port "
                                                         "(default: SURGE_METRICS_BASE_PORT + 10)")] = None) -> None:
    """Run queued jobs until SIGINT/SIGTERM (a job in progress is finished first)."""
    from services.jobs.worker import Worker
    from streams.runtime.observability import HealthState, configure_logging, serve_health
    from streams.runtime.runner import StopFlag
    from streams.runtime.settings import Settings

    settings = Settings()
    configure_logging(settings, "jobs")
    store = _store()
    flag = StopFlag()
    flag.install()
    job_worker = Worker(store, settings)
    # A job can run for minutes without a loop turn: readiness is Redis answering, not a recent beat.
    health = HealthState(stall_after_s=float("inf"))
    stop_http = serve_health(port if port is not None else settings.service_port("jobs"), job_worker.registry,
                             health, settings.metrics_host)
    try:
        store.redis.ping()
        health.set_ready(True, worker=settings.jobs_worker_name)
        job_worker.run(flag.event)
    finally:
        stop_http()


@jobs_app.command()
def submit(kind: Annotated[str, typer.Argument(help="train | evaluate | backtest")],
           params: Annotated[str, typer.Argument(help='The parameters as JSON, e.g. \'{"data": ["klines.csv"]}\'')],
           ) -> None:
    """Queue a job (the gateway's POST /jobs/<kind> does the same) and print its id."""
    from pydantic import ValidationError

    from services.jobs.kinds import KIND_PARAMS, JobInputError, JobPaths, validate
    from streams.runtime.settings import Settings

    if kind not in KIND_PARAMS:
        console.print(f"[red]unknown job kind {kind!r}[/red]; one of {', '.join(KIND_PARAMS)}")
        raise typer.Exit(2)
    try:
        doc = orjson.loads(params)
        if isinstance(doc, dict):  # relative to here, as a shell user means them; the worker needs them absolute
            for key in ("data", "eval"):
                if isinstance(doc.get(key), list):
                    doc[key] = [str(Path(p).resolve()) if isinstance(p, str) else p for p in doc[key]]
            if isinstance(doc.get("model"), str):
                doc["model"] = str(Path(doc["model"]).resolve())
        paths = JobPaths(Settings(), "-")
        parsed = validate(kind, doc, paths)
        paths.files([*getattr(parsed, "data", []), *(getattr(parsed, "eval", None) or [])])  # exist here
    except (orjson.JSONDecodeError, ValidationError, JobInputError) as exc:
        console.print(f"[red]invalid parameters:[/red] {exc}")
        raise typer.Exit(2) from None
    store = _store()
    job = store.submit(kind, parsed.model_dump(mode="json"), f"cli:{os_actor()}")
    print(job.job_id)


@jobs_app.command("list")
def list_jobs(limit: Annotated[int, typer.Option(min=1, max=1000)] = 20) -> None:
    """The newest jobs."""
    store = _store()
    table = Table("id", "kind", "state", "progress", "message", "actor")
    for job in store.recent(limit):
        table.add_row(job.job_id, job.kind, job.state.value, f"{job.progress:.0%}", job.message[:60], job.actor)
    Console().print(table)


@jobs_app.command()
def show(job_id: Annotated[str, typer.Argument(help="The id printed by submit or shown by list")]) -> None:
    """One job as JSON (parameters, state, progress, result or error)."""
    import dataclasses

    from services.jobs.store import JobError

    store = _store()
    try:
        job = store.get(job_id)
    except JobError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    print(orjson.dumps(dataclasses.asdict(job), option=orjson.OPT_INDENT_2).decode())


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
