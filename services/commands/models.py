"""`surge models list|register|deploy|rollback`: the model registry from the command line."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.storage.registry import ModelRegistry, RegistryError

models_app = typer.Typer(help="Model registry: versions, deploys, canaries, rollbacks (audited).",
                         no_args_is_help=True)


def os_actor() -> str:
    """The audit actor: this process's effective OS identity, e.g. ``uid:1000(alice)``.

    Not ``getpass.getuser()``, which believes $LOGNAME/$USER: any caller could sign an audit entry as anyone.
    The uid is the kernel's; the name is the password database's for that uid (``?`` when it has none)."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # e.g. a container uid without an /etc/passwd entry
        name = "?"
    return f"uid:{uid}({name})"


def _registry() -> ModelRegistry:
    from streams.runtime.clock import LiveClock
    from streams.runtime.settings import Settings
    from streams.storage.warehouse import apply_ddl_from, open_warehouse_from

    settings = Settings()
    warehouse = open_warehouse_from(settings)
    apply_ddl_from(warehouse, settings)
    return ModelRegistry(warehouse, LiveClock())


def _fail(exc: Exception) -> typer.Exit:
    Console(stderr=True).print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@models_app.command("list")
def list_models() -> None:
    """Every registered version with its state and held-out calibration."""
    table = Table("version", "feature_version", "horizons", "ECE", "active", "canary", "deployed by",
                  "rollback target", "artifact")
    for r in _registry().versions():
        table.add_row(r.model_version, r.feature_version, ",".join(map(str, r.horizons)),
                      f"{r.calibration_ece:.4f}", "yes" if r.is_active else "", "yes" if r.is_canary else "",
                      r.deployed_by, r.rollback_target, r.artifact_path)
    Console().print(table)


@models_app.command("register")
def register_artifact(
    model_dir: Annotated[Path, typer.Argument(help="Artifact folder with model.onnx + model.json")],
) -> None:
    """Register an artifact folder (no deploy)."""
    try:
        rec = _registry().register(model_dir, os_actor())
    except RegistryError as exc:
        raise _fail(exc) from exc
    Console().print(f"registered {rec.model_version}")


@models_app.command()
def deploy(
    version: Annotated[str, typer.Argument(help="Registered model version")],
    canary: Annotated[bool, typer.Option(help="Serve it to the canary share of symbols only")] = False,
    reason: Annotated[str, typer.Option(help="Why, for the audit log")] = "",
) -> None:
    """Activate a version (the infer stage hot-reloads it) or make it the canary."""
    try:
        rec = _registry().deploy(version, os_actor(), canary=canary, reason=reason)
    except RegistryError as exc:
        raise _fail(exc) from exc
    Console().print(f"deployed {rec.model_version} as {'canary' if canary else 'active'}")


@models_app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why, for the audit log")] = "") -> None:
    """Re-activate the active model's rollback target."""
    try:
        rec = _registry().rollback(os_actor(), reason)
    except RegistryError as exc:
        raise _fail(exc) from exc
    Console().print(f"rolled back to {rec.model_version}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
