"""The model registry, kept in ClickHouse (``model_versions``, ``audit_logs``) with artifacts on disk.

``model_versions`` is a ReplacingMergeTree on the version: every change writes a complete new row with a
larger ``updated_us`` and readers use ``FINAL``, so the history of states stays append-only and auditable in
``audit_logs``. At most one version is active and at most one is canary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from streams.runtime.clock import Clock
from streams.storage.warehouse import Warehouse

COLUMNS = (
    "model_version", "feature_version", "horizons", "metrics", "config", "calibration_ece", "artifact_path",
    "is_active", "is_canary", "deployed_at_us", "deployed_by", "rollback_target", "updated_us",
)
AUDIT_COLUMNS = ("audit_id", "action", "actor", "model_version", "previous_version", "reason", "at_us")


def audit_row(action: str, actor: str, subject: str, previous: str, reason: str, at_us: int) -> list[Any]:
    """One ``audit_logs`` row in ``AUDIT_COLUMNS`` order, with a deterministic id over every field; ``subject``
    (the model_version column) names what was acted on: a model version, a risk state's model, a token."""
    audit_id = hashlib.sha256(f"{at_us}:{action}:{subject}:{previous}:{actor}:{reason}".encode()).hexdigest()[:20]
    return [audit_id, action, actor, subject, previous, reason, at_us]


