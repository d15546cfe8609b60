"""``surge score``: calibrated probabilities of a model folder on a data file, through the serving code path
(``streams.infer.model``: the feature mapping the infer core uses, the ONNX graph and the calibration table),
into a parquet file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from services.training import dataset
from services.training.dataset import DataError, FrameFn, check_frame
from streams.infer.model import feature_index, load_model

DataKind = Literal["auto", "klines", "capture"]


def detect_kind(path: Path) -> Literal["klines", "capture"]:
    """The batch driver's own rule (zip or CSV files are klines, everything else a capture)."""
    from streams.features.batch import is_kline_path

    return "klines" if is_kline_path(path) else "capture"


def score_frame(model_dir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """symbol, ts and p_up_<H> per row of a batch features frame; refuses another feature_version."""
    model = load_model(model_dir)
    if frame.empty:
        raise DataError("no feature rows to score")
    version = check_frame_version(frame)
    if version != model.feature_version:
        raise DataError(f"data has feature_version {version!r}, model {model.model_version} expects "
                        f"{model.feature_version!r}")
    # By name onto the model's input order, as the infer core maps a FeatureVector; a column the frame lacks is NaN.
    src, dst = feature_index(model.feature_names, [str(c) for c in frame.columns])
    x = np.full((len(frame), model.n_features), np.nan)
    x[:, dst] = frame.iloc[:, src].to_numpy(dtype=np.float64)
    pred = model.predict(x)
    out = pd.DataFrame({"symbol": frame["symbol"].astype(str).to_numpy(),
                        "ts": frame["ts"].to_numpy(dtype=np.int64)})
    for j, h in enumerate(model.horizons):
        out[f"p_up_{h}"] = pred.p_up[:, j]
    out.attrs["model_version"] = model.model_version
    out.attrs["feature_version"] = model.feature_version
    return out


def check_frame_version(frame: pd.DataFrame) -> str:
    if "feature_version" not in frame.columns or "symbol" not in frame.columns or "ts" not in frame.columns:
        raise DataError("features frame lacks symbol, ts or feature_version")
    versions = sorted({str(v) for v in frame["feature_version"]})
    if len(versions) != 1:
        raise DataError(f"features frame mixes feature versions {versions}")
    return versions[0]


def score(model_dir: Path, data: Sequence[Path], out: Path, kind: DataKind = "auto",
          frame_fn: FrameFn | None = None) -> pd.DataFrame:
    """Score data files and write ``out`` (parquet; the model and feature versions go in its metadata)."""
    paths = [Path(p) for p in data]
    if frame_fn is None:
        kinds = {detect_kind(p) if kind == "auto" else kind for p in paths}
        if len(kinds) != 1:
            raise DataError("cannot score klines and captures in one run")
        frame_fn = dataset.klines_frame if kinds == {"klines"} else dataset.capture_frame
    frame = frame_fn(paths)
    if {"high", "low", "close"} <= set(frame.columns):
        check_frame(frame)
    scored = score_frame(model_dir, frame)
    table = pa.Table.from_pandas(scored, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"surge.model_version": str(scored.attrs["model_version"]).encode(),
            b"surge.feature_version": str(scored.attrs["feature_version"]).encode()}
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), out)
    return scored
