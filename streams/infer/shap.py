"""SHAP attribution off the infer stage's hot path: TreeSHAP by LightGBM's ``pred_contrib`` on the artifact's own
boosters, batched every ``SURGE_ATTRIBUTION_INTERVAL_S``, stored in ClickHouse ``attributions``.

Why off the hot path: ``pred_contrib`` costs tens of µs per row and horizon, far more than the ONNX call, so the
prediction on ``predictions.v1`` keeps the cheap proxy in ``top_features`` (standardised value x gain
importance, see ``model.py``) and this worker adds the exact attribution a few seconds later:

* the core hands every prediction it emits, with its input row, to a ``ShapQueue`` (bounded; nothing blocks);
* every interval the worker drains at most ``SURGE_ATTRIBUTION_BATCH_MAX`` rows: all of them when they fit,
  else the newest prediction of each instrument first, then the newest of the rest; the others are counted
  as skipped (``surge_infer_attribution_skipped_total``), never silently;
* one ``pred_contrib`` call per horizon's booster on the whole batch; the top ``TOP_K`` features by |SHAP| of
  each (prediction, horizon) go into ``attributions`` with their values, the SHAP values (raw-score units, i.e.
  log-odds of the uncalibrated p_up) and the base value, so contributions + base = the booster's raw score.

A model folder without boosters (``attribution.shap`` absent in model.json) gets no SHAP rows; the gateway's
``/reports/attribution`` then falls back to the proxy and says so.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from schemas import common_pb2, prediction_pb2
from streams.infer.model import Model, ModelError

log = logging.getLogger("surge.infer.shap")
FloatArray = npt.NDArray[np.float64]
TOP_K: Final = 5
EXPLAINERS_KEPT: Final = 4
TABLE: Final = "attributions"
COLUMNS: Final = ("prediction_id", "data_window_id", "venue", "symbol", "model_version", "horizon_min",
                  "features", "feature_values", "contributions", "base_value", "raw_score", "exchange_us",
                  "computed_us")


@dataclass(frozen=True, slots=True)
class Pending:
    """One emitted prediction waiting for its attribution."""

    model: Model
    prediction_id: str
    data_window_id: str
    venue: str
    symbol: str
    exchange_us: int
    row: FloatArray


class ShapExplainer:
    """The boosters of one model folder, one per horizon, loaded once."""

    def __init__(self, model: Model, boosters: dict[int, Any]) -> None:
        self.model = model
        self.boosters = boosters

    @classmethod
    def for_model(cls, model: Model) -> ShapExplainer | None:
        files = (model.meta.get("attribution") or {}).get("shap", {}).get("boosters")
        if not files:
            return None
        import lightgbm as lgb  # only where a model has boosters: the hot path never imports it

        boosters: dict[int, Any] = {}
        for h in model.horizons:
            name = files.get(str(h))
            path = model.folder / str(name) if name else None
            if path is None or not path.is_file() or Path(str(name)).name != str(name):
                raise ModelError(f"{model.model_version}: SHAP booster for horizon {h} missing ({name!r})")
            try:
                booster = lgb.Booster(model_str=gzip.decompress(path.read_bytes()).decode())
            except Exception as exc:  # a corrupt file of any kind: this model gets no SHAP, nothing else changes
                raise ModelError(f"{model.model_version}: SHAP booster {name} unreadable: {exc}") from exc
            if booster.num_feature() != model.n_features:
                raise ModelError(f"{model.model_version}: booster {name} has {booster.num_feature()} features, "
                                 f"the model {model.n_features}")
            boosters[h] = booster
        return cls(model, boosters)

    def contributions(self, x: FloatArray) -> dict[int, FloatArray]:
        """SHAP values [N, F + 1] per horizon (the last column is the base value)."""
        # One thread: the worker must not take both cores from the hot path's ONNX session.
        return {h: np.asarray(b.predict(x, pred_contrib=True, num_threads=1), dtype=np.float64)
                for h, b in self.boosters.items()}

    def rows(self, batch: Sequence[Pending], now_us: int) -> list[list[Any]]:
        """``attributions`` rows: TOP_K by |SHAP| per (prediction, horizon); missing inputs are never a reason."""
        if not batch:
            return []
        x = np.vstack([p.row for p in batch])
        names = self.model.feature_names
        out: list[list[Any]] = []
        for h, phi in self.contributions(x).items():
            contrib, base = phi[:, :-1], phi[:, -1]
            key = np.where(np.isnan(x), -1.0, np.abs(contrib))
            top = np.argsort(-key, axis=1, kind="stable")[:, :TOP_K]
            for i, p in enumerate(batch):
                keep = [int(k) for k in top[i] if not np.isnan(x[i, k])]
                out.append([p.prediction_id, p.data_window_id, p.venue, p.symbol, self.model.model_version, h,
                            [names[k] for k in keep], [float(x[i, k]) for k in keep],
                            [float(contrib[i, k]) for k in keep], float(base[i]), float(phi[i].sum()),
                            p.exchange_us, now_us])
        return out


class ShapQueue:
    """Predictions handed over by the core; bounded (the oldest fall out, counted). Thread-safe."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._items: deque[Pending] = deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.dropped = 0

    def offer(self, model: Model, prediction: prediction_pb2.Prediction, row: FloatArray) -> None:
        item = Pending(model, prediction.prediction_id, prediction.data_window_id,
                       common_pb2.Venue.Name(prediction.venue), prediction.symbol, prediction.ts.exchange_us,
                       np.array(row, dtype=np.float64))
        with self._lock:
            self._items.append(item)
            while len(self._items) > self._capacity:
                self._items.popleft()
                self.dropped += 1

    def drain(self, batch_max: int) -> tuple[list[Pending], int]:
        """At most ``batch_max`` items (see the module docstring for which) and how many were skipped."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        if len(items) <= batch_max:
            return items, 0
        newest: OrderedDict[tuple[str, str], int] = OrderedDict()
        for i, p in enumerate(items):
            newest[(p.venue, p.symbol)] = i
        chosen = sorted(newest.values(), reverse=True)[:batch_max]
        taken = set(chosen)
        rest = [i for i in range(len(items) - 1, -1, -1) if i not in taken]
        chosen.extend(rest[: batch_max - len(chosen)])
        return [items[i] for i in sorted(chosen)], len(items) - len(chosen)


class ShapWorker:
    """Drains the queue every ``interval_s`` on a daemon thread, explains and inserts (see the module doc)."""

    def __init__(self, queue: ShapQueue, insert: Callable[[list[list[Any]]], None], now_us: Callable[[], int], *,
                 interval_s: float = 2.0, batch_max: int = 200,
                 on_batch: Callable[[int, int, float], None] = lambda rows, skipped, seconds: None) -> None:
        self.queue = queue
        self.insert = insert
        self.now_us = now_us
        self.interval_s = interval_s
        self.batch_max = batch_max
        self.on_batch = on_batch
        # Loaded boosters by model version; a few only (hot swaps and canaries come and go).
        self._explainers: OrderedDict[str, ShapExplainer | None] = OrderedDict()
        self._dropped_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shap", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 30)

    def explainer(self, model: Model) -> ShapExplainer | None:
        if model.model_version not in self._explainers:
            try:
                self._explainers[model.model_version] = ShapExplainer.for_model(model)
            except Exception as exc:  # the model is served anyway; only its SHAP rows are missing
                log.error("no SHAP attribution for %s: %s", model.model_version, exc)
                self._explainers[model.model_version] = None
            while len(self._explainers) > EXPLAINERS_KEPT:
                self._explainers.popitem(last=False)
        self._explainers.move_to_end(model.model_version)
        return self._explainers[model.model_version]

    def run_once(self) -> int:
        """One drain: the number of rows inserted."""
        batch, skipped = self.queue.drain(self.batch_max)
        dropped = self.queue.dropped
        skipped += dropped - self._dropped_seen  # fell out of the full queue since the last batch
        self._dropped_seen = dropped
        started = time.perf_counter()  # a duration for the metric, not a timestamp
        by_model: dict[str, list[Pending]] = {}
        for p in batch:
            by_model.setdefault(p.model.model_version, []).append(p)
        rows: list[list[Any]] = []
        now = self.now_us()
        for items in by_model.values():
            explainer = self.explainer(items[0].model)
            if explainer is None:
                skipped += len(items)
                continue
            try:
                rows.extend(explainer.rows(items, now))
            except Exception:  # one model's failure costs its rows, not the other models'
                log.exception("SHAP of %d prediction(s) of %s failed", len(items), items[0].model.model_version)
                skipped += len(items)
        if rows:
            self.insert(rows)
        self.on_batch(len(rows), skipped, time.perf_counter() - started)
        return len(rows)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a warehouse hiccup costs this batch's attributions, never the stage
                log.exception("SHAP attribution batch failed")
        try:
            self.run_once()  # what was queued before the stop
        except Exception:
            log.exception("last SHAP attribution batch failed")
