"""``GET /metrics``: the gateway's Prometheus metrics (requests, caches, /predict batching, 429s)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

router = APIRouter(tags=["metrics"])


class GatewayCollector(Collector):
    """Reads the app's counters at scrape time (nothing on the request path but plain integer increments)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Any:
        s = self.state
        limited = CounterMetricFamily("surge_gateway_rate_limited", "Requests answered 429")
        limited.add_metric([], s.limiter.limited)
        yield limited
        cache = CounterMetricFamily("surge_gateway_cache_lookups", "Cache lookups", labels=["cache", "result"])
        cache.add_metric(["response", "hit"], s.response_cache.hits)
        cache.add_metric(["response", "miss"], s.response_cache.misses)
        cache.add_metric(["l1", "hit"], s.resources.l1.hits)
        cache.add_metric(["l1", "miss"], s.resources.l1.misses)
        yield cache
        rate = GaugeMetricFamily("surge_gateway_cache_hit_rate", "Hit rate since start", labels=["cache"])
        total = s.response_cache.hits + s.response_cache.misses
        rate.add_metric(["response"], s.response_cache.hits / total if total else 0.0)
        rate.add_metric(["l1"], s.resources.l1.hit_rate())
        yield rate
        batches = CounterMetricFamily("surge_gateway_predict_batches", "ONNX calls made by POST /predict")
        batches.add_metric([], s.predictor.batches)
        yield batches
        rows = CounterMetricFamily("surge_gateway_predict_rows", "Feature vectors scored by POST /predict")
        rows.add_metric([], s.predictor.rows)
        yield rows


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    state = request.app.state
    registry: CollectorRegistry | None = getattr(state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(GatewayCollector(state))
        state.metrics_registry = registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
