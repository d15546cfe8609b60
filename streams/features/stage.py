"""The features stage: ticks.v1 -> features.v1.

``spec`` is what the runner (``surge stage features``) needs; its state factory puts the tier metrics on the
stage's own /metrics (the registry comes with the ``StageContext``):

* ``surge_features_tiers_dropped{stage}``: 1 while some symbol's medium and slow tiers are dropped under
  backpressure (decided per symbol);
* ``surge_features_symbols_tiers_dropped{stage}``: how many symbols have them dropped;
* ``surge_features_tier_drops_total{stage}``: times a symbol's tiers were dropped;
* ``surge_features_vectors_tiers_dropped_total{stage}``: vectors emitted without them;
* ``surge_features_lag_seconds{stage}``: the largest per-symbol event-time lag of the last consumed batch.

Feature health per tier (``streams.features.health``; ``tier`` is fast, medium or slow):

* ``surge_features_kernel_seconds{stage,tier}`` (summary: ``_sum``, ``_count``): kernel time per call, by the
  slowest tier the call evaluated;
* ``surge_features_tier_vectors_total{stage,tier}``, ``surge_features_tier_values_total{stage,tier}`` and
  ``surge_features_tier_nan_values_total{stage,tier}``: vectors and applicable values served per tier, and how
  many of the values were NaN;
* ``surge_features_tier_nan_ratio{stage,tier}``: the NaN share of the tier's applicable values, an EWMA over
  kernel calls (alpha 0.05);
* ``surge_features_tier_insufficient_total{stage,tier}``: vectors with an applicable NaN in the tier (the
  rate per vector is this over ``surge_features_tier_vectors_total``);
* ``surge_features_vectors_total{stage}`` and ``surge_features_window_insufficient_total{stage}``: vectors
  computed and those flagged WINDOW_INSUFFICIENT.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from streams.features import checkpoint
from streams.features import definitions as d
from streams.features.core import Backpressure, FeatureState, fold_rows, process
from streams.features.rows import Rows
from streams.runtime.clock import LiveClock
from streams.runtime.core import StageContext, StageSpec
from streams.runtime.observability import HealthState
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.runtime.validate import TimeBounds

log = logging.getLogger("surge.features")


def warm_up_kernel() -> float:
    """Compile (or load from numba's cache) the kernel before the first batch; returns the seconds it took."""
    started = time.perf_counter()
    rows = Rows(kinds=np.array([d.KIND_BATCH], np.int64), times=np.array([1], np.int64),
                aux=np.zeros((1, 2), np.int64), x=np.zeros((1, d.N_X)))
    fold_rows(d.new_kernel_state(), rows)
    return time.perf_counter() - started


KERNEL_HOLD = "kernel"  # the /readyz hold while the kernel compiles


def _warm_up_in_background(health: HealthState) -> None:
    def work() -> None:
        try:
            log.info("features %s: %d features, kernel ready in %.1fs", d.FEATURE_VERSION, d.N_FEATURES,
                     warm_up_kernel())
        finally:
            health.release(KERNEL_HOLD)

    # A cold numba cache takes 40-100 s to compile. It runs while the consumer joins its group, and /readyz says
    # 503 until it is done, so `surge run` starts ingest only then: in a soak, ticks produced during a cold compile
    # put features 95 s behind and set off a broker recycle. A batch arriving earlier waits on numba's lock.
    health.hold(KERNEL_HOLD)
    threading.Thread(target=work, name="features-kernel-warm-up", daemon=True).start()


def new_state(settings: Settings) -> FeatureState:
    return FeatureState(backpressure=Backpressure(settings.features_backpressure_lag_s,
                                                  settings.features_resume_lag_s),
                        bounds=TimeBounds.from_settings(settings),
                        stale_after_us=round(settings.stale_input_s * 1e6))


def checkpoint_path(settings: Settings) -> Path:
    return settings.data_dir / "features" / "windows.npz"


def make_state(context: StageContext) -> FeatureState:
    """The stage's state, with its tier metrics on the stage's /metrics, the kernel warming up meanwhile, and the
    windows a clean stop saved put back when fresh."""
    _warm_up_in_background(context.health)
    settings = context.settings
    state = new_state(settings)
    if settings.features_checkpoint_max_age_s > 0:
        checkpoint.load(checkpoint_path(settings), state, context.clock.now_us(),
                        round(settings.features_checkpoint_max_age_s * 1e6))
    register_metrics(context.registry, state)
    return state


def spec(settings: Settings) -> StageSpec[FeatureState]:
    """Consumer-driven stage spec. Per-symbol state is rebuilt from the stream after a crash (fine windows refill
    in 60 s, minute windows in up to an hour, flagged WINDOW_INSUFFICIENT until then); a clean stop saves it for
    the next start (``streams.features.checkpoint``)."""
    clock = LiveClock()  # the runner's clock too: a checkpoint's age is wall time between a stop and a start

    def save(state: FeatureState) -> None:
        if settings.features_checkpoint_max_age_s > 0:
            count = checkpoint.save(checkpoint_path(settings), state, clock.now_us())
            log.info("saved the windows of %d symbol(s) for the next start", count)

    return StageSpec(name="features", input_topics=(Topic.TICKS,), make_state=make_state, process=process,
                     on_close=save)


class TierMetrics(Collector):
    """Reads the backpressure counters of a FeatureState at scrape time."""

    def __init__(self, state: FeatureState, stage: str = "features") -> None:
        self.state = state
        self.stage = stage

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self.state.backpressure.stats
        dropped = GaugeMetricFamily("surge_features_tiers_dropped",
                                    "1 while some symbol's medium and slow feature tiers are dropped", labels=["stage"])
        dropped.add_metric([self.stage], 1.0 if st.dropped else 0.0)
        yield dropped
        symbols = GaugeMetricFamily("surge_features_symbols_tiers_dropped",
                                    "Symbols whose medium and slow feature tiers are dropped", labels=["stage"])
        symbols.add_metric([self.stage], float(st.symbols_dropped))
        yield symbols
        drops = CounterMetricFamily("surge_features_tier_drops", "Times the medium/slow tiers were dropped",
                                    labels=["stage"])
        drops.add_metric([self.stage], float(st.episodes))
        yield drops
        vectors = CounterMetricFamily("surge_features_vectors_tiers_dropped",
                                      "Vectors emitted without the medium/slow tiers", labels=["stage"])
        vectors.add_metric([self.stage], float(st.vectors_dropped))
        yield vectors
        lag = GaugeMetricFamily("surge_features_lag_seconds",
                                "Largest per-symbol event-time lag of the last consumed batch", labels=["stage"])
        lag.add_metric([self.stage], st.last_lag_s)
        yield lag


class HealthMetrics(Collector):
    """Reads the per-tier feature health of a FeatureState at scrape time."""

    def __init__(self, state: FeatureState, stage: str = "features") -> None:
        self.state = state
        self.stage = stage

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily]:
        h = self.state.health.snapshot()
        labels = ["stage", "tier"]
        kernel = SummaryMetricFamily("surge_features_kernel_seconds",
                                     "Feature kernel time per call, by the slowest tier the call evaluated",
                                     labels=labels)
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "vectors": CounterMetricFamily("surge_features_tier_vectors", "Vectors in which the tier was served",
                                           labels=labels),
            "values": CounterMetricFamily("surge_features_tier_values", "Applicable feature values served, per tier",
                                          labels=labels),
            "nan": CounterMetricFamily("surge_features_tier_nan_values", "Applicable feature values that were NaN",
                                       labels=labels),
            "insufficient": CounterMetricFamily("surge_features_tier_insufficient",
                                                "Vectors with an applicable NaN feature in the tier", labels=labels),
            "ratio": GaugeMetricFamily("surge_features_tier_nan_ratio",
                                       "NaN share of the tier's applicable values (EWMA over kernel calls)",
                                       labels=labels),
        }
        for k, tier in enumerate(d.TIER_NAMES):
            key = [self.stage, tier]
            kernel.add_metric(key, count_value=int(h.kernel_calls[k]), sum_value=h.kernel_seconds[k])
            families["vectors"].add_metric(key, h.tier_vectors[k])
            families["values"].add_metric(key, h.tier_values[k])
            families["nan"].add_metric(key, h.tier_nan[k])
            families["insufficient"].add_metric(key, h.tier_insufficient[k])
            families["ratio"].add_metric(key, h.tier_nan_ratio[k])
        yield kernel
        yield from families.values()
        vectors = CounterMetricFamily("surge_features_vectors", "Feature vectors computed", labels=["stage"])
        vectors.add_metric([self.stage], h.vectors)
        yield vectors
        insufficient = CounterMetricFamily("surge_features_window_insufficient",
                                           "Vectors flagged WINDOW_INSUFFICIENT", labels=["stage"])
        insufficient.add_metric([self.stage], h.vectors_insufficient)
        yield insufficient


def register_metrics(registry: CollectorRegistry, state: FeatureState) -> None:
    registry.register(TierMetrics(state))
    registry.register(HealthMetrics(state))


def main() -> int:
    from streams.runtime.observability import configure_logging
    from streams.runtime.runner import StageRunner

    settings = Settings()
    configure_logging(settings, "features")
    return StageRunner(spec(settings), settings).run()


if __name__ == "__main__":
    sys.exit(main())
