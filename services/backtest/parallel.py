"""The parallel parts of a kline backtest, in worker processes, with results equal to a one-process run.

Two steps of ``run_klines`` parallelise without changing a number: the features, because the features stage
keeps its state per symbol (each symbol's bars are folded by their own ``compute_klines_frame`` call), and the
inference, because the infer core scores each vector on its own (chunks of ``INFER_CHUNK`` vectors, each with
the clock at its newest vector as the one-process loop sets it). The decisions, the matching and the risk state
machine stay in one process: a paper book's risk level depends on every trade before it.

Workers come from a ``forkserver`` context: the parent holds an ONNX session and threads, which a plain fork
would copy mid-state; each worker loads the model once (one intra-op thread) in its initializer.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from schemas import features_pb2, prediction_pb2
from streams.runtime.settings import Settings


class _Worker:
    """The per-process state of an inference worker (one per process, set by ``_start_worker``)."""

    pipeline: object | None = None


def _start_worker(model_dir: str, settings: Settings) -> None:
    from services.backtest.engine import Pipeline
    from streams.infer.model import load_model

    _Worker.pipeline = Pipeline(settings, load_model(Path(model_dir), intra_op_threads=1))


def _infer_chunk(payload: list[bytes]) -> tuple[list[bytes], dict[str, int]]:
    from services.backtest.engine import Pipeline

    pipeline = _Worker.pipeline
    assert isinstance(pipeline, Pipeline), "worker not started"
    pipeline.rejects.clear()
    vectors = [features_pb2.FeatureVector.FromString(raw) for raw in payload]
    return [p.SerializeToString() for p in pipeline.infer(vectors)], dict(pipeline.rejects)


def _features_of(paths: list[str], symbol: str) -> pd.DataFrame:
    from streams.features.batch import compute_klines_frame

    return compute_klines_frame([Path(p) for p in paths], symbol=symbol)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


def _model_pool(workers: int, model_dir: Path, settings: Settings) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_start_worker, initargs=(str(model_dir), settings))


def kline_features(paths: Sequence[Path], workers: int) -> pd.DataFrame:
    """``compute_klines_frame(paths)``, one symbol per task."""
    from streams.features.batch import compute_klines_frame, kline_files, kline_symbol

    by_symbol: dict[str, list[str]] = {}
    for path in paths:
        for f in kline_files(Path(path)):
            by_symbol.setdefault(kline_symbol(f).upper(), []).append(str(f))
    if workers <= 1 or len(by_symbol) <= 1 or "" in by_symbol:
        return compute_klines_frame(list(paths))  # nothing to split (or a name the one-process path explains)
    symbols = sorted(by_symbol)
    with _pool(min(workers, len(symbols))) as pool:
        frames = list(pool.map(_features_of, [by_symbol[s] for s in symbols], symbols))
    return pd.concat(frames, ignore_index=True)


def infer_chunks(model_dir: Path, settings: Settings, chunks: Sequence[Sequence[features_pb2.FeatureVector]],
                 workers: int) -> tuple[list[prediction_pb2.Prediction], dict[str, int]]:
    """Every chunk through the infer core in ``workers`` processes; predictions in chunk order, and the rejects
    by kind summed."""
    payloads = [[vec.SerializeToString() for vec in chunk] for chunk in chunks]
    predictions: list[prediction_pb2.Prediction] = []
    rejects: dict[str, int] = {}
    with _model_pool(workers, model_dir, settings) as pool:
        for encoded, refused in pool.map(_infer_chunk, payloads):
            predictions.extend(prediction_pb2.Prediction.FromString(raw) for raw in encoded)
            for kind, n in refused.items():
                rejects[kind] = rejects.get(kind, 0) + n
    return predictions, rejects
