"""Fault injection under load, each fault reconciled by id and recorded in bench/results/faults.json.

Faults: a 10 s Redis outage, a malformed-input flood, a slow (frozen) consumer, and kill -9 of ingest (replaying
a real capture), features, infer, decision and sink. For each: recovery time, events lost, duplicates visible in
ClickHouse after ``FINAL`` (and, for information only, duplicate rows before the ReplacingMergeTree merge or
duplicate records on the bus, which at-least-once delivery allows). The assertions are on ids and exact totals,
never on counts that depend on timing or batch boundaries; the recovery times are measured, not asserted.
``python -m tests.integration.test_faults --readme`` writes the table into the README.
"""

from __future__ import annotations

import base64
import json
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from schemas import features_pb2
from services.stack.binaries import redis_command
from streams.runtime.instrument import key_of
from streams.runtime.topics import Topic
from tests.conftest import REPO_ROOT
from tests.integration.factories import SYMBOLS, prediction
from tests.integration.factories import signal as make_signal
from tests.integration.stack import StackProcesses, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RESULTS = REPO_ROOT / "bench" / "results" / "faults.json"
README = REPO_ROOT / "README.md"


@dataclass
class FaultResult:
    fault: str
    load: str
    recovery_s: float
    recovery_means: str
    events: int
    lost: int
    duplicates_final: int
    duplicates_before_merge: int
    notes: str


def record(result: FaultResult) -> None:
    """Merge one fault's result into bench/results/faults.json (one entry per fault, newest wins)."""
    doc: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"faults": []}
    entry = asdict(result) | {"recovery_s": round(result.recovery_s, 2)}
    doc["faults"] = [f for f in doc["faults"] if f["fault"] != result.fault] + [entry]
    doc["faults"].sort(key=lambda f: f["fault"])
    doc["machine"] = "2 shared cores; embedded Tansu broker, chdb warehouse service, redis-server"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


def readme_table(doc: dict[str, Any]) -> str:
    lines = ["| fault | load | recovery s | measured as | events | lost | dup. (FINAL) | dup. before merge |",
             "|---|---|---|---|---|---|---|---|"]
    for f in doc["faults"]:
        lines.append(f"| {f['fault']} | {f['load']} | {f['recovery_s']:.1f} | {f['recovery_means']} | "
                     f"{f['events']:,} | {f['lost']} | {f['duplicates_final']} | {f['duplicates_before_merge']} |")
    return "\n".join(lines)


def update_readme() -> None:
    text = README.read_text()
    start, end = "<!-- faults:start (generated from bench/results/faults.json) -->", "<!-- faults:end -->"
    table = readme_table(json.loads(RESULTS.read_text()))
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{table}\n{end}", text,
                 flags=re.S)
    README.write_text(new)


class Load:
    """Sends ``make(i)`` records to ``topic`` in chunks from a thread until stopped; remembers what it sent."""

    def __init__(self, stack: StackProcesses, topic: str, make: Callable[[int], Any], per_s: int,
                 start: int = 0, chunk: int = 20) -> None:
        self.stack, self.topic, self.make, self.chunk = stack, topic, make, chunk
        self.interval_s = chunk / per_s
        self.next_i = start
        self.sent: list[Any] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            batch = [self.make(i) for i in range(self.next_i, self.next_i + self.chunk)]
            self.stack.send(self.topic, batch)
            self.sent.extend(batch)
            self.next_i += self.chunk
            self.stopped.wait(self.interval_s)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)


def signal_rows(stack: StackProcesses, prefix: str) -> tuple[int, int, int]:
    """(rows before merge, distinct ids, rows FINAL) of the signals whose id starts with ``prefix``."""
    row = stack.warehouse_rows(
        "SELECT count() AS n, uniqExact(signal_id) AS u, "
        f"(SELECT count() FROM surge.signals FINAL WHERE startsWith(signal_id, '{prefix}')) AS f "
        f"FROM surge.signals WHERE startsWith(signal_id, '{prefix}')")[0]
    return int(row["n"]), int(row["u"]), int(row["f"])


