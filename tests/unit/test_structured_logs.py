"""SURGE_LOG_FORMAT=json: one JSON object per log line with timestamp, level, stage, logger, message, symbol and the
current OpenTelemetry span's trace id."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider

from streams.runtime.observability import JsonLogFormatter, configure_logging
from streams.runtime.settings import Settings

pytestmark = pytest.mark.unit


def _record(msg: str, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("surge.test.json")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, (), None, extra=extra or None)
    return record


def test_json_line_carries_the_fields_and_the_span_trace_id() -> None:
    formatter = JsonLogFormatter("features")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("batch") as span:
        line = formatter.format(_record("gap on %s", symbol="BTCUSDT"))
        trace_id = format(span.get_span_context().trace_id, "032x")
    out = orjson.loads(line)
    assert out["level"] == "WARNING"
    assert out["stage"] == "features"
    assert out["logger"] == "surge.test.json"
    assert out["message"] == "gap on %s"
    assert out["symbol"] == "BTCUSDT"
    assert out["trace_id"] == trace_id
    assert out["timestamp"].endswith("Z") and "T" in out["timestamp"]
    assert "\n" not in line


def test_json_line_without_span_or_symbol_omits_them_and_keeps_exceptions() -> None:
    formatter = JsonLogFormatter("ingest")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    out = orjson.loads(formatter.format(record))
    assert "trace_id" not in out and "symbol" not in out
    assert "ValueError: boom" in out["exception"]


def test_configure_logging_json_writes_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        root.handlers.clear()
        log = configure_logging(Settings.with_overrides(log_format="json"), "decision")
        log.info("hello", extra={"symbol": "ETHUSDT"})
        out = orjson.loads(stream.getvalue().strip().splitlines()[-1])
        assert out["stage"] == "decision" and out["symbol"] == "ETHUSDT" and out["message"] == "hello"
        assert out["logger"] == "surge.decision"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_text_is_the_default_format() -> None:
    assert Settings.defaults().log_format == "text"
