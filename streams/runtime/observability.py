"""Per-stage Prometheus metrics, /healthz + /readyz + /metrics server, tracing and logging set-up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from streams.runtime.settings import Settings

# Buckets in seconds; exchange->stage latency spans network + queueing, so they reach 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0)
PROCESSING_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


@dataclass(frozen=True)
class StageMetrics:
    """The metrics every stage exports, on its own registry (no process-global state)."""

    registry: CollectorRegistry
    events_in: Counter
    events_out: Counter
    dlq: Counter
    batch_size: Histogram
    processing_seconds: Histogram
    event_time_lag_seconds: Gauge
    e2e_latency_seconds: Histogram
    restarts: Counter
    commit_failures: Counter

    @classmethod
    def create(cls, stage: str) -> StageMetrics:
        reg = CollectorRegistry()
        labels = ["stage"]
        m = cls(
            registry=reg,
            events_in=Counter("surge_events_in", "Records consumed", labels, registry=reg),
            events_out=Counter("surge_events_out", "Records produced", [*labels, "topic"], registry=reg),
            dlq=Counter("surge_dlq", "Records sent to dlq.v1", [*labels, "error_type"], registry=reg),
            batch_size=Histogram("surge_batch_size", "Records per batch", labels, buckets=BATCH_BUCKETS,
                                 registry=reg),
            processing_seconds=Histogram("surge_processing_seconds", "Core process() time per batch", labels,
                                         buckets=PROCESSING_BUCKETS, registry=reg),
            event_time_lag_seconds=Gauge("surge_event_time_lag_seconds",
                                         "Now minus the exchange time of the newest consumed event", labels,
                                         registry=reg),
            e2e_latency_seconds=Histogram("surge_e2e_latency_seconds",
                                          "Exchange event time to output acknowledged", labels,
                                          buckets=LATENCY_BUCKETS, registry=reg),
            restarts=Counter("surge_consumer_rebalances", "Partition assignments received", labels,
                             registry=reg),
            commit_failures=Counter("surge_commit_failures", "Offset commits that failed", labels,
                                    registry=reg),
        )
        return m


class HealthState:
    """Liveness and readiness a stage reports; read by the HTTP server thread.

    Readiness also needs progress: the loop calls ``beat()`` whenever it completes a batch or an idle poll, and a
    stage that has not beaten for ``stall_after_s`` (a hung core, a wait for acks that never come) is not ready,
    whatever its flag says. A ``hold`` (e.g. a kernel still compiling) keeps it not ready until released.
    """

    def __init__(self, stall_after_s: float = 30.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._live = True
        self._detail: dict[str, str] = {}
        self._stall_after_s = stall_after_s
        self._monotonic = monotonic
        self._last_beat = monotonic()
        self._holds: set[str] = set()

    def hold(self, reason: str) -> None:
        with self._lock:
            self._holds.add(reason)

    def release(self, reason: str) -> None:
        with self._lock:
            self._holds.discard(reason)

    def beat(self) -> None:
        with self._lock:
            self._last_beat = self._monotonic()

    def set_ready(self, ready: bool, **detail: str) -> None:
        with self._lock:
            self._ready = ready
            self._detail.update(detail)

    def set_live(self, live: bool, **detail: str) -> None:
        with self._lock:
            self._live = live
            self._detail.update(detail)

    def snapshot(self) -> tuple[bool, bool, dict[str, str]]:
        with self._lock:
            detail = dict(self._detail)
            idle_s = self._monotonic() - self._last_beat
            ready = self._ready and not self._holds
            if self._holds:
                detail["waiting_for"] = ",".join(sorted(self._holds))
            if ready and idle_s > self._stall_after_s:
                ready = False
                detail["stalled_s"] = f"{idle_s:.1f}"
            return self._live, ready, detail


def serve_health(
    port: int, registry: CollectorRegistry, health: HealthState, host: str = "127.0.0.1"
) -> Callable[[], None]:
    """Serve /metrics, /healthz, /readyz on a daemon thread; returns a function that stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            live, ready, detail = health.snapshot()
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._send(200 if live else 503, _json_status(live, detail), "application/json")
            elif self.path == "/readyz":
                self._send(200 if ready else 503, _json_status(ready, detail), "application/json")
            else:
                self._send(404, b'{"error":"not found"}', "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"health-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def _json_status(ok: bool, detail: dict[str, str]) -> bytes:
    import orjson

    return orjson.dumps({"status": "ok" if ok else "unavailable", **detail})


def make_tracer_provider(service: str, settings: Settings) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"surge-{service}"}))
    if settings.otel_exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint) if settings.otel_endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC ISO-8601, ms), level, stage, logger, message, and, when known,
    symbol (``extra={"symbol": ...}`` or ``instrument``) and the current OpenTelemetry span's trace id."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self._stage = stage

    def format(self, record: logging.LogRecord) -> str:
        import datetime

        import orjson
        from opentelemetry import trace

        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, object] = {
            "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "stage": self._stage,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("symbol", "instrument", "venue"):
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = str(value)
        trace_id = record.__dict__.get("trace_id")
        if trace_id is None:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                trace_id = format(ctx.trace_id, "032x")
                line["span_id"] = format(ctx.span_id, "016x")
        if trace_id is not None:
            line["trace_id"] = str(trace_id)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(settings: Settings, name: str) -> logging.Logger:
    """Root logging for a process named ``name``: ``SURGE_LOG_FORMAT=text`` (human lines) or ``json``."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonLogFormatter(name))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    # Per-request lines from HTTP clients (registry polls, warehouse writes) would drown the stage's own log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    return logging.getLogger(f"surge.{name}")