def stored_ids(stack: StackProcesses, prefix: str) -> set[str]:
    rows = stack.warehouse_rows(f"SELECT signal_id FROM surge.signals FINAL WHERE startsWith(signal_id, '{prefix}')")
    return {r["signal_id"] for r in rows}


def dead_letters(stack: StackProcesses, stage: str) -> int:
    rows = stack.warehouse_rows(f"SELECT count() AS n FROM surge.dead_letters FINAL WHERE stage = '{stage}'")
    return int(rows[0]["n"])


def tagged_prediction(tag: str) -> Callable[[int], Any]:
    def make(i: int) -> Any:
        p = prediction(i, time.time_ns() // 1000)
        p.prediction_id = f"{tag}:{p.prediction_id}"
        return p
    return make


def test_redis_outage_signals_keep_flowing_and_the_cache_catches_up(infra: StackProcesses) -> None:
    """Tried: redis-server stopped for 10 s while predictions arrive at 100/s through decision and sink.
    Expected: every signal reaches ClickHouse once while Redis is down (Redis is a cache, not the record), both
    processes stay up, and once Redis is back the latest-signal hash of every symbol is the newest signal in
    ClickHouse (it starts empty: the embedded redis keeps nothing on disk)."""
    decision = infra.start_stage("decision")
    sink = infra.start_stage("sink")
    infra.wait_stage_ready("decision")
    infra.wait_stage_ready("sink")
    s = infra.settings
    client = redis.Redis.from_url(s.redis_connection_url(), socket_timeout=2)
    tag = "redis"
    with Load(infra, "predictions.v1", tagged_prediction(tag), per_s=100) as load:
        time.sleep(4)
        assert infra.stop("redis") in (0, -signal.SIGTERM)
        time.sleep(10)
        infra.start("redis", redis_command(s.redis_port, infra.root / "data" / "redis"))
        restarted = time.monotonic()
        wait_for(lambda: client.ping() if _up(client) else False, 20, "redis back")

        def cache_caught_up() -> bool:
            newest = {r["symbol"]: r["newest_id"] for r in infra.warehouse_rows(
                "SELECT symbol, argMax(signal_id, exchange_us) AS newest_id FROM surge.signals FINAL "
                f"WHERE startsWith(signal_id, '{tag}:') GROUP BY symbol")}
            latest = {json.loads(v)["symbol"]: json.loads(v)["signal_id"]
                      for v in client.hgetall("surge:signals:latest").values()}
            return len(newest) == len(SYMBOLS) and all(latest.get(k) == v for k, v in newest.items())

        wait_for(cache_caught_up, 30, "the latest-signal cache to match ClickHouse", interval_s=0.25)
        recovery_s = time.monotonic() - restarted
        time.sleep(2)  # keep the load on a little after recovery
    expected = {f"{p.prediction_id}:5" for p in load.sent}
    wait_for(lambda: signal_rows(infra, f"{tag}:")[2] >= len(expected), 60, "every signal stored", interval_s=0.5)
    time.sleep(2)  # anything redelivered would land now, before the exact checks
    rows, distinct, final = signal_rows(infra, f"{tag}:")
    ids = stored_ids(infra, f"{tag}:")
    assert ids == expected and distinct == final == len(expected)
    assert decision.poll() is None and sink.poll() is None  # neither process restarted
    assert infra.procs["decision"] is decision and infra.procs["sink"] is sink
    record(FaultResult("Redis outage 10 s", "100 predictions/s, decision + sink", recovery_s,
                       "Redis back -> latest-signal cache equals ClickHouse", len(expected), len(expected - ids),
                       final - distinct, rows - distinct,
                       "signals kept reaching ClickHouse during the outage; no process restarted"))
    assert infra.stop("decision") == 0 and infra.stop("sink") == 0


def _up(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def garbage(rng: random.Random, i: int) -> bytes:
    """Undecodable or invalid bytes in four shapes: random, truncated protobuf, wrong message, empty."""
    valid = prediction(i, time.time_ns() // 1000).SerializeToString()
    shape = i % 4
    if shape == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
    if shape == 1:
        return valid[: rng.randint(1, len(valid) - 1)]
    if shape == 2:
        return make_signal(i, 0).SerializeToString()  # another topic's message
    return b""


def test_malformed_flood_is_dead_lettered_and_valid_input_flows(infra: StackProcesses) -> None:
    """Tried: 4,000 malformed records (random bytes, truncated protobuf, another topic's message, empty) mixed
    with 400 valid predictions on predictions.v1, as fast as the producer goes. Expected: exactly 400 signals,
    exactly 4,000 more dead letters from decision in ClickHouse, and the decision process never restarts."""
    decision = infra.start_stage("decision")
    infra.start_stage("sink")
    infra.wait_stage_ready("decision")
    infra.wait_stage_ready("sink")
    rng = random.Random(11)
    before = dead_letters(infra, "decision")
    tag = "flood"
    make = tagged_prediction(tag)
    valid = [make(i) for i in range(400)]
    records: list[tuple[str, str, bytes]] = []
    for i, p in enumerate(valid):
        records.append(("predictions.v1", key_of(p), p.SerializeToString()))
        records.extend(("predictions.v1", SYMBOLS[k % len(SYMBOLS)], garbage(rng, i * 10 + k)) for k in range(10))
    started = time.monotonic()
    for k in range(0, len(records), 500):
        infra.produce(records[k:k + 500])
    flood_done = time.monotonic()
    expected = {f"{p.prediction_id}:5" for p in valid}
    wait_for(lambda: signal_rows(infra, f"{tag}:")[2] >= len(expected)
             and dead_letters(infra, "decision") >= before + 4000, 60, "signals and dead letters stored",
             interval_s=0.5)
    recovery_s = time.monotonic() - flood_done
    time.sleep(2)
    rows, distinct, final = signal_rows(infra, f"{tag}:")
    assert stored_ids(infra, f"{tag}:") == expected and distinct == final == 400
    assert dead_letters(infra, "decision") == before + 4000
    assert decision.poll() is None and infra.procs["decision"] is decision
    record(FaultResult("malformed-input flood", f"4,000 bad + 400 good records in {flood_done - started:.1f} s",
                       recovery_s, "flood produced -> every signal and dead letter stored", 4400, 0,
                       final - distinct, rows - distinct,
                       "all 4,000 bad records dead-lettered with their bytes; no restart"))
    assert infra.stop("decision") == 0 and infra.stop("sink") == 0


def test_a_frozen_consumer_rejoins_and_stores_every_row_once(infra: StackProcesses) -> None:
    """Tried: the sink frozen (SIGSTOP) for 12 s, far past its session timeout, while signals arrive at 100/s;
    the group evicts it, and on SIGCONT its stale commit fails and it rejoins. Expected: every signal once after
    FINAL, the same sink process throughout."""
    sink = infra.start_stage("sink")
    infra.wait_stage_ready("sink")
    tag = "slow"

    def make(i: int) -> Any:
        s = make_signal(i, time.time_ns() // 1000)
        s.signal_id = f"{tag}:{s.signal_id}"
        return s

    with Load(infra, "signals.v1", make, per_s=100) as load:
        time.sleep(3)
        sink.send_signal(signal.SIGSTOP)
        try:
            time.sleep(12)
        finally:
            sink.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        time.sleep(3)
    expected = {s.signal_id for s in load.sent}
    wait_for(lambda: signal_rows(infra, f"{tag}:")[2] >= len(expected), 60, "every signal stored", interval_s=0.25)
    recovery_s = time.monotonic() - resumed
    time.sleep(2)
    rows, distinct, final = signal_rows(infra, f"{tag}:")
    ids = stored_ids(infra, f"{tag}:")
    assert ids == expected and distinct == final == len(expected)
    assert sink.poll() is None and infra.procs["sink"] is sink
    record(FaultResult("slow consumer (sink frozen 12 s)", "100 signals/s", recovery_s,
                       "SIGCONT -> every signal stored (load stopped 3 s after)", len(expected), len(expected - ids),
                       final - distinct, rows - distinct,
                       "evicted from its group; rejoined and re-consumed from the last commit"))
    assert infra.stop("sink") == 0


def tail_values(stack: StackProcesses, topic: Topic) -> list[dict[str, Any]]:
    from services.tail import tail

    return [r.value for r in tail(stack.settings, topic, from_beginning=True, idle_timeout_s=3.0)
            if r.value is not None]


def lag_s(stack: StackProcesses, stage: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{stack.settings.stage_port(stage)}/metrics", timeout=1).text
    except httpx.HTTPError:
        return None
    match = re.search(rf'^surge_event_time_lag_seconds\{{stage="{stage}"\}} (\S+)', text, re.M)
    return float(match.group(1)) if match else None


def kill_and_recover(stack: StackProcesses, stage: str) -> float:
    """kill -9 ``stage``, start it again; seconds until it is assigned and within 2 s of the market again."""
    killed = time.monotonic()
    stack.kill9(stage)
    stack.start_stage(stage)
    stack.wait_stage_ready(stage)
    wait_for(lambda: (lag := lag_s(stack, stage)) is not None and lag < 2.0, 45, f"{stage} caught up",
             interval_s=0.1)
    return time.monotonic() - killed


def test_kill9_features_and_infer_under_load_every_batch_is_scored(infra: StackProcesses) -> None:
    """Tried: the simulator (1,000 raw events/s, 3 symbols, 24 s then it stops) through ingest, features and
    infer; features is killed with SIGKILL at ~6 s and infer at ~14 s, each restarted at once. Reconciled by
    id from the source: every tick batch on ticks.v1 has its feature vector on features.v1 (vector_id =
    batch_id), and every vector a prediction on predictions.v1 or a dead letter from infer."""
    features = infra.start_stage("features")
    infer = infra.start_stage("infer")
    infra.wait_stage_ready("features")
    infra.wait_stage_ready("infer")
    assert features.poll() is None and infer.poll() is None
    infra.start_stage("ingest", {"SURGE_SOURCE": "sim", "SURGE_SIM_EVENTS_PER_S": "1000",
                                 "SURGE_SIM_DURATION_S": "24", "SURGE_SYMBOLS": "BTCUSDT,ETHUSDT,SOLUSDT"})
    time.sleep(6)
    features_recovery = kill_and_recover(infra, "features")
    time.sleep(max(0.0, 4 - features_recovery))
    infer_recovery = kill_and_recover(infra, "infer")
    infra.procs["ingest"].wait(60)  # the simulator stops by itself; ingest drains and exits
    batch_ids = {v["batch_id"] for v in tail_values(infra, Topic.TICKS)}
    assert len(batch_ids) > 100

    # Each read of a topic ends after 3 s without a record (Tansu's end offsets are wrong), so the last read of
    # each wait is kept for the checks instead of reading the topic once more.
    vec: list[dict[str, Any]] = []

    def every_batch_has_a_vector() -> bool:
        vec[:] = tail_values(infra, Topic.FEATURES)
        return {v["vector_id"] for v in vec} >= batch_ids

    wait_for(every_batch_has_a_vector, 60, "a vector for every batch", interval_s=1)
    vector_ids = {v["vector_id"] for v in vec}
    assert vector_ids == batch_ids
    records: list[str] = []  # the vector id of every prediction record from these vectors (the topic also holds
    rejected: set[str] = set()  # other tests'), and the vectors infer dead-lettered

    def every_vector_is_scored() -> bool:
        ids = (p.get("prediction_id", "").rsplit(":", 1)[0] for p in tail_values(infra, Topic.PREDICTIONS))
        records[:] = [i for i in ids if i in vector_ids]
        rejected.clear()
        for d in tail_values(infra, Topic.DLQ):
            if d.get("stage") == "infer" and d.get("source_topic") == "features.v1":
                rejected.add(features_pb2.FeatureVector.FromString(base64.b64decode(d["payload"])).vector_id)
        return set(records) | rejected >= vector_ids

    wait_for(every_vector_is_scored, 60, "a prediction or dead letter for every vector", interval_s=1)
    preds = set(records)
    assert preds | rejected == vector_ids and not preds & rejected
    n_pred_records = len(records)
    record(FaultResult("kill -9 features", "simulator 1,000 events/s, 3 symbols", features_recovery,
                       "kill -> restarted, assigned, event-time lag < 2 s", len(batch_ids), 0, 0,
                       len(vec) - len(vector_ids),
                       "reconciled on the bus by batch id (vectors are not stored in ClickHouse); the last column "
                       "is duplicate vectors re-produced after the kill"))
    record(FaultResult("kill -9 infer", "simulator 1,000 events/s, 3 symbols", infer_recovery,
                       "kill -> restarted, assigned, event-time lag < 2 s", len(vector_ids), 0, 0,
                       n_pred_records - len(preds),
                       f"{len(preds)} scored + {len(rejected)} dead-lettered = every vector; reconciled on the bus; "
                       "the last column is duplicate prediction records"))
    for stage in ("features", "infer"):
        assert infra.stop(stage) == 0


def test_kill9_decision_and_sink_under_load_every_signal_is_stored_once(infra: StackProcesses) -> None:
    """Tried: predictions at 100/s through decision and sink; decision is killed with SIGKILL at ~4 s and sink at
    ~10 s, each restarted at once, the load stopped at ~16 s. Reconciled by id from the source: every prediction
    sent has its signal (deterministic id) in ClickHouse exactly once under FINAL; what the killed processes had
    done but not committed is done again, and only shows as duplicate rows before the merge."""
    infra.start_stage("decision")
    infra.start_stage("sink")
    infra.wait_stage_ready("decision")
    infra.wait_stage_ready("sink")
    tag = "kill9"
    with Load(infra, "predictions.v1", tagged_prediction(tag), per_s=100) as load:
        time.sleep(4)
        decision_recovery = kill_and_recover(infra, "decision")
        time.sleep(max(0.0, 6 - decision_recovery))
        sink_killed = time.monotonic()
        infra.kill9("sink")
        infra.start_stage("sink")
        infra.wait_stage_ready("sink")
        sink_recovery = time.monotonic() - sink_killed
        time.sleep(max(0.0, 6 - sink_recovery))
    expected = {f"{p.prediction_id}:5" for p in load.sent}
    wait_for(lambda: signal_rows(infra, f"{tag}:")[2] >= len(expected), 90, "every signal stored", interval_s=0.5)
    time.sleep(2)  # anything redelivered would land now, before the exact checks
    rows, distinct, final = signal_rows(infra, f"{tag}:")
    ids = stored_ids(infra, f"{tag}:")
    assert ids == expected and distinct == final == len(expected)
    record(FaultResult("kill -9 decision", "100 predictions/s, decision + sink", decision_recovery,
                       "kill -> restarted, assigned, event-time lag < 2 s", len(expected), len(expected - ids),
                       final - distinct, rows - distinct,
                       "reconciled in ClickHouse by signal id (one per prediction sent); duplicate rows are the "
                       "uncommitted batch re-decided after each kill"))
    record(FaultResult("kill -9 sink", "100 predictions/s, decision + sink", sink_recovery,
                       "kill -> restarted and assigned", len(expected), len(expected - ids),
                       final - distinct, rows - distinct,
                       "the sink's unflushed rows are read again from its committed offsets"))
    assert infra.stop("decision") == 0 and infra.stop("sink") == 0


CAPTURE = Path("ws_messages/hftbacktest/spot/btcusdt_20240808.gz")  # 346 s recorded, 41k frames


def test_kill9_ingest_during_a_replay_every_trade_of_the_capture_is_stored_once(infra: StackProcesses,
                                                                               shared_data: Path) -> None:
    """Tried: a real spot capture replayed through ingest at 40x (about 9 s) with the sink storing it; ingest is
    killed with SIGKILL ~3 s in (after its first trades are stored) and started again, and the new process
    replays the capture from its start (a replay source can be re-read; a live exchange feed cannot, see the
    README). Reconciled by trade id against the capture read by the same ingest core in this process: every trade
    is in ClickHouse exactly once under FINAL; what the killed process had sent is sent again, and is dropped by
    the sink's recent ids or merged away by the ReplacingMergeTree."""
    capture = shared_data / CAPTURE
    from streams.features.batch import capture_batches

    batches = list(capture_batches([capture], "spot"))
    expected = {e.trade.trade_id for tb in batches for e in tb.events if e.WhichOneof("event") == "trade"}
    first_us = min(tb.ts.exchange_us for tb in batches)
    replay = {"SURGE_SOURCE": f"replay:{capture}", "SURGE_REPLAY_SPEED": "40", "SURGE_REPLAY_EXIT": "true",
              "SURGE_VENUE": "spot", "SURGE_SYMBOLS": "BTCUSDT"}
    # The capture's own time range, so the simulator's BTCUSDT trades of the other tests do not count.
    window = f"venue = 'BINANCE_SPOT' AND symbol = 'BTCUSDT' AND exchange_us >= {first_us - 60_000_000} " \
             f"AND exchange_us < {first_us + 3_600_000_000}"

    def stored() -> tuple[int, int, int]:
        row = infra.warehouse_rows(
            f"SELECT count() AS n, uniqExact(trade_id) AS u, (SELECT count() FROM surge.trades FINAL WHERE {window}) "
            f"AS f FROM surge.trades WHERE {window}")[0]
        return int(row["n"]), int(row["u"]), int(row["f"])

    infra.start_stage("sink")
    infra.wait_stage_ready("sink")
    infra.start_stage("ingest", replay)
    # Killed once its first trades are stored (so the new process certainly re-sends stored trades), ~3 s in.
    started = time.monotonic()
    wait_for(lambda: stored()[1] > 0, 60, "the first trades stored", interval_s=0.2)
    time.sleep(max(0.0, 3 - (time.monotonic() - started)))
    killed = time.monotonic()
    infra.kill9("ingest")
    ingest = infra.start_stage("ingest", replay)
    infra.wait_stage_ready("ingest")
    recovery = time.monotonic() - killed
    assert ingest.wait(120) == 0, infra.log_path("ingest").read_text()[-3000:]
    wait_for(lambda: stored()[1] >= len(expected), 90, "every trade of the capture stored", interval_s=0.5)
    time.sleep(2)  # anything still redelivered would land now, before the exact checks
    rows, distinct, final = stored()
    ids = {int(r["trade_id"]) for r in infra.warehouse_rows(f"SELECT trade_id FROM surge.trades FINAL WHERE {window}")}
    assert ids == expected and distinct == final == len(expected)
    record(FaultResult("kill -9 ingest (replay)", "a real spot capture at 40x, ingest + sink", recovery,
                       "kill -> restarted and producing", len(expected), len(expected - ids), final - distinct,
                       rows - distinct,
                       "reconciled in ClickHouse by trade id against the capture; the restarted replay re-reads it "
                       "from the start, and the sink drops what it had stored by id. A live feed cannot be re-read: "
                       "its trades during the restart (the recovery time) are not recovered"))
    assert infra.stop("sink") == 0


def test_broker_restart_keeps_every_topic_and_offset() -> None:
    """A broker restart with its data kept (Redpanda, a Kafka cluster) must lose nothing: the producers' retries
    carry them over the restart and the consumers resume from their committed offsets."""
    pytest.skip("Tansu's memory storage keeps nothing across a restart (topics, records and committed offsets are "
                "gone), so a restart can only be recycled around (services/stack/supervisor.py drains first); the "
                "frozen-broker case is test_chaos.py::test_broker_outage_is_ridden_out; this needs Redpanda")


if __name__ == "__main__":
    if "--readme" in sys.argv:
        update_readme()
    print(readme_table(json.loads(Path(RESULTS).read_text())))
