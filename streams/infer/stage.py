"""The infer stage: features.v1 -> predictions.v1, micro-batched for one ONNX Runtime call per batch and model.

Models come from the registry (``streams.infer.lifecycle``) unless ``SURGE_INFER_REGISTRY=false``. The
per-model-version metrics go on the stage's own ``/metrics`` (the registry comes with the ``StageContext``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from streams.infer.canary import CanaryPolicy
from streams.infer.core import InferState, process
from streams.infer.metrics import InferMetrics
from streams.infer.model import load_model
from streams.runtime.core import StageContext, StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.runtime.validate import TimeBounds

log = logging.getLogger("surge.infer")


def default_model_dir() -> Path:
    """The default model, shipped as package data: ``streams/infer/artifacts/btcusdt-klines``, trained on real
    Binance klines with features this pipeline's features stage computes from ticks as well (its README says
    what it was trained on and its limits live)."""
    from streams.infer.artifacts import shipped

    return shipped("btcusdt-klines")


def model_dir(settings: Settings) -> Path:
    """The bootstrap artifact: registered on a fresh install, served while the registry is unreachable."""
    return settings.model_dir if settings.model_dir is not None else default_model_dir()


def canary_policy(settings: Settings) -> CanaryPolicy:
    return CanaryPolicy(window_s=settings.canary_window_s, min_rows=settings.canary_min_rows,
                        max_invalid_rate=settings.canary_max_invalid_rate, max_drift=settings.canary_max_drift,
                        rule=settings.canary_rollback_rule)


def stale_after_us(settings: Settings) -> int:
    return round(settings.stale_input_s * 1e6)


def make_state(context: StageContext) -> InferState:
    """The served models, their per-version metrics on the stage's /metrics, and the registry watcher, which
    starts polling once the stage is subscribed."""
    settings = context.settings
    metrics = InferMetrics.create(context.registry)
    from streams.infer.lifecycle import RegistryWatcher, warn_feature_version

    if not settings.infer_registry:
        model = load_model(model_dir(settings))
        warn_feature_version(model, log)
        state = InferState(model, metrics=metrics, policy=canary_policy(settings),
                           bounds=TimeBounds.from_settings(settings), stale_after_us=stale_after_us(settings))
        attach_attribution(state, context)
        return state
    from streams.storage.registry import ModelRegistry
    from streams.storage.warehouse import apply_ddl_from, open_warehouse_from

    registry_clock = context.clock

    def open_registry() -> ModelRegistry:
        warehouse = open_warehouse_from(settings)
        apply_ddl_from(warehouse, settings)  # idempotent; the infer stage may start first
        return ModelRegistry(warehouse, registry_clock)

    watcher = RegistryWatcher(open_registry, model_dir(settings), poll_s=settings.infer_registry_poll_s,
                              canary_share=settings.canary_share, policy=canary_policy(settings), metrics=metrics,
                              log=log)
    state = watcher.initial_state()
    state.bounds = TimeBounds.from_settings(settings)
    state.stale_after_us = stale_after_us(settings)
    context.on_start(watcher.start)
    state.closers.append(watcher.stop)
    attach_attribution(state, context)
    return state


def attach_attribution(state: InferState, context: StageContext) -> None:
    """The SHAP worker (shap.py) on its own thread and warehouse connection; SURGE_ATTRIBUTION_INTERVAL_S=0: none."""
    settings = context.settings
    if settings.attribution_interval_s <= 0:
        return
    from prometheus_client import Counter, Summary

    from streams.infer.shap import COLUMNS, TABLE, ShapQueue, ShapWorker
    from streams.storage.warehouse import Warehouse, apply_ddl_from, open_warehouse_from

    rows_total = Counter("surge_infer_attribution_rows_total", "SHAP attribution rows stored (prediction x horizon)",
                         registry=context.registry)
    skipped_total = Counter("surge_infer_attribution_skipped_total", "Predictions left without SHAP attribution "
                            "(over the batch cap, or a model without boosters)", registry=context.registry)
    seconds = Summary("surge_infer_attribution_seconds", "Wall time of one SHAP batch", registry=context.registry)
    opened: list[Warehouse] = []

    def insert(rows: list[list[object]]) -> None:
        if not opened:
            warehouse = open_warehouse_from(settings)
            apply_ddl_from(warehouse, settings)
            opened.append(warehouse)
        opened[0].insert(TABLE, rows, list(COLUMNS))

    def observed(rows: int, skipped: int, took_s: float) -> None:
        rows_total.inc(rows)
        skipped_total.inc(skipped)
        seconds.observe(took_s)

    queue = ShapQueue()
    state.attribution = queue
    worker = ShapWorker(queue, insert, context.clock.now_us, interval_s=settings.attribution_interval_s,
                        batch_max=settings.attribution_batch_max, on_batch=observed)
    context.on_start(worker.start)

    def close() -> None:
        worker.close()
        for warehouse in opened:
            warehouse.close()

    state.closers.append(close)


def close_state(state: InferState) -> None:
    state.close()


def spec(settings: Settings) -> StageSpec[InferState]:
    return StageSpec(
        name="infer",
        input_topics=(Topic.FEATURES,),
        make_state=make_state,
        process=process,
        batch_max=settings.infer_batch_rows,
        batch_timeout_ms=settings.infer_batch_ms,
        on_close=close_state,
    )


def main() -> int:
    from streams.runtime.observability import configure_logging
    from streams.runtime.runner import StageRunner

    settings = Settings()
    configure_logging(settings, "infer")
    return StageRunner(spec(settings), settings).run()


if __name__ == "__main__":
    sys.exit(main())
