"""The features stage: ticks.v1 -> features.v1.

``spec`` is what the runner (``surge stage features``) needs; its state factory puts the tier metrics on the
stage's own /metrics (the registry comes with the ``StageContext``):

* ``surge_features_tiers_dropped{stage}``: 1 while some symbol's medium and slow tiers are dropped under
  backpressure (decided per symbol);
* ``surge_features_symbols_tiers_dropped{stage}``: how many symbols have them dropped;
* ``surge_features_tier_drops_total{stage}``: times a symbol's tiers were dropped;
* ``surge_features_vectors_tiers_dropped_total{stage}``: vectors emitted without them;
* ``surge_features_lag_seconds{stage}``: the largest per-symbol event-time lag of the last consumed batch.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.features import definitions as d
from streams.features.core import Backpressure, FeatureState, fold_rows, process
from streams.features.rows import Rows
from streams.runtime.core import StageContext, StageSpec
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


def _warm_up_in_background() -> None:
    def work() -> None:
        log.info("features %s: %d features, kernel ready in %.1fs", d.FEATURE_VERSION, d.N_FEATURES,
                 warm_up_kernel())

    # A cold numba cache takes tens of seconds to compile: do it while the consumer joins its group rather than
    # before (readiness stays prompt). A batch arriving earlier waits on numba's compiler lock, then runs.
    threading.Thread(target=work, name="features-kernel-warm-up", daemon=True).start()


def new_state(settings: Settings) -> FeatureState:
    return FeatureState(backpressure=Backpressure(settings.features_backpressure_lag_s,
                                                  settings.features_resume_lag_s),
                        bounds=TimeBounds.from_settings(settings),
                        stale_after_us=round(settings.stale_input_s * 1e6))


def make_state(context: StageContext) -> FeatureState:
    """The stage's state, with its tier metrics on the stage's /metrics and the kernel warming up meanwhile."""
    _warm_up_in_background()
    state = new_state(context.settings)
    register_metrics(context.registry, state)
    return state


def spec(settings: Settings) -> StageSpec[FeatureState]:
    """Consumer-driven stage spec; per-symbol state is rebuilt from the stream (fine windows refill in 60 s,
    minute windows in up to an hour, flagged WINDOW_INSUFFICIENT until then)."""
    return StageSpec(name="features", input_topics=(Topic.TICKS,), make_state=make_state, process=process)


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


def register_metrics(registry: CollectorRegistry, state: FeatureState) -> None:
    registry.register(TierMetrics(state))


def main() -> int:
    from streams.runtime.observability import configure_logging
    from streams.runtime.runner import StageRunner

    settings = Settings()
    configure_logging(settings, "features")
    return StageRunner(spec(settings), settings).run()


if __name__ == "__main__":
    sys.exit(main())
