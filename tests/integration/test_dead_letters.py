"""Malformed bytes on every consumed topic go to dlq.v1; stages stay up and keep processing valid input."""

from __future__ import annotations

import time

import httpx
import pytest
from google.protobuf.json_format import ParseDict

from schemas import dlq_pb2
from services.tail import tail
from streams.runtime.topics import Topic
from tests.integration.factories import prediction
from tests.integration.stack import StackProcesses, wait_for

pytestmark = pytest.mark.integration

# What was tried: corrupt wire format, text, a valid protobuf of the wrong type/schema version, empty bytes.
GARBAGE = {
    "ticks.v1": b"\xff\xff\xff\xffnot-protobuf",
    "features.v1": b"{\"json\": \"is not protobuf\"}",
    "predictions.v1": b"\x08\x02\x12\x03abc",  # parses, but schema_version=2
    "signals.v1": b"",                             # empty value: every field default, no id
    "outcomes.v1": b"\x0a\x80",                    # truncated length-delimited field
}
CONSUMER_OF = {"ticks.v1": "features", "features.v1": "infer", "predictions.v1": "decision",
               "signals.v1": "sink", "outcomes.v1": "sink"}


def test_malformed_input_is_dead_lettered_and_stages_keep_going(infra: StackProcesses) -> None:
    for stage in ("sink", "decision", "infer", "features"):
        infra.start_stage(stage)
    for stage in ("sink", "decision", "infer", "features"):
        infra.wait_stage_ready(stage)
    infra.produce([(topic, "BTCUSDT", payload) for topic, payload in GARBAGE.items()])

    # The sink also consumes ticks, features and predictions (for the warehouse), so one bad record can be
    # dead-lettered by two stages: letters are keyed by (source topic, stage).
    letters: dict[tuple[str, str], dlq_pb2.DeadLetter] = {}

    def all_dead_lettered() -> bool:
        for rec in tail(infra.settings, Topic.DLQ, from_beginning=True, idle_timeout_s=1.0):
            assert rec.value is not None
            env = ParseDict(rec.value, dlq_pb2.DeadLetter())
            letters[(env.source_topic, env.stage)] = env
        return set(CONSUMER_OF.items()) <= set(letters)

    wait_for(all_dead_lettered, 60, "a dead letter per topic from its consumer", interval_s=1)
    for topic, payload in GARBAGE.items():
        env = letters[(topic, CONSUMER_OF[topic])]
        assert env.payload == payload, topic
        assert env.reason and env.error_type
        assert env.source_offset >= 0 and env.source_partition >= 0

    for stage in ("sink", "decision", "infer", "features"):
        assert infra.procs[stage].poll() is None, f"{stage} died"
        port = infra.settings.stage_port(stage)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

    # Later valid input on the same partition is still processed end to end.
    good = prediction(10_000, time.time_ns() // 1000, symbol="BTCUSDT")
    infra.send("predictions.v1", [good])
    wait_for(lambda: bool(infra.warehouse_rows(
        f"SELECT signal_id FROM surge.signals FINAL WHERE signal_id = '{good.prediction_id}:5'")), 60,
        "the valid prediction's signal in ClickHouse")
    # The sink also stored every dead letter with its payload, so nothing is lost.
    stored = infra.warehouse_rows("SELECT source_topic FROM surge.dead_letters FINAL")
    assert set(GARBAGE) <= {r["source_topic"] for r in stored}
    for stage in ("sink", "decision", "infer", "features"):
        infra.stop(stage)

