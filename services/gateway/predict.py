"""Scoring for ``POST /predict``: concurrent requests are batched onto one ONNX call.

The model is the infer stage's own (``streams.infer.model``: the ONNX session, isotonic calibration, Wilson
interval, attribution) and the decision is the decision stage's (``streams.decision.core.evaluate`` with the
stage's cost model), so the gateway adds no logic of its own. ``Batcher`` queues each request's feature row;
the first request of a batch waits ``predict_batch_wait_ms`` (or until ``predict_batch_max`` rows are queued)
and the whole batch is scored in one ``Model.predict`` on a single worker thread. ``naive=True`` scores each
request alone (the benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.infer.model import Model, Prediction, load_model

log = logging.getLogger("surge.gateway.predict")


class PredictUnavailable(RuntimeError):
    """No model could be loaded, or scoring did not finish within the timeout."""


@dataclass
class _Pending:
    row: np.ndarray
    future: asyncio.Future[tuple[Model, Prediction, int]]


class Batcher:
    """Batches feature rows onto one ``Model.predict`` per batch (see the module docstring)."""

    def __init__(self, load: Callable[[], Model], *, batch_max: int = 512, wait_ms: float = 1.0,
                 naive: bool = False) -> None:
        self._load = load
        self._model: Model | None = None
        self._model_lock = threading.Lock()
        self.batch_max = batch_max
        self.wait_s = wait_ms / 1000.0
        self.naive = naive
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surge-predict")
        self._pending: list[_Pending] = []
        self._scheduled = False
        self.batches = 0
        self.rows = 0

    def model(self) -> Model:
        with self._model_lock:
            if self._model is None:
                try:
                    self._model = self._load()
                except Exception as exc:
                    raise PredictUnavailable(f"no model: {exc}") from exc
                log.info("predict: serving model %s (%d features, horizons %s)", self._model.model_version,
                         self._model.n_features, self._model.horizons)
            return self._model

    async def ready_model(self) -> Model:
        if self._model is not None:
            return self._model
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.model)

    async def score(self, row: np.ndarray, timeout_s: float) -> tuple[Model, Prediction, int]:
        """(model, prediction of a batch, this row's index in it) within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Model, Prediction, int]] = loop.create_future()
        if self.naive:
            model = await self.ready_model()
            task = loop.run_in_executor(self._pool, model.predict, row[None, :])
            try:
                return model, await asyncio.wait_for(task, timeout_s), 0
            except TimeoutError:
                raise PredictUnavailable("prediction timed out") from None
        self._pending.append(_Pending(row, future))
        if len(self._pending) >= self.batch_max:
            self._flush(loop)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_later(self.wait_s, self._flush, loop)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise PredictUnavailable("prediction timed out") from None

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self.batch_max], self._pending[self.batch_max:]
            loop.create_task(self._run(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            model = await self.ready_model()
            x = np.stack([p.row for p in batch])
            prediction = await loop.run_in_executor(self._pool, model.predict, x)
        except Exception as exc:
            error = exc if isinstance(exc, PredictUnavailable) else PredictUnavailable(f"scoring failed: {exc}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        self.batches += 1
        self.rows += len(batch)
        for i, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result((model, prediction, i))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def model_loader(folder: Path | None, active_artifact: Callable[[], str | None]) -> Callable[[], Model]:
    """``folder`` when set, else the registry's active artifact, else the shipped default model."""

    def load() -> Model:
        if folder is not None:
            return load_model(folder)
        try:
            path = active_artifact()
        except Exception as exc:  # the registry being down must not stop /predict: the default model serves
            log.warning("predict: registry unreachable (%s); using the shipped model", exc)
            path = None
        if path and Path(path).exists():
            return load_model(Path(path))
        from streams.infer.stage import default_model_dir

        return load_model(default_model_dir())

    return load


def now_us() -> int:
    return time.time_ns() // 1000
