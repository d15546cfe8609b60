"""The training pipeline end to end on small synthetic kline files: artifact layout the infer stage loads,
registry-readable card, parity, purge of the evaluation period, metrics, `surge train` and `surge score`.

The features here come from a stand-in for the batch driver (``stand_in_frame``: a planted signal feature),
injected through ``frame_fn`` / monkeypatching: the pipeline under test is everything after the features.
Metric functions are checked with exact hand-computed values.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from services.training.dataset import DataError, kline_time_range
from services.training.metrics import (
    probability_metrics,
    quantile_ece,
    reliability_bins,
    top_k_hits,
    top_k_hits_nonoverlapping,
)
from services.training.score import detect_kind, score
from services.training.train import TrainConfig, train
from streams.infer.model import load_model
from streams.storage.registry import record_from_artifact

pytestmark = pytest.mark.unit

T0_MS = 1_767_225_600_000  # 2026-01-01


def write_klines(path: Path, start_ms: int, n: int, seed: int) -> Path:
    """A Binance-format monthly kline dump (no header, µs timestamps as from 2025), gzipped CSV."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.0012, n)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.0005, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.0005, n)))
    t_us = (start_ms + 60_000 * np.arange(n)) * 1000
    with gzip.open(path, "wt") as fh:
        for i in range(n):
            fh.write(f"{t_us[i]},{open_[i]:.6f},{high[i]:.6f},{low[i]:.6f},{close[i]:.6f},1.0,"
                     f"{t_us[i] + 59_999_999},1,1,0.5,0.5,0\n")
    return path