class RegistryError(RuntimeError):
    """A registry action that cannot be done (unknown version, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class ModelRecord:
    model_version: str
    feature_version: str
    horizons: tuple[int, ...]
    metrics: dict[str, Any]
    config: dict[str, Any]
    calibration_ece: float
    artifact_path: str
    is_active: bool = False
    is_canary: bool = False
    deployed_at_us: int = 0
    deployed_by: str = ""
    rollback_target: str = ""
    updated_us: int = 0

    def row(self) -> list[Any]:
        return [
            self.model_version, self.feature_version, list(self.horizons), orjson.dumps(self.metrics).decode(),
            orjson.dumps(self.config).decode(), self.calibration_ece, self.artifact_path, int(self.is_active),
            int(self.is_canary), self.deployed_at_us, self.deployed_by, self.rollback_target, self.updated_us,
        ]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ModelRecord:
        return cls(
            model_version=row["model_version"], feature_version=row["feature_version"],
            horizons=tuple(int(h) for h in row["horizons"]), metrics=orjson.loads(row["metrics"] or "{}"),
            config=orjson.loads(row["config"] or "{}"), calibration_ece=float(row["calibration_ece"]),
            artifact_path=row["artifact_path"], is_active=bool(row["is_active"]),
            is_canary=bool(row["is_canary"]), deployed_at_us=int(row["deployed_at_us"]),
            deployed_by=row["deployed_by"], rollback_target=row["rollback_target"],
            updated_us=int(row["updated_us"]),
        )


def record_from_artifact(model_dir: Path) -> ModelRecord:
    """Read model.json (and card.json when present) of an artifact folder into a registry record."""
    meta_path = model_dir / "model.json"
    if not meta_path.exists():
        raise RegistryError(f"{model_dir} is not a model artifact: model.json is missing")
    meta = orjson.loads(meta_path.read_bytes())
    card_path = model_dir / "card.json"
    card = orjson.loads(card_path.read_bytes()) if card_path.exists() else {}
    # Older artifacts (the simulator default model) keep their metrics under training.metrics.
    metrics = (card.get("metrics") or meta.get("metrics") or card.get("training", {}).get("metrics")
               or meta.get("training", {}).get("metrics") or {})
    ece = _find_ece(metrics)
    # model.json as the infer stage reads it says horizons_min; "horizons" is the registry's own spelling.
    horizons = meta.get("horizons", meta.get("horizons_min"))
    if horizons is None or "model_version" not in meta or "feature_version" not in meta:
        raise RegistryError(f"{meta_path}: model_version, feature_version and horizons_min are required")
    return ModelRecord(
        model_version=str(meta["model_version"]),
        feature_version=str(meta["feature_version"]),
        horizons=tuple(int(h) for h in horizons),
        metrics=metrics,
        config=card.get("config", meta.get("config", {})),
        calibration_ece=ece,
        artifact_path=str(model_dir.resolve()),
    )


def _find_ece(metrics: Any) -> float:
    """The worst held-out calibration ECE reported anywhere in the metrics (NaN when none is)."""
    found: list[float] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, int | float) and key.lower() in {"ece", "calibration_ece", "ece_calibrated"}:
            found.append(float(node))

    walk(metrics)
    return max(found) if found else float("nan")


class ModelRegistry:
    def __init__(self, warehouse: Warehouse, clock: Clock) -> None:
        self.warehouse = warehouse
        self.clock = clock
        self._last_us = 0

    def _tick(self) -> int:
        """Strictly increasing times, so two actions in one clock tick still have an order."""
        self._last_us = max(self.clock.now_us(), self._last_us + 1)
        return self._last_us

    def _write(self, records: list[ModelRecord]) -> None:
        # Strictly increasing updated_us so the newest state always wins in ReplacingMergeTree.
        rows = [replace(r, updated_us=self._tick()).row() for r in records]
        self.warehouse.insert("model_versions", rows, list(COLUMNS))

    def audit(self, action: str, actor: str, version: str, previous: str, reason: str) -> None:
        """Append one row to ``audit_logs``, on the registry's strictly increasing clock."""
        self.warehouse.insert("audit_logs", [audit_row(action, actor, version, previous, reason, self._tick())],
                              list(AUDIT_COLUMNS))

    def versions(self) -> list[ModelRecord]:
        rows = self.warehouse.query(f"SELECT * FROM {self.warehouse.database}.model_versions FINAL "
                                    "ORDER BY deployed_at_us DESC, model_version")
        return [ModelRecord.from_row(r) for r in rows]

    def get(self, version: str) -> ModelRecord:
        for rec in self.versions():
            if rec.model_version == version:
                return rec
        raise RegistryError(f"unknown model version {version!r}")

    def active(self) -> ModelRecord | None:
        return next((r for r in self.versions() if r.is_active), None)

    def canary(self) -> ModelRecord | None:
        return next((r for r in self.versions() if r.is_canary), None)

    def audit_log(self) -> list[dict[str, Any]]:
        return self.warehouse.query(f"SELECT * FROM {self.warehouse.database}.audit_logs ORDER BY at_us, audit_id")

    def register(self, model_dir: Path, actor: str) -> ModelRecord:
        rec = record_from_artifact(model_dir)
        existing = {r.model_version: r for r in self.versions()}
        if rec.model_version in existing:
            return existing[rec.model_version]  # registering the same artifact twice is a no-op
        self._write([rec])
        self.audit("register", actor, rec.model_version, "", f"artifact {rec.artifact_path}")
        return rec

    def deploy(self, version: str, actor: str, *, canary: bool = False, reason: str = "") -> ModelRecord:
        """Make ``version`` active (the previous active becomes its rollback target) or the canary."""
        target = self.get(version)
        records = self.versions()
        now = self.clock.now_us()
        changes: list[ModelRecord] = []
        if canary:
            if target.is_active:
                raise RegistryError(f"{version} is already active; a canary must be a different version")
            previous = next((r for r in records if r.is_canary), None)
            if previous is not None and previous.model_version != version:
                changes.append(replace(previous, is_canary=False))
            changes.append(replace(target, is_canary=True, deployed_at_us=now, deployed_by=actor))
            action, prev_version = "deploy_canary", previous.model_version if previous else ""
        else:
            previous = next((r for r in records if r.is_active), None)
            if previous is not None and previous.model_version == version:
                raise RegistryError(f"{version} is already the active model")
            if previous is not None:
                changes.append(replace(previous, is_active=False))
            changes.append(replace(target, is_active=True, is_canary=False, deployed_at_us=now, deployed_by=actor,
                                   rollback_target=previous.model_version if previous else ""))
            action, prev_version = "deploy", previous.model_version if previous else ""
        self._write(changes)
        self.audit(action, actor, version, prev_version, reason)
        return changes[-1]

    def rollback(self, actor: str, reason: str = "") -> ModelRecord:
        """Re-activate the active model's rollback target."""
        current = self.active()
        if current is None:
            raise RegistryError("no active model to roll back")
        if not current.rollback_target:
            raise RegistryError(f"{current.model_version} has no rollback target")
        target = self.get(current.rollback_target)
        now = self.clock.now_us()
        self._write([
            replace(current, is_active=False),
            replace(target, is_active=True, is_canary=False, deployed_at_us=now, deployed_by=actor,
                    rollback_target=target.rollback_target),
        ])
        self.audit("rollback", actor, target.model_version, current.model_version, reason)
        return target

    def rollback_canary(self, actor: str, reason: str) -> ModelRecord:
        """Withdraw the canary (e.g. automatically, when its live metrics degrade)."""
        canary = self.canary()
        if canary is None:
            raise RegistryError("no canary to roll back")
        self._write([replace(canary, is_canary=False)])
        self.audit("rollback_canary", actor, canary.model_version, "", reason)
        return canary

    def ensure_default(self, model_dir: Path, actor: str = "bootstrap") -> ModelRecord:
        """On a fresh install, register and activate the shipped model so predictions are real at once."""
        active = self.active()
        if active is not None:
            return active
        rec = self.register(model_dir, actor)
        return self.deploy(rec.model_version, actor, reason="no active model: activating the shipped default")
