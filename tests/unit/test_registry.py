"""Model registry on a real chdb warehouse: register, deploy, canary, rollback, audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.runtime.clock import ManualClock
from streams.storage.registry import ModelRegistry, RegistryError
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse

pytestmark = pytest.mark.unit


def artifact(root: Path, version: str, ece: float) -> Path:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "model.json").write_bytes(orjson.dumps(
        {"model_version": version, "feature_version": "fv1", "horizons": [5, 10, 30]}))
    (folder / "card.json").write_bytes(orjson.dumps(
        {"metrics": {"5": {"ece": ece / 2, "brier": 0.2}, "30": {"ece": ece}}, "config": {"gamma": 1.5}}))
    return folder


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge")
    yield wh
    wh.close()


def test_deploy_canary_rollback_with_audit(warehouse: Warehouse, tmp_path: Path) -> None:
    clock = ManualClock(1_000)
    reg = ModelRegistry(warehouse, clock)
    first = reg.ensure_default(artifact(tmp_path, "m1", 0.02))
    assert (first.model_version, first.is_active, first.calibration_ece) == ("m1", True, 0.02)
    assert reg.ensure_default(artifact(tmp_path, "ignored", 0.5)).model_version == "m1"  # already active

    clock.advance_us(10)
    reg.register(artifact(tmp_path, "m2", 0.03), "alice")
    reg.deploy("m2", "alice", canary=True, reason="try m2 on 10% of symbols")
    assert reg.canary() is not None and reg.canary().model_version == "m2"  # type: ignore[union-attr]
    assert reg.active().model_version == "m1"  # type: ignore[union-attr]  # active is unchanged by a canary

    clock.advance_us(10)
    reg.deploy("m2", "bob", reason="canary looked good")
    active = reg.active()
    assert active is not None and (active.model_version, active.rollback_target, active.deployed_by) == (
        "m2", "m1", "bob")
    assert reg.canary() is None

    clock.advance_us(10)
    back = reg.rollback("carol", "latency regression")
    assert back.model_version == "m1" and reg.active().model_version == "m1"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="no rollback target"):
        reg.rollback("carol")

    actions = [(r["action"], r["actor"], r["model_version"], r["previous_version"]) for r in reg.audit_log()]
    assert actions == [
        ("register", "bootstrap", "m1", ""),
        ("deploy", "bootstrap", "m1", ""),
        ("register", "alice", "m2", ""),
        ("deploy_canary", "alice", "m2", ""),
        ("deploy", "bob", "m2", "m1"),
        ("rollback", "carol", "m1", "m2"),
    ]
    assert sum(r.is_active for r in reg.versions()) == 1


def test_canary_auto_rollback_and_errors(warehouse: Warehouse, tmp_path: Path) -> None:
    reg = ModelRegistry(warehouse, ManualClock(5))
    reg.ensure_default(artifact(tmp_path, "m1", 0.02))
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.deploy("nope", "x")
    with pytest.raises(RegistryError, match="already the active"):
        reg.deploy("m1", "x")
    with pytest.raises(RegistryError, match=r"model\.json is missing"):
        reg.register(tmp_path, "x")
    reg.register(artifact(tmp_path, "m3", 0.04), "x")
    reg.deploy("m3", "x", canary=True)
    withdrawn = reg.rollback_canary("infer-auto", "ece and latency degraded")
    assert withdrawn.model_version == "m3" and reg.canary() is None
    assert reg.audit_log()[-1]["action"] == "rollback_canary"
    assert reg.audit_log()[-1]["reason"] == "ece and latency degraded"