def stand_in_frame(paths: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for p in paths:
        with gzip.open(p, "rt") as fh:
            for line in fh:
                f = line.split(",")
                rows.append((int(f[0]) // 1000, float(f[1]), float(f[2]), float(f[3]), float(f[4])))
    df = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close"]).sort_values("ts", ignore_index=True)
    rng = np.random.default_rng(0)
    fwd = np.log(df["close"].shift(-5) / df["close"]).fillna(0.0).to_numpy()
    df["signal"] = fwd + rng.normal(0, 0.002, len(df))  # planted: a noisy look at the next 5 bars
    df["noise"] = rng.normal(size=len(df))
    df["empty"] = np.nan
    df["symbol"] = "TESTUSDT"
    df["feature_version"] = "fv-test"
    return df[["symbol", "ts", "signal", "noise", "empty", "feature_version", "open", "high", "low", "close"]]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("klines")
    return {
        "jan": write_klines(d / "TESTUSDT-1m-2026-01.csv.gz", T0_MS, 5000, 1),
        "feb": write_klines(d / "TESTUSDT-1m-2026-02.csv.gz", T0_MS + 5000 * 60_000, 5000, 2),
        "mar": write_klines(d / "TESTUSDT-1m-2026-03.csv.gz", T0_MS + 10_000 * 60_000, 3000, 3),
    }


CFG = TrainConfig(horizons=(5, 10), theta_up=0.003, theta_dn=0.002, num_boost_round=30, min_child_samples=50,
                  folds=4)


@pytest.fixture(scope="module")
def trained(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("model") / "m"
    card = train([data["jan"], data["feb"]], out, CFG, eval_data=[data["mar"]], frame_fn=stand_in_frame, quiet=True,
                 command="test")
    return out, card


def test_artifact_is_what_the_infer_stage_and_registry_load(trained: tuple[Path, dict[str, object]]) -> None:
    out, card = trained
    assert sorted(p.name for p in out.iterdir()) == ["booster_10.txt.gz", "booster_5.txt.gz", "card.json", "card.md",
                                                     "model.json", "model.onnx", "reliability.png"]
    model = load_model(out)
    assert model.feature_names == ("signal", "noise")  # the all-NaN column was dropped
    assert model.horizons == (5, 10) and model.feature_version == "fv-test"
    assert model.model_version == card["model_version"] and str(card["model_version"]).startswith("klines-lgbm-")
    meta = json.loads((out / "model.json").read_text())
    assert meta["labels"]["theta_up"] == 0.003 and meta["labels"]["both_in_one_bar"] == "DOWN"
    rec = record_from_artifact(out)
    assert rec.horizons == (5, 10) and rec.model_version == model.model_version
    ev = json.loads((out / "card.json").read_text())["metrics"]["eval"]
    assert rec.calibration_ece == max(ev["5"]["ece"], ev["10"]["ece"], *(
        m["ece"] for m in json.loads((out / "card.json").read_text())["metrics"]["oof"].values()))
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "card.md").read_text()
    for needle in ("PR-AUC", "Brier base rate", "ECE", "hit@10", "Feature importance", "sha256",
                   "Focal loss vs plain log loss", "Limitations"):
        assert needle in md


def test_card_numbers(trained: tuple[Path, dict[str, object]], data: dict[str, Path]) -> None:
    _, card = trained
    parity = card["onnx_parity"]
    assert isinstance(parity, dict) and parity["max_abs_diff_raw"] < 1e-5
    metrics = card["metrics"]
    assert isinstance(metrics, dict)
    for h in ("5", "10"):
        m = metrics["eval"][h]
        # The planted signal must beat the base rate out of sample, and calibration must hold.
        assert m["brier"] < m["brier_base_rate"] and m["ece"] < 0.05 and m["pr_auc"] > m["base_rate"]
        assert m["n"] == 3000 - int(h)  # every March bar with a complete label
        assert {"focal", "logloss"} == set(card["objective_comparison"][h])  # type: ignore[index]
    training = card["training"]
    assert isinstance(training, dict)
    assert training["eval_window"]["first_bar_utc"] == "2026-01-07 22:40"
    tr_files = {f["file"]: f for f in training["train_files"]}
    assert tr_files["TESTUSDT-1m-2026-01.csv.gz"]["rows"] == 5000
    import hashlib

    assert tr_files["TESTUSDT-1m-2026-01.csv.gz"]["sha256"] == hashlib.sha256(data["jan"].read_bytes()).hexdigest()
    # Training labels never reach March: at most 10000 - h bars of Jan+Feb are usable, minus those still open.
    assert training["samples"]["5"]["train"] <= 10_000 - 1


def test_kline_time_range_reads_microseconds(data: dict[str, Path]) -> None:
    assert kline_time_range(data["feb"]) == (T0_MS + 5000 * 60_000, T0_MS + 9999 * 60_000, 5000)


def test_cli_train_and_score(data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import services.training.train as train_module
    from services.cli import app
    from services.training import dataset

    monkeypatch.setattr(train_module, "klines_frame", stand_in_frame)
    monkeypatch.setattr(dataset, "klines_frame", stand_in_frame)
    out = tmp_path / "cli-model"
    result = CliRunner().invoke(app, ["train", "--data", str(data["jan"]), "--data", str(data["feb"]),
                                      "--eval", str(data["mar"]), "--horizons", "5,10", "--out", str(out),
                                      "--gamma", "2.0", "--rounds", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["config"]["gamma"] == 2.0 and card["horizons_min"] == [5, 10]
    scored = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score", "--model", str(out), "--data", str(data["mar"]), "--out", str(scored)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(scored)
    assert table.column_names == ["symbol", "ts", "p_up_5", "p_up_10"]
    assert table.schema.metadata[b"surge.model_version"].decode() == card["model_version"]
    df = table.to_pandas()
    assert len(df) == 3000 and df["ts"].iloc[0] == T0_MS + 10_000 * 60_000
    assert df["p_up_5"].between(0, 1).all() and df["p_up_10"].between(0, 1).all()
    # The same numbers as serving: Model.predict on the same features.
    frame = stand_in_frame([data["mar"]])
    model = load_model(out)
    expected = model.predict(frame[list(model.feature_names)].to_numpy()).p_up
    np.testing.assert_array_equal(df[["p_up_5", "p_up_10"]].to_numpy(), expected)


def test_score_refuses_another_feature_version(trained: tuple[Path, dict[str, object]], data: dict[str, Path],
                                               tmp_path: Path) -> None:
    out, _ = trained

    def other(paths: Sequence[Path]) -> pd.DataFrame:
        return stand_in_frame(paths).assign(feature_version="other")

    with pytest.raises(DataError, match="feature_version"):
        score(out, [data["mar"]], tmp_path / "x.parquet", frame_fn=other)
    assert detect_kind(Path("BTCUSDT-1m-2026-05.zip")) == "klines"
    assert detect_kind(Path("btcusdt_20240808.gz")) == "capture"


def test_train_rejects_overlapping_train_and_eval(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="both training and evaluation"):
        train([data["jan"]], tmp_path / "m", CFG, eval_data=[data["jan"]], frame_fn=stand_in_frame, quiet=True)


def test_metric_functions_exact() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    bins = reliability_bins(p, y)
    assert (bins[0]["n"], bins[1]["n"], bins[9]["n"]) == (1, 2, 1)
    assert bins[1]["mean_p"] == pytest.approx(0.15) and bins[1]["freq"] == 0.5
    # ECE = 1/4 |0.05 - 0| + 2/4 |0.15 - 0.5| + 1/4 |0.95 - 1|
    m = probability_metrics(p, y, base_rate_forecast=0.25, top_k=(1, 2))
    assert m["ece"] == pytest.approx(0.0125 + 0.175 + 0.0125)
    assert m["brier"] == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2) / 4)
    assert m["brier_base_rate"] == pytest.approx((0.25**2 + 0.75**2 + 0.25**2 + 0.75**2) / 4)
    assert m["hit_at_k"] == {"1": 1.0, "2": 1.0}  # stable order: the first 0.15 (a hit) comes second
    assert m["pr_auc"] == pytest.approx(1.0 * 0.5 + 2 / 3 * 0.5)
    assert quantile_ece(p, y, bins=2) == pytest.approx(0.5 * abs(0.1 - 0.5) + 0.5 * abs(0.55 - 0.5))
    assert np.isnan(top_k_hits(p, y, 5))
    # Non-overlapping: spans [0,5] and [3,8] of the same symbol overlap, so the 2nd best is skipped.
    start, end, grp = np.array([0, 3, 10, 3]), np.array([5, 8, 12, 8]), np.array([0, 0, 0, 1])
    hit, chosen = top_k_hits_nonoverlapping(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1.0, 1.0, 0.0, 1.0]),
                                            start, end, grp, 3)
    assert chosen == 3 and hit == pytest.approx(2 / 3)  # rows 0, 2 and 3 (another symbol)
