"""`surge tokens create|list|revoke`: the gateway's API tokens (stored hashed in Redis; audited)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.commands.models import os_actor
from services.gateway.security import SCOPES, TokenStore, audit

tokens_app = typer.Typer(help="Gateway API tokens: bearer tokens with scopes read and admin.", no_args_is_help=True)
log = logging.getLogger("surge.tokens")


def _store() -> TokenStore:
    from streams.runtime.settings import Settings
    from streams.storage.cache import open_redis

    return TokenStore(open_redis(Settings().redis_connection_url()))


def _audit(action: str, subject: str, reason: str) -> None:
    """Best effort: the token change is made in Redis whether or not the warehouse can record it."""
    from streams.runtime.settings import Settings
    from streams.storage.warehouse import apply_ddl_from, open_warehouse_from

    settings = Settings()
    try:
        warehouse = open_warehouse_from(settings)
        try:
            apply_ddl_from(warehouse, settings)
            audit(warehouse, action, os_actor(), subject, reason)
        finally:
            warehouse.close()
    except Exception as exc:  # reported, not fatal
        Console(stderr=True).print(f"[yellow]audit log not written: {type(exc).__name__}[/yellow]")


@tokens_app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what the token is for")],
    scope: Annotated[list[str], typer.Option(help=f"One of {', '.join(SCOPES)}; repeat for several")] = ["read"],  # noqa: B006
) -> None:
    """Create a token and print it once (only its SHA-256 is stored)."""
    try:
        token, info = _store().create(name, scope)
    except ValueError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _audit("token_create", info.token_id, f"{name} scopes={','.join(info.scopes)}")
    Console(stderr=True).print(f"token {info.token_id} ({','.join(info.scopes)}) for {name}; it is shown only once:")
    print(token)


@tokens_app.command("list")
def list_tokens() -> None:
    """Every token (never its secret)."""
    table = Table("id", "name", "scopes", "created_us", "revoked_us")
    for t in _store().list():
        table.add_row(t.token_id, t.name, ",".join(t.scopes), str(t.created_us), str(t.revoked_us or ""))
    Console().print(table)


@tokens_app.command()
def revoke(token_id: Annotated[str, typer.Argument(help="The id shown by `surge tokens list`")],
           reason: Annotated[str, typer.Option(help="Why, for the audit log")] = "") -> None:
    """Revoke a token (effective within the gateway's L1 TTL)."""
    try:
        info = _store().revoke(token_id)
    except KeyError as exc:
        Console(stderr=True).print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(1) from None
    _audit("token_revoke", info.token_id, reason)
    Console().print(f"revoked {info.token_id} ({info.name})")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
