"""One training pipeline (issue 15 item 3): the simulator's default model is a dataset for ``train.train_on``,
export and calibration live once (``export.py``, ``streams.infer.model.Calibration``), barriers come from the
decision stage's cost model, and ``surge score`` maps features as the infer core does.

The static checks fail when a second copy of a pipeline piece comes back under its usual name; the behavioural
ones when the default model stops going through ``train.py`` or scoring stops matching serving."""

from __future__ import annotations

import ast
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, prediction_pb2
from services.training import default_model, export, train
from services.training.score import score_frame
from streams.decision.cost import CostModel
from streams.infer.artifacts import SHIPPED, shipped
from streams.infer.core import InferState, process
from streams.infer.model import Calibration, load_model
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

TRAINING = REPO_ROOT / "services" / "training"
# Each piece of the pipeline and the one module allowed to define it.
HOME = {
    "TrainConfig": "train", "lgb_params": "train", "fit_booster": "train", "sample_weights": "train",
    "train_horizon": "train", "cross_fitted": "train", "train_on": "train",
    "purged_kfold": "cv", "triple_barrier": "labels", "outcome": "labels", "label_frame": "dataset",
    "ece": "metrics", "probability_metrics": "metrics", "card_markdown": "card", "plot_reliability": "card",
    "to_onnx": "export", "round_thresholds": "export", "float32_floor": "export", "fit_calibration": "export",
    "calibration_json": "export", "parity": "export",
}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(TRAINING.glob("*.py"))}


def test_every_pipeline_piece_is_defined_once() -> None:
    defined: dict[str, list[str]] = {}
    for mod, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.setdefault(node.name, []).append(mod)
    for name, home in HOME.items():
        assert defined.get(name) == [home], f"{name} is defined in {defined.get(name)}, expected only in {home}.py"


def test_no_copy_of_calibration_or_barriers_in_training() -> None:
    for mod, tree in _modules().items():
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        # Calibrated numbers come from streams.infer.model.Calibration.apply, never a local np.interp.
        assert "interp" not in attrs, f"{mod}.py interpolates a calibration table itself"
        assert {"apply_table", "REAL_BARRIER_BPS", "HORIZON_MOVE_BPS"}.isdisjoint(names | attrs), mod
        if mod != "export":
            assert "IsotonicRegression" not in names, f"{mod}.py fits isotonic tables outside export.py"
        # No horizon -> barrier table of its own: a dict literal keyed by the horizons 5, 10 and 30.
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not {5, 10, 30} <= keys, f"{mod}.py line {node.lineno}: a table keyed by horizons"


def test_export_calibration_is_the_infer_stages() -> None:
    rng = np.random.default_rng(1)
    raw = rng.random(400)
    y = (rng.random(400) < raw).astype(np.float64)
    cal = export.fit_calibration(5, raw, y)
    assert type(cal) is Calibration
    doc = export.calibration_json(cal)
    assert doc["n_oof"] == 400 == int(cal.bin_counts.sum()) and len(doc["bin_counts"]) == export.CAL_BINS
    back = Calibration.from_json(5, json.loads(json.dumps(doc)))
    probe = np.linspace(-0.1, 1.1, 97)
    np.testing.assert_array_equal(back.apply(probe), cal.apply(probe))
    assert default_model.round_thresholds is export.round_thresholds and default_model.to_onnx is export.to_onnx


def test_simulator_barriers_are_the_cost_models() -> None:
    sim = default_model.SimConfig()
    cost = CostModel(fee_bps=0.0)
    for h in (5, 10, 30, 15, 45):
        assert sim.barrier_bps(h) == cost.horizon_move_bps(h) / math.sqrt(60 / sim.seconds_per_minute)
    spec = sim.label_spec((5, 30))
    assert spec.bar_ms == 1000 and spec.timeout == "sign"
    assert spec.barriers[30].horizon == 30 * sim.seconds_per_minute
    assert spec.barriers[5].theta_up == spec.barriers[5].theta_dn == pytest.approx(20.0 / math.sqrt(10) * 1e-4)


SIM = default_model.SimConfig(symbols=("BTCUSDT",), duration_s=300.0, events_per_s=40.0, workers=1)
SIM_CFG = replace(default_model.TRAIN_CONFIG, horizons=(5, 10), folds=3, num_boost_round=8, min_child_samples=20)


@pytest.fixture(scope="module")
def sim_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[int]]:
    calls: list[int] = []
    original = train.train_horizon

    def spy(*args: Any, **kwargs: Any) -> train.HorizonResult:
        calls.append(args[1])  # the horizon
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_horizon", spy)
        out = tmp_path_factory.mktemp("sim") / "default"
        card = default_model.build(SIM, out, SIM_CFG, quiet=True, command="test")
    return out, card, calls


