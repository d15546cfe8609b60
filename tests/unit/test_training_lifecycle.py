"""Issue 12: calibration maps, monotone constraints, the variants report, walk-forward evaluation with drift,
and the closed loop (``retrain``) over a real chdb warehouse seeded with outcomes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.training import export
from services.training.card import card_markdown
from services.training.retrain import RetrainError, realized_outcomes, retrain
from services.training.train import TrainConfig, train
from services.training.walkforward import drift_test, fold_starts, psi, report_markdown, walk_forward
from streams.infer.model import load_model
from streams.runtime.clock import ManualClock
from streams.sink.core import OUTCOME_COLUMNS
from streams.storage.registry import ModelRegistry
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse
from tests.unit.test_training_pipeline import T0_MS, stand_in_frame, write_klines

pytestmark = pytest.mark.unit

CFG = TrainConfig(horizons=(5, 10), theta_up=0.003, theta_dn=0.002, num_boost_round=30, min_child_samples=50,
                  folds=4, objective="logloss", class_weight="none", monotone_increasing=("signal",),
                  calibration="temperature", calibration_recent_days=1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("klines")
    return {
        "jan": write_klines(d / "TESTUSDT-1m-2026-01.csv.gz", T0_MS, 5000, 1),
        "feb": write_klines(d / "TESTUSDT-1m-2026-02.csv.gz", T0_MS + 5000 * 60_000, 5000, 2),
        "mar": write_klines(d / "TESTUSDT-1m-2026-03.csv.gz", T0_MS + 10_000 * 60_000, 3000, 3),
    }


@pytest.mark.parametrize("method", export.CALIBRATIONS)
def test_every_calibration_is_a_monotone_table_the_infer_stage_serves(method: str) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-2.0, 1.5, 20_000)
    raw = 1 / (1 + np.exp(-z))
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z / 2.0))).astype(np.float64)  # true temperature 2
    cal = export.fit_calibration(30, raw, y, method)
    assert np.all(np.diff(cal.x) >= 0) and np.all(np.diff(cal.y) >= 0) and cal.y.min() >= 0 and cal.y.max() <= 1
    p = cal.apply(raw)
    truth = 1 / (1 + np.exp(-z / 2.0))
    assert np.mean(np.abs(p - truth)) < 0.02  # each map recovers the true calibration here
    if method == "temperature":
        probe = np.array([0.05, 0.2, 0.5])
        expected = 1 / (1 + np.exp(-np.log(probe / (1 - probe)) / 2.0))
        assert cal.apply(probe) == pytest.approx(expected, abs=0.02)
    with pytest.raises(ValueError, match="calibration must be one of"):
        export.fit_calibration(30, raw, y, "nope")


def test_train_ships_the_configured_recipe_and_reports_every_variant(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model"
    card = train([data["jan"], data["feb"]], out, CFG, eval_data=[data["mar"]], frame_fn=stand_in_frame, quiet=True,
                 variants_horizon=10, pool_data=[data["jan"]])
    assert card["config"]["calibration"] == "temperature" and card["config"]["monotone_increasing"] == ["signal"]
    model = load_model(out)
    assert len(model.calibrations[0].x) == export.PARAMETRIC_GRID  # the tabulated temperature map is served
    rows = card["variants"]["rows"]
    assert {r["calibration"] for r in rows} == set(export.CALIBRATIONS)
    assert {r["calibration_window"] for r in rows} == {"all OOF", "recent OOF", "recent hold-out"}
    assert {r["class_weight"] for r in rows} == {"balanced", "none"} and any(r["pooled"] for r in rows)
    assert sum(r["shipped_config"] for r in rows) == 1
    for r in rows:
        assert 0 <= r["ece"] <= 1 and np.isfinite(r["brier_skill_period"])
    md = card_markdown(card)
    assert "## Every variant tried (horizon 10 min" in md and "Selection caveat" in md
    assert md.count("**yes**") == 1
    # Monotone constraint honoured: raising the constrained feature never lowers the served probability.
    names = list(model.feature_names)
    x = np.zeros((50, len(names)), dtype=np.float32)
    x[:, names.index("signal")] = np.linspace(-0.02, 0.02, 50)
    raw = model.predict_raw(x)
    assert np.all(np.diff(raw, axis=0) >= -1e-7)


def test_psi_and_drift_verdict() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert psi(a, rng.normal(size=5000)) < 0.02
    assert psi(a, rng.normal(1.0, 1.0, 5000)) > 0.25
    x_ref = rng.normal(size=(3000, 2))
    x_cur = np.column_stack([rng.normal(size=3000), rng.normal(2.0, 1.0, 3000)])
    calm = drift_test(x_ref, x_ref[::-1].copy(), x_ref[:, 0], x_ref[::-1, 0].copy(), ["a", "b"], np.array([.5, .5]))
    assert not calm.retrain_due
    shifted = drift_test(x_ref, x_cur, x_ref[:, 0], x_cur[:, 1], ["a", "b"], np.array([0.5, 0.5]))
    assert shifted.retrain_due and any("score PSI" in r for r in shifted.reasons)
    assert any(r.startswith("b PSI") for r in shifted.reasons)
    unimportant = drift_test(x_ref, x_cur, x_ref[:, 0], x_ref[::-1, 0].copy(), ["a", "b"], np.array([1.0, 0.0]))
    assert not unimportant.retrain_due  # a shifted input the model does not use is not a reason


def test_walk_forward_weekly_with_purge_and_embargo(data: dict[str, Path]) -> None:
    frame = stand_in_frame([data["jan"], data["feb"], data["mar"]])
    ts = frame["ts"].to_numpy()
    assert len(fold_starts(ts, "week", 3.0)) >= 1
    report = walk_forward(frame, CFG, horizon=5, step="week", min_train_days=3.0)
    folds = report["folds"]
    assert len(folds) >= 1 and report["summary"]["folds"] == len(folds)
    for f in folds:
        assert f["train_to_utc"] < f["test_from_utc"] and f["purge_embargo_ms"] > 0
        assert {"ece", "brier", "roc_auc", "brier_skill_period"} <= set(f["metrics"])
        assert np.isfinite(f["drift"]["score_psi"]) and "signal" in f["drift"]["features"]
    assert "| fold |" in report_markdown(report)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge")
    yield wh
    wh.close()


def seed_outcomes(wh: Warehouse, frame: pd.DataFrame, n: int) -> list[tuple[str, int, str]]:
    """LONG outcomes on bars of the training months at the model's barriers (30 / 20 bps), plus one at other
    barriers and one SHORT, which retrain must ignore."""
    rng = np.random.default_rng(5)
    picks = rng.choice(np.arange(100, 9000), size=n, replace=False)
    rows: list[list[object]] = []
    seeded: list[tuple[str, int, str]] = []
    first_entry = 0
    for i, k in enumerate(picks):
        bar_ms = int(frame["ts"].iloc[k])
        entry_us = (bar_ms + 60_000) * 1000 + 250_000  # inside the next minute: the label of bar k
        label = "HIT_TARGET" if i % 3 == 0 else ("HIT_STOP" if i % 3 == 1 else "TIMEOUT")
        rows.append(outcome_row(f"o{i}", "LONG", 5, label, entry_us, 30.0, 20.0))
        first_entry = first_entry or entry_us
        seeded.append(("TESTUSDT", bar_ms, label))
    rows.append(outcome_row("other-barriers", "LONG", 5, "HIT_TARGET", first_entry + 60_000_000, 60.0, 40.0))
    rows.append(outcome_row("short", "SHORT", 5, "HIT_TARGET", first_entry + 120_000_000, 30.0, 20.0))
    wh.insert("outcomes", rows, list(OUTCOME_COLUMNS))
    return seeded


def outcome_row(oid: str, decision: str, h: int, label: str, entry_us: int, up: float, dn: float) -> list[object]:
    values: dict[str, object] = {
        "outcome_id": oid, "signal_id": "s-" + oid, "venue": "SPOT", "symbol": "TESTUSDT", "decision": decision,
        "tier": "A", "horizon_min": h, "label": label, "entry_price": 100.0, "exit_price": 100.3,
        "realized_return_bps": 30.0, "net_return_bps": 25.0, "max_favourable_bps": 30.0, "max_adverse_bps": -5.0,
        "entry_us": entry_us, "exit_us": entry_us + 60_000_000, "time_to_barrier_us": 60_000_000,
        "estimated_cost_bps": 5.0, "realized_cost_bps": 5.0, "upper_barrier_bps": up, "lower_barrier_bps": dn,
        "paper_equity": 1.0, "risk_state": "NORMAL", "stored_us": entry_us + 1,
    }
    return [values[c] for c in OUTCOME_COLUMNS]


def test_retrain_from_outcomes_registers_and_canaries_with_audit(warehouse: Warehouse, data: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    frame = stand_in_frame([data["jan"], data["feb"]])
    seeded = seed_outcomes(warehouse, frame, 60)
    clock = ManualClock(1_000_000)
    registry = ModelRegistry(warehouse, clock)
    first = tmp_path / "first"
    train([data["jan"], data["feb"]], first, CFG, eval_data=[data["mar"]], frame_fn=stand_in_frame, quiet=True)
    registry.ensure_default(first)

    read = realized_outcomes(warehouse, CFG)
    assert len(read) == 60 and set(read["y"]) == {0.0, 1.0}  # other barriers and the SHORT are ignored
    assert int(read["y"].sum()) == sum(1 for *_, lab in seeded if lab == "HIT_TARGET")

    clock.advance_us(1_000)
    with pytest.raises(RetrainError, match="SURGE_CANARY_SHARE"):
        retrain(warehouse, clock, [data["jan"], data["feb"]], tmp_path / "x", CFG, canary_share=0.5,
                frame_fn=stand_in_frame)

    cfg = TrainConfig(**{**CFG.__dict__, "seed": 11})  # a different model than the active one
    clock.advance_us(1_000)
    result = retrain(warehouse, clock, [data["jan"], data["feb"]], tmp_path / "new", cfg, canary_share=0.1,
                     eval_data=[data["mar"]], frame_fn=stand_in_frame, max_ece=0.2)
    assert result.realized["read"] == 60 and result.realized["matched"] == 60
    assert result.card["training"]["realized_outcomes"]["matched"] == 60
    assert result.deployed, result.reason
    canary = registry.canary()
    active = registry.active()
    assert canary is not None and canary.model_version == result.model_version
    assert active is not None and active.model_version != result.model_version
    actions = [r["action"] for r in registry.audit_log()]
    assert actions[:2] == ["register", "deploy"]  # ensure_default
    assert actions[2:] == ["retrain_rejected", "retrain_start", "retrain_trained", "register", "deploy_canary",
                           "retrain_done"]

    # A gate the model cannot pass: audited, nothing deployed.
    clock.advance_us(1_000)
    strict = retrain(warehouse, clock, [data["jan"], data["feb"]], tmp_path / "strict",
                     TrainConfig(**{**CFG.__dict__, "seed": 12}), canary_share=0.05, eval_data=[data["mar"]],
                     frame_fn=stand_in_frame, max_ece=0.0)
    assert not strict.deployed and "ECE" in strict.reason
    assert registry.audit_log()[-1]["action"] == "retrain_rejected"
    assert registry.canary() is not None and registry.canary().model_version == result.model_version  # type: ignore[union-attr]


def test_surge_evaluate_and_retrain_commands(data: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import services.training.dataset as dataset_mod
    import services.training.train as train_mod
    from services.cli import app

    monkeypatch.setattr(dataset_mod, "klines_frame", stand_in_frame)
    monkeypatch.setattr(train_mod, "klines_frame", stand_in_frame)
    runner = CliRunner()
    report = tmp_path / "wf.json"
    res = runner.invoke(app, ["evaluate", "--walk-forward", "--data", str(data["jan"]), "--data", str(data["feb"]),
                              "--data", str(data["mar"]), "--step", "week", "--min-train-days", "3", "--horizon", "5",
                              "--folds", "3", "--out", str(report)])
    assert res.exit_code in (0, 1), res.output  # 1: the drift test says a retrain is due
    assert report.exists() and report.with_suffix(".md").read_text().startswith("# Walk-forward evaluation")
    assert "| fold |" in res.output

    monkeypatch.setenv("SURGE_CLICKHOUSE_URL", f"chdb://{tmp_path / 'ch'}")
    monkeypatch.setenv("SURGE_CANARY_SHARE", "0.08")
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge")
    wh.insert("outcomes", [outcome_row("o1", "LONG", 5, "HIT_TARGET", (T0_MS + 600 * 60_000) * 1000 + 5, 60.0, 40.0)],
              list(OUTCOME_COLUMNS))
    wh.close()
    res = runner.invoke(app, ["retrain", "--data", str(data["jan"]), "--data", str(data["feb"]), "--eval",
                              str(data["mar"]), "--out", str(tmp_path / "re"), "--horizons", "5", "--max-ece", "0.5"])
    assert res.exit_code in (0, 1), res.output
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    actions = [r["action"] for r in wh.query("SELECT action FROM surge.audit_logs ORDER BY at_us")]
    wh.close()
    assert actions[0] == "retrain_start" and "retrain_trained" in actions
    assert actions[-1] in ("retrain_done", "retrain_rejected")
