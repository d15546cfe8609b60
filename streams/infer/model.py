"""Model artifact loading: one ONNX graph for every horizon plus the JSON metadata that makes it usable.

A model folder holds:

* ``model.onnx``: one graph, input ``features`` float32 ``[N, F]`` (F = ``features`` of model.json, in that
  order, NaN = missing), one output ``p_up_raw`` float32 ``[N, H]``: the uncalibrated probability that the
  upper barrier is hit first, one column per horizon in ``horizons_min`` order. One graph and one output
  so a micro-batch costs a single ``session.run``.
* ``model.json``::

    {
      "format": "surge-model/1",
      "model_version": "...", "feature_version": "...",
      "features": ["spread_bps", ...],             # ONNX input column order
      "horizons_min": [5, 10, 30],                 # ONNX output column order
      "onnx": {"file": "model.onnx", "input": "features", "output": "p_up_raw", "sha256": "..."},
      "calibration": {"5": {"x": [...], "y": [...],          # isotonic table, applied with numpy.interp
                            "bin_edges": [...], "bin_counts": [...],  # calibration samples per raw-p bin
                            "z": 1.96}, ...},
      "attribution": {"mean": [...], "std": [...], "importance": [...]},
      "labels": {"theta_up": 0.006, "theta_dn": 0.004, "timeout": "not up", ...},  # optional
      "training": {...provenance...}
    }

``labels`` (optional) states the triple barrier the model was trained on; it travels with every prediction
(``upper_barrier_bps``, ``lower_barrier_bps``, ``timeout_counts_as_not_up``) so the decision stage prices
the probability the model actually gives. Without it the barriers are unstated (0) and ``1 - p_up`` is
taken as P(lower barrier first).

Confidence interval: the Wilson score interval of the calibrated p with n = the number of out-of-fold
calibration samples whose raw probability fell in the same raw-p bin: wide where calibration data is scarce.

Attribution (``top_features``): contribution_j = (x_j - mean_j) / std_j * importance_j with the training mean
and std and the normalised gain importance averaged over horizons; a cheap, signed, per-row proxy (not SHAP).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MODEL_FORMAT = "surge-model/1"
MODEL_JSON = "model.json"


class ModelError(ValueError):
    """A model folder that cannot be served as it is."""


def physical_cores() -> int:
    """Physical cores (hyper-threads share execution units, so more intra-op threads only contend)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    try:
        cores: set[tuple[str, str]] = set()
        phys = ""
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    cores.add((phys, value))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads or physical_cores()
    opts.inter_op_num_threads = 1  # one graph per call: parallelism is inside the tree ensembles, not across
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def wilson_interval(p: FloatArray, n: FloatArray | IntArray, z: float) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval of proportions p from n samples; (0, 1) where n == 0; always contains p."""
    nf = np.asarray(n, dtype=np.float64)
    safe = np.maximum(nf, 1.0)
    z2 = z * z
    denom = 1.0 + z2 / safe
    center = (p + z2 / (2.0 * safe)) / denom
    half = z * np.sqrt(np.clip(p * (1.0 - p), 0.0, None) / safe + z2 / (4.0 * safe * safe)) / denom
    lo = np.where(nf > 0, center - half, 0.0)
    hi = np.where(nf > 0, center + half, 1.0)
    # Rounding can put p a hair outside its own interval; the contract is ci_low <= p <= ci_high.
    return np.clip(np.minimum(lo, p), 0.0, 1.0), np.clip(np.maximum(hi, p), 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Isotonic map raw -> calibrated probability and the calibration-sample counts per raw-p bin."""

    horizon_min: int
    x: FloatArray
    y: FloatArray
    bin_edges: FloatArray
    bin_counts: IntArray
    z: float

    @classmethod
    def from_json(cls, horizon_min: int, doc: Mapping[str, Any]) -> Calibration:
        x = np.asarray(doc["x"], dtype=np.float64)
        y = np.asarray(doc["y"], dtype=np.float64)
        edges = np.asarray(doc["bin_edges"], dtype=np.float64)
        counts = np.asarray(doc["bin_counts"], dtype=np.int64)
        if len(x) == 0 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ModelError(f"horizon {horizon_min}: calibration x/y must be equal-length and non-decreasing")
        if not (np.all((y >= 0) & (y <= 1))):
            raise ModelError(f"horizon {horizon_min}: calibrated probabilities outside [0, 1]")
        if len(edges) != len(counts) + 1 or np.any(np.diff(edges) <= 0):
            raise ModelError(f"horizon {horizon_min}: bin_edges must be increasing with len(bin_counts) + 1")
        return cls(horizon_min, x, y, edges, counts, float(doc.get("z", 1.96)))

    def to_json(self) -> dict[str, Any]:
        """The model.json entry that ``from_json`` reads back."""
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y],
                "bin_edges": [float(v) for v in self.bin_edges], "bin_counts": [int(c) for c in self.bin_counts],
                "z": self.z}

    def apply(self, raw: FloatArray) -> FloatArray:
        """Calibrated probabilities of raw ones: what the infer stage serves, and what training evaluates."""
        return np.clip(np.interp(raw, self.x, self.y), 0.0, 1.0)

    def counts(self, raw: FloatArray) -> IntArray:
        idx = np.clip(np.searchsorted(self.bin_edges, raw, side="right") - 1, 0, len(self.bin_counts) - 1)
        return self.bin_counts[idx]


@dataclass(frozen=True, slots=True)
class Attribution:
    mean: FloatArray
    std: FloatArray
    importance: FloatArray

    def contributions(self, x: FloatArray) -> FloatArray:
        """Signed standardised value x importance per cell; 0 where the value is missing."""
        z = (x - self.mean) / self.std
        return np.where(np.isnan(z), 0.0, z * self.importance)


