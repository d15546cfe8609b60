"""Schemathesis over the gateway's OpenAPI document: every operation, with an admin token, against a real chdb
warehouse and a real Redis holding data. No answer may be a 5xx, and every answer must match the documented
schema for its status. (``/signals/stream`` never ends by design; its SSE contract is tested in
test_gateway_api.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import redis

from schemas import SCHEMA_VERSION, common_pb2, signal_pb2
from services.gateway.app import create_app
from services.gateway.security import TokenStore
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.runtime.settings import Settings
from streams.sink import stage
from streams.sink.stage import SinkRuntime
from streams.storage.cache import open_redis
from streams.storage.warehouse import apply_ddl, open_warehouse

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev extra (pip install -e .[dev])")
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

pytestmark = pytest.mark.unit

NOW = time.time_ns() // 1000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Any, str]]:
    folder = tmp_path_factory.mktemp("fuzz") / "ch"
    wh = open_warehouse(f"chdb://{folder}", "surge")
    apply_ddl(wh, "surge")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    sink = SinkRuntime(warehouse=wh, redis=open_redis(redis_url))
    signals = [signal_pb2.Signal(
        schema_version=SCHEMA_VERSION, signal_id=f"BTCUSDT:{i}", venue=common_pb2.BINANCE_SPOT, symbol="BTCUSDT",
        decision=signal_pb2.LONG, tier=signal_pb2.TIER_A, p_up=0.8, horizon_min=5, net_utility_bps=2.0,
        regime="vol_low_depth_thick", ts=common_pb2.Timestamps(exchange_us=NOW - i, decision_us=NOW - i + 1))
        for i in range(20)]
    stage.process([InRecord(value=s, key=s.symbol) for s in signals], sink, ManualClock(NOW))
    stage.flush(sink)
    token, _ = TokenStore(client).create("fuzz", ["admin"])
    settings = Settings(clickhouse_url=f"chdb://{folder}", redis_url=redis_url, gateway_rate_per_min=1e9,
                        gateway_auth="read")
    app = create_app(settings)
    try:
        yield app, token
    finally:
        wh.close()
        client.close()


@pytest.fixture(scope="module")
def api_schema(gateway: tuple[Any, str]) -> Any:
    app, _ = gateway
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return schema.exclude(path="/signals/stream")


EXAMPLES = 12


def test_no_5xx_and_every_answer_matches_its_schema(api_schema: Any, gateway: tuple[Any, str]) -> None:
    """Each operation, EXAMPLES generated cases (hypothesis, positive and negative), driven in-process."""
    _, token = gateway
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    ran = 0
    for result in api_schema.get_all_operations():
        op = result.ok()

        @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=op.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        try:
            run()
            ran += 1
        except Exception as exc:  # collected: one report of every failing operation
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert ran >= 25


def test_schemathesis_sees_every_route(api_schema: Any) -> None:
    paths = {op.path for op in (r.ok() for r in api_schema.get_all_operations())}
    assert {"/predict", "/signals", "/signals/{signal_id}", "/export/signals", "/models/{version}/deploy",
            "/reports/calibration", "/stats/performance", "/symbols"} <= paths
