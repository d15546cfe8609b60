"""The shipped real-data model ``streams/infer/artifacts/btcusdt-klines``: complete, loadable, registrable,
trained on the files its card names (sha256 as in ../shared/data/binance/PROVENANCE.md), and still matching the
feature code."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from schemas import prediction_pb2, signal_pb2
from streams.decision.core import DecisionState, evaluate
from streams.features.definitions import FEATURE_VERSION
from streams.infer.model import load_model
from streams.runtime.settings import Settings
from streams.storage.registry import record_from_artifact
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

FOLDER = REPO_ROOT / "streams" / "infer" / "artifacts" / "btcusdt-klines"
# sha256 prefixes from PROVENANCE.md, section 1a.
SHA_PREFIX = {"BTCUSDT-1m-2026-03.zip": "a2c1e689d39aa787", "BTCUSDT-1m-2026-04.zip": "318afd4f5acfbcfb",
              "BTCUSDT-1m-2026-05.zip": "62983d93c35e26ec"}


def card() -> dict[str, object]:
    doc = json.loads((FOLDER / "card.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_artifact_is_complete_small_and_registrable() -> None:
    names = {p.name for p in FOLDER.iterdir()}
    assert {"model.onnx", "model.json", "card.json", "card.md", "reliability.png", "README.md"} <= names
    # 2.5 MB: the gzipped boosters for SHAP (about 650 kB) joined the ONNX graph and the cards.
    assert {"booster_5.txt.gz", "booster_10.txt.gz", "booster_30.txt.gz"} <= names
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 2_500_000
    model = load_model(FOLDER)
    assert model.horizons == (5, 10, 30) and model.model_version.startswith("klines-lgbm-")
    rec = record_from_artifact(FOLDER)
    assert rec.model_version == model.model_version and rec.calibration_ece <= 0.05


def test_card_names_the_training_and_evaluation_data() -> None:
    doc = card()
    training = doc["training"]
    assert isinstance(training, dict)
    used = {f["file"]: f["sha256"] for f in [*training["train_files"], *training["eval_files"]]}
    assert {f: h[:16] for f, h in used.items()} == SHA_PREFIX
    assert [f["file"] for f in training["eval_files"]] == ["BTCUSDT-1m-2026-05.zip"]
    assert training["train_window"]["first_bar_utc"] == "2026-03-01 00:00"
    assert training["eval_window"] == {**training["eval_window"], "first_bar_utc": "2026-05-01 00:00",
                                       "last_bar_utc": "2026-05-31 23:59"}
    parity = doc["onnx_parity"]
    assert isinstance(parity, dict) and parity["max_abs_diff_raw"] < 1e-5
    metrics = doc["metrics"]
    assert isinstance(metrics, dict) and set(metrics["eval"]) == {"5", "10", "30"}


def test_shipped_model_matches_the_feature_code() -> None:
    assert load_model(FOLDER).feature_version == FEATURE_VERSION, (
        "features changed: rebuild streams/infer/artifacts/btcusdt-klines with the command in its card.md")


def test_scores_real_may_klines(shared_data: Path, tmp_path: Path) -> None:
    from services.training.score import score

    may = shared_data / "klines_1m" / "BTCUSDT-1m-2026-05.zip"
    scored = score(FOLDER, [may], tmp_path / "may.parquet")
    assert len(scored) == 44_640 and list(scored.columns) == ["symbol", "ts", "p_up_5", "p_up_10", "p_up_30"]
    assert scored["ts"].iloc[0] == 1_777_593_600_000  # 2026-05-01 00:00 UTC, the first bar's open time
    assert set(scored["symbol"]) == {"BTCUSDT"}
    for h in (5, 10, 30):
        assert scored[f"p_up_{h}"].between(0.0, 1.0).all()
    # Without April's history only the first hours differ from the card's evaluation (same serving path).
    ev = card()["metrics"]["eval"]  # type: ignore[index]
    later = scored.iloc[360:]
    assert later["p_up_30"].mean() == pytest.approx(ev["30"]["mean_p"], rel=0.05)
    # Through the decision core, as served: the predictions carry the model's barriers (+60 / -40 bps, timeouts
    # "not up"), so not one of May's small p_up values becomes a SHORT; symmetric cost-v1 made nearly all SHORTs.
    barriers = load_model(FOLDER).barriers
    assert (barriers.upper_bps, barriers.lower_bps, barriers.timeout_counts_as_not_up) == (60.0, 40.0, True)
    state = DecisionState.from_settings(Settings(decision_horizons="5"))
    decided: Counter[int] = Counter()
    for p_up in scored["p_up_5"]:
        horizon = prediction_pb2.HorizonProbability(
            horizon_min=5, p_up=float(p_up), upper_barrier_bps=barriers.upper_bps,
            lower_barrier_bps=barriers.lower_bps, timeout_counts_as_not_up=barriers.timeout_counts_as_not_up)
        prediction = prediction_pb2.Prediction(symbol="BTCUSDT", horizons=[horizon], regime="vol_low_depth_thick",
                                               spread_bps=0.1)
        decided[evaluate(prediction, horizon, state.config, state.cost).decision] += 1
    assert (scored["p_up_5"] < 0.5 - 0.04).mean() > 0.99  # what cost-v1 (a 0.04 edge from 0.5) would have shorted
    # May's p_up_5 never comes near the break-even p* = 0.4 (the card's mean forecast is ~0.4 %): all WAIT.
    assert scored["p_up_5"].max() < 0.4
    assert decided == Counter({signal_pb2.WAIT: len(scored)})