@dataclass(frozen=True, slots=True)
class Prediction:
    """Calibrated probabilities and their interval, each [N, H]."""

    raw: FloatArray
    p_up: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray


@dataclass(frozen=True, slots=True)
class Barriers:
    """The triple barrier behind p_up, in bps of the entry price; 0 = not stated by the model."""

    upper_bps: float = 0.0
    lower_bps: float = 0.0
    timeout_counts_as_not_up: bool = False

    @classmethod
    def from_labels(cls, labels: Mapping[str, Any] | None) -> Barriers:
        if not labels:
            return cls()
        try:
            upper, lower = float(labels["theta_up"]) * 1e4, float(labels["theta_dn"]) * 1e4
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"labels must give numeric theta_up and theta_dn: {exc}") from None
        if not (0.0 < upper < 1e4 and 0.0 < lower < 1e4):
            raise ModelError(f"label barriers must be in (0, 1): theta_up {upper / 1e4}, theta_dn {lower / 1e4}")
        return cls(upper, lower, labels.get("timeout") == "not up")


class Model:
    """A loaded model folder: the ONNX Runtime session and everything model.json says about it."""

    def __init__(self, folder: Path, meta: Mapping[str, Any], session: ort.InferenceSession) -> None:
        self.folder = folder
        self.meta = meta
        self.session = session
        self.model_version: str = str(meta["model_version"])
        self.feature_version: str = str(meta["feature_version"])
        self.feature_names: tuple[str, ...] = tuple(str(n) for n in meta["features"])
        self.horizons: tuple[int, ...] = tuple(int(h) for h in meta["horizons_min"])
        self.input_name: str = str(meta["onnx"]["input"])
        self.output_name: str = str(meta["onnx"]["output"])
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ModelError("duplicate feature names in model.json")
        cal = meta["calibration"]
        missing = [h for h in self.horizons if str(h) not in cal]
        if missing:
            raise ModelError(f"no calibration for horizon(s) {missing}")
        self.calibrations = tuple(Calibration.from_json(h, cal[str(h)]) for h in self.horizons)
        self.barriers = Barriers.from_labels(meta.get("labels"))
        att = meta["attribution"]
        nf = len(self.feature_names)
        arrays = [np.asarray(att[k], dtype=np.float64) for k in ("mean", "std", "importance")]
        if any(a.shape != (nf,) for a in arrays):
            raise ModelError("attribution mean/std/importance must have one entry per feature")
        mean, std, importance = arrays
        self.attribution = Attribution(mean, np.where(std > 0, std, 1.0), importance)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict_raw(self, x: npt.NDArray[np.float32]) -> FloatArray:
        """Uncalibrated p_up [N, H] from float32 inputs [N, F] in feature_names order."""
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        raw = np.asarray(out, dtype=np.float64)
        if raw.shape != (len(x), len(self.horizons)):
            raise ModelError(f"model output shape {raw.shape}, expected ({len(x)}, {len(self.horizons)})")
        return raw

    def predict(self, x: FloatArray) -> Prediction:
        raw = self.predict_raw(np.ascontiguousarray(x, dtype=np.float32))
        p = np.empty_like(raw)
        lo = np.empty_like(raw)
        hi = np.empty_like(raw)
        for j, cal in enumerate(self.calibrations):
            p[:, j] = cal.apply(raw[:, j])
            lo[:, j], hi[:, j] = wilson_interval(p[:, j], cal.counts(raw[:, j]), cal.z)
        return Prediction(raw, p, lo, hi)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{folder / MODEL_JSON}: not a {MODEL_FORMAT} document")
    missing = [k for k in ("model_version", "feature_version", "features", "horizons_min", "onnx", "calibration",
                           "attribution") if k not in meta]
    if missing:
        raise ModelError(f"{folder / MODEL_JSON}: missing {', '.join(missing)}")
    return meta


def load_model(folder: Path | str, intra_op_threads: int | None = None) -> Model:
    """Load and check a model folder; raises ModelError if the artifact is inconsistent."""
    folder = Path(folder)
    meta = read_meta(folder)
    onnx_path = folder / str(meta["onnx"].get("file", "model.onnx"))
    expected = meta["onnx"].get("sha256")
    if expected and sha256_file(onnx_path) != expected:
        raise ModelError(f"{onnx_path}: sha256 differs from model.json")
    session = ort.InferenceSession(
        str(onnx_path), sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
    )
    model = Model(folder, meta, session)
    inputs = {i.name: i for i in session.get_inputs()}
    if model.input_name not in inputs or model.output_name not in {o.name for o in session.get_outputs()}:
        raise ModelError(f"{onnx_path}: graph lacks input {model.input_name!r} or output {model.output_name!r}")
    try:  # fail at start-up, not on the first batch
        model.predict_raw(np.full((2, model.n_features), np.nan, dtype=np.float32))
    except Exception as exc:
        raise ModelError(f"{onnx_path}: probe inference failed: {exc}") from exc
    return model


def feature_index(model_names: Sequence[str], vector_names: Sequence[str]) -> tuple[IntArray, IntArray]:
    """(source positions in the vector, destination columns in the model input) of the shared names."""
    pos = {n: i for i, n in enumerate(vector_names)}
    pairs = [(pos[n], j) for j, n in enumerate(model_names) if n in pos]
    src = np.asarray([s for s, _ in pairs], dtype=np.int64)
    dst = np.asarray([t for _, t in pairs], dtype=np.int64)
    return src, dst
