"""Per-model-version Prometheus metrics of the infer stage (labels ``model_version`` and ``role``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds for one model call on a sub-batch (ONNX run + calibration + intervals); the target is 5 ms per 32.
MODEL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass(frozen=True)
class InferMetrics:
    registry: CollectorRegistry
    predictions: Counter
    invalid_outputs: Counter
    model_seconds: Histogram
    serving: Gauge
    canary_invalid_rate: Gauge
    canary_drift: Gauge
    reloads: Counter
    canary_rollbacks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> InferMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        vr = ["model_version", "role"]
        return cls(
            registry=reg,
            predictions=Counter("surge_infer_predictions", "Predictions emitted", vr, registry=reg),
            invalid_outputs=Counter("surge_infer_invalid_outputs",
                                    "Rows a model could not serve (non-finite/out-of-range output, refused vector)",
                                    vr, registry=reg),
            model_seconds=Histogram("surge_infer_model_seconds", "Model call time per sub-batch", vr,
                                    buckets=MODEL_BUCKETS, registry=reg),
            serving=Gauge("surge_infer_model_serving", "1 for each model version being served, by role",
                          [*vr, "feature_version"], registry=reg),
            canary_invalid_rate=Gauge("surge_infer_canary_invalid_rate",
                                      "Canary invalid-output rate over the guard window", ["model_version"],
                                      registry=reg),
            canary_drift=Gauge("surge_infer_canary_drift",
                               "Mean |p_canary - p_active| over the guard window", ["model_version"], registry=reg),
            reloads=Counter("surge_infer_model_reloads", "Model loads after a registry change", ["result"],
                            registry=reg),
            canary_rollbacks=Counter("surge_infer_canary_rollbacks", "Automatic canary withdrawals",
                                     ["model_version"], registry=reg),
        )
