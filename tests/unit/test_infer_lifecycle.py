"""The infer stage's registry watcher on a real chdb registry: fresh install, hot reload, canary, automatic
rollback written back with an audit row, an unreachable registry and an unloadable artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.infer.canary import CanaryPolicy, is_canary_symbol
from streams.infer.lifecycle import AUTO_ACTOR, BOOTSTRAP_ACTOR, RegistryWatcher
from streams.infer.model import load_model
from streams.runtime.clock import ManualClock
from streams.storage.registry import ModelRegistry
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse
from tests.unit.test_infer_canary import SYMBOLS, feature_vector, preds, run, toy_model

pytestmark = pytest.mark.unit


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge")
    yield wh
    wh.close()


def watcher_for(reg: ModelRegistry, bootstrap: Path, **kw: object) -> RegistryWatcher:
    return RegistryWatcher(lambda: reg, bootstrap, poll_s=0.05, canary_share=0.5,
                           loader=lambda p: load_model(p, intra_op_threads=1), **kw)  # type: ignore[arg-type]


def test_fresh_install_hot_reload_canary_and_automatic_rollback(warehouse: Warehouse, tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    reg = ModelRegistry(warehouse, clock)
    watcher = watcher_for(reg, toy_model(tmp_path / "m1", "m1"),
                          policy=CanaryPolicy(min_rows=4, max_invalid_rate=0.0, rule="any"))
    state = watcher.initial_state()
    active = reg.active()
    assert active is not None and (active.model_version, active.deployed_by) == ("m1", BOOTSTRAP_ACTOR)
    assert state.model.model_version == "m1"

    reg.register(toy_model(tmp_path / "m2", "m2", weight=2.0), "alice")
    clock.advance_us(1_000)
    reg.deploy("m2", "alice")
    assert watcher.poll_once()
    assert state.model.model_version == "m2" and state.serving.canary is None
    assert [p.model_version for p in preds(run(state, [feature_vector(0, "BTCUSDT")]))] == ["m2"]

    reg.register(toy_model(tmp_path / "bad", "bad", bias=float("nan")), "alice")
    clock.advance_us(1_000)
    canary_rec = reg.deploy("bad", "alice", canary=True)
    assert watcher.poll_once()
    cid = f"bad@{canary_rec.deployed_at_us}"
    assert state.serving.canary is not None and state.serving.canary_id == cid
    canary_syms = [s for s in SYMBOLS if is_canary_symbol(cid, s, 0.5)]
    assert len(canary_syms) >= 4
    # Broken canary: its rows are served by m2, and after min_rows the guard withdraws it.
    out = run(state, [feature_vector(i, s) for i, s in enumerate(canary_syms[:4])])
    assert [(p.model_version, p.canary) for p in preds(out)] == [("m2", False)] * 4
    assert state.serving.canary is None
    assert reg.canary() is not None  # the registry learns on the next poll
    clock.advance_us(1_000)
    assert watcher.poll_once()
    assert reg.canary() is None and state.serving.canary is None
    last = reg.audit_log()[-1]
    assert (last["action"], last["actor"], last["model_version"]) == ("rollback_canary", AUTO_ACTOR, "bad")
    assert last["reason"].startswith("automatic canary rollback: invalid-output rate")
    actions = [(r["action"], r["actor"], r["model_version"]) for r in reg.audit_log()]
    assert actions == [
        ("register", BOOTSTRAP_ACTOR, "m1"), ("deploy", BOOTSTRAP_ACTOR, "m1"),
        ("register", "alice", "m2"), ("deploy", "alice", "m2"),
        ("register", "alice", "bad"), ("deploy_canary", "alice", "bad"),
        ("rollback_canary", AUTO_ACTOR, "bad"),
    ]
    metrics = state.metrics.registry
    assert metrics.get_sample_value("surge_infer_model_reloads_total", {"result": "ok"}) == 2  # m2, bad


def test_good_canary_is_served_on_its_share_until_withdrawn_by_hand(warehouse: Warehouse, tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    reg = ModelRegistry(warehouse, clock)
    watcher = watcher_for(reg, toy_model(tmp_path / "m1", "m1"))
    state = watcher.initial_state()
    reg.register(toy_model(tmp_path / "m2", "m2", weight=1.1), "bob")
    rec = reg.deploy("m2", "bob", canary=True)
    watcher.poll_once()
    cid = f"m2@{rec.deployed_at_us}"
    out = preds(run(state, [feature_vector(i, s) for i, s in enumerate(SYMBOLS)]))
    assert {p.symbol for p in out if p.model_version == "m2"} == {s for s in SYMBOLS if is_canary_symbol(cid, s, 0.5)}
    assert all(p.canary == (p.model_version == "m2") for p in out)
    clock.advance_us(10)
    reg.rollback_canary("bob", "enough")
    watcher.poll_once()
    assert state.serving.canary is None
    assert {p.model_version for p in preds(run(state, [feature_vector(0, s) for s in SYMBOLS]))} == {"m1"}


def test_unreachable_registry_serves_the_bootstrap_and_recovers(warehouse: Warehouse, tmp_path: Path) -> None:
    reg = ModelRegistry(warehouse, ManualClock(1))
    reachable = [False]

    def factory() -> ModelRegistry:
        if not reachable[0]:
            raise ConnectionError("warehouse down")
        return reg

    watcher = RegistryWatcher(factory, toy_model(tmp_path / "boot", "boot"), poll_s=0.05,
                              loader=lambda p: load_model(p, intra_op_threads=1))
    state = watcher.initial_state()
    assert state.model.model_version == "boot" and reg.active() is None
    assert not watcher.poll_once()
    reachable[0] = True
    assert watcher.poll_once()
    active = reg.active()
    assert active is not None and active.model_version == "boot" and state.model.model_version == "boot"


def test_unloadable_artifact_keeps_the_served_model(warehouse: Warehouse, tmp_path: Path) -> None:
    clock = ManualClock(1_000)
    reg = ModelRegistry(warehouse, clock)
    watcher = watcher_for(reg, toy_model(tmp_path / "m1", "m1"))
    state = watcher.initial_state()
    broken = toy_model(tmp_path / "m3", "m3")
    reg.register(broken, "eve")
    (broken / "model.onnx").write_bytes(b"not onnx")
    clock.advance_us(10)
    reg.deploy("m3", "eve")
    assert watcher.poll_once() and watcher.poll_once()  # the second poll does not retry the same record
    assert state.model.model_version == "m1"
    assert state.metrics.registry.get_sample_value("surge_infer_model_reloads_total", {"result": "failed"}) == 1


def test_background_thread_follows_deploys(warehouse: Warehouse, tmp_path: Path) -> None:
    import time

    clock = ManualClock(1_000)
    reg = ModelRegistry(warehouse, clock)
    watcher = watcher_for(reg, toy_model(tmp_path / "m1", "m1"))
    state = watcher.initial_state()
    watcher.start()
    try:
        reg.register(toy_model(tmp_path / "m2", "m2"), "x")
        clock.advance_us(10)
        reg.deploy("m2", "x")
        deadline = time.monotonic() + 10
        while state.model.model_version != "m2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.model.model_version == "m2"
    finally:
        watcher.stop()