def test_default_model_is_trained_by_the_one_pipeline(sim_model: tuple[Path, dict[str, Any], list[int]]) -> None:
    out, card, calls = sim_model
    assert vars(default_model)["train_on"] is train.train_on and type(default_model.TRAIN_CONFIG) is train.TrainConfig
    assert calls == [5, 10]  # train.py's purged CV + final fits, once per horizon
    # The card of train.py, with the TrainConfig it was given.
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(SIM_CFG).items()}
    assert {k: card["config"][k] for k in config} == config
    assert set(card["config"]["features_used"]) <= set(default_model.MODEL_FEATURES)
    assert set(card) >= {"metrics", "objective_comparison", "onnx_parity", "feature_importance", "limitations"}
    assert set(card["objective_comparison"]["5"]) == set(train.OBJECTIVES) and card["objective"] == "logloss"
    assert card["metrics"]["eval"] == {} and set(card["metrics"]["oof"]) == {"5", "10"}
    assert {"ece", "ece_quantile", "brier_skill", "pr_auc", "reliability"} <= set(card["metrics"]["oof"]["5"])
    lightgbm = card["training"]["lightgbm"]
    assert {k: lightgbm[k] for k in train.lgb_params(SIM_CFG) if k != "num_threads"} == {
        k: v for k, v in train.lgb_params(SIM_CFG).items() if k != "num_threads"}
    assert str(card["model_version"]).startswith("sim-lgbm-")
    assert card["onnx_parity"]["max_abs_diff_raw"] < 1e-5
    # Barriers: the cost model's B(h), compressed; model.json states none, so the decision stage applies B(h).
    assert card["labels"]["barrier_bps"] == {str(h): SIM.barrier_bps(h) for h in (5, 10)}
    assert card["labels"]["decision_barrier_bps"] == {"5": 20.0, "10": 28.0}
    meta = json.loads((out / "model.json").read_text())
    assert "labels" not in meta and meta["calibration"]["5"]["z"] == export.Z_95
    model = load_model(out)
    assert (model.barriers.upper_bps, model.barriers.lower_bps) == (0.0, 0.0)
    assert model.feature_names == tuple(card["config"]["features_used"])
    md = (out / "card.md").read_text()
    assert "triple barrier on 1-second (simulated) bars" in md and "No data files" in md
    assert "no held-out evaluation window" in md


def _frame(model_names: tuple[str, ...], feature_version: str, n: int, seed: int) -> pd.DataFrame:
    """Rows of a batch features frame: the model's features but one, in another order, plus a stranger."""
    rng = np.random.default_rng(seed)
    names = [*reversed(model_names[1:]), "not_a_model_input"]
    values = rng.normal(size=(n, len(names))) * rng.choice([0.01, 1.0, 100.0], size=len(names))
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:, 0] = np.abs(values[:, 0]) + 0.5  # never an all-NaN row
    frame = pd.DataFrame(values, columns=names)
    frame.insert(0, "symbol", "BTCUSDT")
    frame.insert(1, "ts", 1_767_225_600_000 + 60_000 * np.arange(n, dtype=np.int64))
    frame["feature_version"] = feature_version
    return frame


@pytest.mark.parametrize("name", SHIPPED)
def test_score_equals_the_infer_core_on_the_shipped_models(name: str) -> None:
    folder = shipped(name)
    model = load_model(folder)
    frame = _frame(model.feature_names, model.feature_version, 64, seed=len(name))
    scored = score_frame(folder, frame)
    names = [c for c in frame.columns if c not in ("symbol", "ts", "feature_version")]
    records = []
    for i, row in enumerate(frame[names].to_numpy(dtype=np.float64)):
        vec = features_pb2.FeatureVector(
            schema_version=SCHEMA_VERSION, vector_id=f"simulator:BTCUSDT:{i}", venue=common_pb2.SIMULATOR,
            symbol="BTCUSDT", feature_version=model.feature_version, names=names, values=row.tolist(),
            regime="vol_low_depth_thick", mid_price=100.0)
        vec.ts.exchange_us = 1_000 + i
        records.append(InRecord(value=vec, key="BTCUSDT"))
    out = process(records, InferState(model), ManualClock(10_000))
    assert not out.rejects and len(out.emits) == len(frame)
    served = []
    for emit in out.emits:
        assert isinstance(emit.value, prediction_pb2.Prediction)
        served.append([h.p_up for h in emit.value.horizons])
    np.testing.assert_array_equal(scored[[f"p_up_{h}" for h in model.horizons]].to_numpy(), np.asarray(served))
