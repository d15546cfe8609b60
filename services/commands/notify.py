"""`surge notify`: post actionable signals, risk-state changes and finished jobs to a Slack/Discord webhook."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console

console = Console(stderr=True)


def notify(
    *,
    webhook: Annotated[str | None, typer.Option(help="Incoming webhook URL (else SURGE_NOTIFY_WEBHOOK_URL; "
                                                     "prefer the variable: a URL on a command line is visible "
                                                     "to every local user)")] = None,
    format_: Annotated[str | None, typer.Option("--format", help="slack ({text}) | discord ({content})")] = None,
    min_tier: Annotated[str | None, typer.Option(help="Lowest signal tier posted: A | B")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics, /healthz, /readyz (0: none); "
                                                          "default SURGE_METRICS_BASE_PORT + 20")] = None,
) -> None:
    """Follow signals.v1, outcomes.v1 and the job announcements; post to the webhook, rate-limited and
    de-duplicated (Redis), failures to dlq.v1."""
    from services.notify.runner import Notifier
    from streams.runtime.observability import configure_logging
    from streams.runtime.settings import Settings

    try:  # the flags go into the Settings object (init values win over SURGE_*), not into os.environ
        settings = Settings.with_overrides(notify_webhook_url=webhook, notify_format=format_,
                                           notify_min_tier=min_tier.upper() if min_tier else None)
    except Exception as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc
    if settings.notify_webhook_url is None or not settings.notify_webhook_url.get_secret_value().strip():
        console.print("[red]no webhook URL:[/red] pass --webhook URL or set SURGE_NOTIFY_WEBHOOK_URL")
        raise typer.Exit(2)
    url = urlsplit(settings.notify_webhook_url.get_secret_value())
    if url.scheme not in ("http", "https") or not url.hostname:
        console.print("[red]the webhook URL must be http:// or https:// with a host[/red]")  # never echo it: a secret
        raise typer.Exit(2)
    configure_logging(settings, "notify")
    raise typer.Exit(Notifier(settings, metrics_port=metrics_port).run())


def register(app: typer.Typer) -> None:
    app.command("notify")(notify)
