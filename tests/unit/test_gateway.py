"""Gateway over a real chdb-backed warehouse and a real redis-server, fed by the real sink stage code."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from schemas import SCHEMA_VERSION, common_pb2, dlq_pb2, prediction_pb2, signal_pb2
from services.gateway.app import create_app
from services.gateway.enums import Venue
from services.gateway.routers.signals import SignalOut
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.runtime.settings import Settings
from streams.sink import stage
from streams.sink.core import signal_doc
from streams.sink.stage import SinkRuntime
from streams.storage.cache import CHANNEL, LATEST_KEY, RECENT_KEY, open_redis
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse

pytestmark = pytest.mark.unit

T = 1_700_000_000_000_000
SECOND = 1_000_000


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
    stage.flush(rt)  # what the runner does at commit time


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
                                                             "redis": {"ok": True, "detail": ""}}, "symbols": []}


def test_health_503_names_the_dependency_that_is_down(env: Env, tmp_path: Path) -> None:
    no_redis = Settings(clickhouse_url=f"chdb://{env.folder}", redis_url=f"unix://{tmp_path / 'none.sock'}")
    with TestClient(create_app(no_redis)) as client:
        resp = client.get("/health")
        assert resp.status_code == 503
        body = resp.json()
        assert body["status"] == "degraded"
        assert body["dependencies"]["warehouse"] == {"ok": True, "detail": ""}
        assert body["dependencies"]["redis"] == {"ok": False, "detail": "unavailable: ConnectionError"}
        signals = client.get("/signals")
        assert signals.status_code == 503 and signals.json() == {"detail": "redis unavailable"}

    no_warehouse = Settings(clickhouse_url="surge+http://127.0.0.1:9", redis_url=env.redis_url)
    with TestClient(create_app(no_warehouse)) as client:
        resp = client.get("/health")
        assert resp.status_code == 503
        assert resp.json()["dependencies"]["warehouse"]["ok"] is False
        assert resp.json()["dependencies"]["redis"]["ok"] is True
        history = client.get("/signals/history")
        assert history.status_code == 503 and history.json() == {"detail": "warehouse unavailable"}


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
                     "/signals/stream", "/signals/{signal_id}", "/dead-letters", "/dead-letters/stats", "/symbols",
                     "/predictions", "/predictions/latest", "/predictions/{prediction_id}", "/outcomes",
                     "/stats/performance", "/predict", "/export/signals", "/models", "/models/{version}/deploy",
                     "/models/{version}/rollback", "/metrics", "/reports/backtest", "/reports/backtest/{run_id}",
                     "/reports/realtime", "/reports/regime", "/reports/window", "/reports/calibration",
                     "/reports/attribution", "/risk", "/ab-tests", "/ab-tests/{test_id}",
                     "/ab-tests/{test_id}/stop", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events",
                     "/jobs/train", "/jobs/evaluate", "/jobs/backtest"}


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
    stage.flush(rt)
    restarted = SinkRuntime(warehouse=env.warehouse, redis=redis.Redis.from_url(env.redis_url))
    stage.process([InRecord(value=letters[0], key="BTCUSDT")], restarted, ManualClock(T + 30))  # redelivery
    stage.flush(restarted)
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


# --- Hostile inputs (issue 16 item 6) and protobuf-derived enums (issue 15 item 4) ----------------------------

INT64_MAX = 2**63 - 1
JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def violations(value: Any, schema: dict[str, Any], spec: dict[str, Any], at: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema``: the JSON Schema subset FastAPI's OpenAPI uses (jsonschema is not a dep)."""
    schema = resolve(spec, schema)
    if "anyOf" in schema:
        if any(not violations(value, s, spec, at) for s in schema["anyOf"]):
            return []
        return [f"{at}: {value!r} matches no anyOf branch"]
    if "type" in schema and not JSON_TYPES[schema["type"]](value):
        return [f"{at}: {value!r} is not {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        out += [f"{at}: {k!r} missing" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                out += violations(v, props[k], spec, f"{at}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += violations(v, schema["items"], spec, f"{at}[{i}]")
    return out


def documented(spec: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    """The JSON schema the OpenAPI document gives for ``GET path`` answering ``status``."""
    response = spec["paths"][path]["get"]["responses"][str(status)]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def param_schema(spec: dict[str, Any], param: dict[str, Any]) -> dict[str, Any]:
    schema = resolve(spec, param["schema"])
    for branch in schema.get("anyOf", []):  # ``X | None``: the non-null branch
        if branch.get("type") != "null":
            return resolve(spec, branch)
    return schema


def bad_values(schema: dict[str, Any]) -> list[Any]:
    if schema.get("type") == "integer":
        values: list[Any] = ["x", "1.5", "1e3", "0x10", "１", str(2**64), str(-(2**64)), str(10**40)]
        if "minimum" in schema:
            values.append(schema["minimum"] - 1)
        if "maximum" in schema:
            values.append(schema["maximum"] + 1)
        return values
    if "enum" in schema:
        return ["BOGUS", "x" * 1000, "LONG'--", "TIER_", "_UNSPECIFIED", "\x00"]
    if schema.get("type") == "number":
        values = ["x", "1e400", "-1e400", "0x10", "１"]
        if "minimum" in schema or "exclusiveMinimum" in schema:
            values.append(schema.get("minimum", schema.get("exclusiveMinimum", 0)) - 1)
        if "maximum" in schema:
            values.append(schema["maximum"] + 1)
        return values
    if "maxLength" in schema:
        return ["x" * (schema["maxLength"] + 1)]
    return []


# Required parameters of a route, sent with every probe of its other parameters.
BASE_PARAMS: dict[str, dict[str, Any]] = {"/reports/window": {"symbol": "BTCUSDT"}}
# Streamed forever (tested on their own): left out of the generic probes.
ENDLESS = {"/signals/stream"}


def query_routes(spec: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every JSON GET route without path parameters, and its query parameters."""
    return [(path, ops["get"].get("parameters", [])) for path, ops in sorted(spec["paths"].items())
            if "get" in ops and "{" not in path and path not in ENDLESS and path != "/metrics"]


def probe(path: str, name: str, value: Any) -> dict[str, Any]:
    return {**BASE_PARAMS.get(path, {}), name: value}


def test_since_us_is_bounded_to_int64(env: Env) -> None:
    """Hostile input: since_us at 2^63-1 (accepted, and it still filters), 2^63 and 2^63+1 (silently dropped the
    filter before: ClickHouse wrapped the Int64), 2^64 and 10^30 (a 500 before), -1 and -2^63: all but the first
    must be 422s in the documented shape, on both warehouse routes."""
    write(env.sink(), SIGNALS)
    spec = env.client.get("/openapi.json").json()
    assert ids(get(env, "/signals/history")) == [5, 4, 3, 2, 1]
    assert get(env, "/signals/history", since_us=INT64_MAX) == []
    assert get(env, "/signals/history", since_us=0) != []
    assert get(env, "/signals/stats", since_us=INT64_MAX)["total"] == 0
    assert get(env, "/signals/stats", since_us=0)["total"] == 5
    for path in ("/signals/history", "/signals/stats"):
        for bad in (2**63, 2**63 + 1, 2**64, 2**64 + 1, 10**30, -1, -(2**63)):
            resp = env.client.get(path, params={"since_us": bad})
            assert resp.status_code == 422, (path, bad, resp.text)
            assert not violations(resp.json(), documented(spec, path, 422), spec)
            assert [e["loc"] for e in resp.json()["detail"]] == [["query", "since_us"]]


def test_every_integer_parameter_is_bounded_and_its_bounds_are_accepted(env: Env) -> None:
    """Hostile input: every integer query parameter of every route at its documented minimum and maximum
    (accepted) and one past each (422); no integer parameter may be left without both bounds."""
    spec = env.client.get("/openapi.json").json()
    seen = 0
    for path, params in query_routes(spec):
        for param in params:
            schema = param_schema(spec, param)
            if schema.get("type") != "integer":
                continue
            seen += 1
            assert "minimum" in schema and "maximum" in schema, (path, param["name"], schema)
            assert 0 <= schema["minimum"] <= schema["maximum"] <= INT64_MAX, (path, param["name"], schema)
            for good in (schema["minimum"], schema["maximum"]):
                resp = env.client.get(path, params=probe(path, param["name"], good))
                assert resp.status_code == 200, (path, param["name"], good, resp.text)
            for bad in (schema["minimum"] - 1, schema["maximum"] + 1):
                assert env.client.get(path, params=probe(path, param["name"], bad)).status_code == 422, (path, bad)
    assert seen >= 25  # limits, since/until, look-backs, bucket counts of every list and report route


def test_every_422_matches_the_openapi_schema(env: Env) -> None:
    """Hostile input: for every route and every query parameter, values that break its documented schema
    (non-numbers, floats, exponent and hex forms, a full-width digit, ±2^64, 10^40, one past each bound;
    enum values that are unknown, 1000 characters, SQL-ish, a bare prefix, NUL; over-long strings). Each must be a
    422 whose body validates against the OpenAPI document (detail: a list of {loc, msg, type}), naming the
    parameter; a bare-string detail, as HTTPException(422, "...") gave, would not."""
    spec = env.client.get("/openapi.json").json()
    assert violations({"detail": "tier must be A, B or NONE"}, documented(spec, "/signals", 422), spec)  # the old body
    tried = 0
    for path, params in query_routes(spec):
        for param in params:
            values = bad_values(param_schema(spec, param))
            assert values, f"{path} {param['name']}: no hostile values for {param['schema']}"
            for bad in values:
                resp = env.client.get(path, params=probe(path, param["name"], bad))
                assert resp.status_code == 422, (path, param["name"], bad, resp.text)
                body = resp.json()
                assert not violations(body, documented(spec, path, 422), spec), (path, bad, body)
                assert all(e["loc"] == ["query", param["name"]] for e in body["detail"]), body
                tried += 1
        if params:
            assert documented(spec, path, 422) == {"$ref": "#/components/schemas/HTTPValidationError"}
    assert tried > 150


def names(proto_enum: Any) -> list[str]:
    return [v.name for v in proto_enum.DESCRIPTOR.values]


def test_filters_are_enums_built_from_the_protobuf_descriptors(env: Env) -> None:
    """Hostile input: the placeholder DECISION_UNSPECIFIED, a tier that does not exist (TIER_C, C), the bare
    prefix TIER_ and padded / mixed-case spellings. The OpenAPI enums must be the .proto's names."""
    spec = env.client.get("/openapi.json").json()
    params = {p["name"]: param_schema(spec, p) for p in spec["paths"]["/signals"]["get"]["parameters"]}
    assert params["decision"]["enum"] == ["LONG", "SHORT", "WAIT"]
    assert params["decision"]["enum"] == names(signal_pb2.Decision)[1:]
    assert params["tier"]["enum"] == names(signal_pb2.Tier) == ["TIER_NONE", "TIER_A", "TIER_B"]
    assert [v.value for v in Venue] == names(common_pb2.Venue)[1:]
    signal_props = spec["components"]["schemas"]["SignalOut"]["properties"]
    assert "LONG, SHORT, WAIT" in signal_props["decision"]["description"]
    assert "BINANCE_SPOT, BINANCE_USDM, SIMULATOR" in signal_props["venue"]["description"]

    write(env.sink(), SIGNALS)
    for tier in ("TIER_B", "tier_b", "B", " b ", "Tier_B"):
        assert ids(get(env, "/signals", tier=tier)) == [5, 4, 2], tier
    assert ids(get(env, "/signals", tier="none")) == [3]
    assert ids(get(env, "/signals", decision=" Short ")) == [2]
    assert ids(get(env, "/signals", decision="", tier="  ")) == [5, 4, 3, 2, 1]  # empty: any, as before
    for bad in ({"decision": "DECISION_UNSPECIFIED"}, {"decision": "UNSPECIFIED"}, {"tier": "TIER_C"},
                {"tier": "C"}, {"tier": "TIER_"}, {"decision": "TIER_A"}, {"tier": "LONG"}):
        resp = env.client.get("/signals", params=bad)
        assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "enum", (bad, resp.text)


def test_signal_model_is_the_sink_document(env: Env) -> None:
    """Hostile input: none; the response model must not drift from the document the sink writes."""
    assert list(SignalOut.model_fields) == list(signal_doc(SIGNALS[0], T))


@dataclass
class DeadDeps:
    settings: Settings
    secrets: list[str]  # every part of the configured URLs that must not reach a client


@pytest.fixture(params=["tcp", "unix"])
def dead_deps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeadDeps]:
    """Redis and the warehouse configured but down: ports bound and never listened on (refused at once, and no
    other process can take them), a socket path that does not exist; URLs carrying credentials and paths."""
    with socket.socket() as redis_sock, socket.socket() as ch_sock:
        redis_sock.bind(("127.0.0.1", 0))
        ch_sock.bind(("127.0.0.1", 0))
        redis_port, ch_port = redis_sock.getsockname()[1], ch_sock.getsockname()[1]
        if request.param == "tcp":
            redis_url = f"redis://:hunter2-redis-pw@127.0.0.1:{redis_port}/0"
            clickhouse_url = f"http://surgeuser:hunter2-ch-pw@127.0.0.1:{ch_port}/secretdb"
            secrets = ["hunter2", "surgeuser", "secretdb", "127.0.0.1", str(redis_port), str(ch_port)]
        else:
            sock = tmp_path / "private-sockdir" / "redis.sock"
            redis_url = f"unix://{sock}"
            clickhouse_url = f"surge+http://127.0.0.1:{ch_port}/private-warehouse-path"
            secrets = [str(tmp_path), "private-sockdir", "redis.sock", "private-warehouse-path", "127.0.0.1",
                       str(ch_port)]
        secrets += [redis_url, clickhouse_url, "refused", "errno", "no such file", "http", "unix"]
        yield DeadDeps(Settings(clickhouse_url=clickhouse_url, redis_url=redis_url), secrets)


def test_503_bodies_name_the_dependency_and_leak_nothing(
    dead_deps: DeadDeps, caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile input: a gateway whose Redis and warehouse are both down, configured with URLs that hold
    passwords, user names, paths, hosts and ports. Every route (from the OpenAPI document) must answer 503 with
    a body in its documented shape that names the dependency and contains none of those strings, nor the
    exception text; the operator finds the detail in the log."""
    with TestClient(create_app(dead_deps.settings)) as client:
        spec = client.get("/openapi.json").json()
        for path, _ in query_routes(spec):
            resp = client.get(path, params=BASE_PARAMS.get(path, {}))
            assert resp.status_code == 503, (path, resp.text)
            body = resp.json()
            assert not violations(body, documented(spec, path, 503), spec), (path, body)
            for secret in dead_deps.secrets:
                assert secret.lower() not in resp.text.lower(), (path, secret, resp.text)
            if path == "/health":
                assert body == {"status": "degraded", "dependencies": {
                    "warehouse": {"ok": False, "detail": "unavailable: WarehouseUnavailable"},
                    "redis": {"ok": False, "detail": "unavailable: ConnectionError"}}, "symbols": []}
            elif path in ("/signals", "/signals/latest", "/symbols", "/predictions/latest", "/risk", "/jobs"):
                assert body == {"detail": "redis unavailable"}, path
            else:
                assert body == {"detail": "warehouse unavailable"}, path
    logged = caplog.text
    assert "redis unavailable" in logged and "warehouse unavailable" in logged
    assert any(s in logged for s in dead_deps.secrets[:3])  # the detail is kept, server side


def test_refused_commands_are_500s_without_the_error_text(env: Env) -> None:
    """Hostile input: dependencies that answer but refuse: the Redis keys hold the wrong types (WRONGTYPE) and the
    signals table is gone (UNKNOWN_TABLE). That is a 500 (retrying will not help), not a 503, and the body
    names the dependency without the server's message, the database folder or the SQL."""
    env.redis.set(RECENT_KEY, "not a list")
    env.redis.rpush(LATEST_KEY, "not a hash")
    for path in ("/signals", "/signals/latest"):
        resp = env.client.get(path)
        assert (resp.status_code, resp.json()) == (500, {"detail": "redis command failed"}), path
    env.warehouse.command("DROP TABLE surge.signals")
    for path in ("/signals/history", "/signals/stats"):
        resp = env.client.get(path)
        assert (resp.status_code, resp.json()) == (500, {"detail": "warehouse query failed"}), path
        assert str(env.folder) not in resp.text and "SELECT" not in resp.text
    assert env.client.get("/dead-letters").status_code == 200  # the other tables still answer
