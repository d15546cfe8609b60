"""The runner's recovery paths: checkpoint before a failed batch, readiness that needs progress, refused outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import Producer

from schemas import dlq_pb2, prediction_pb2
from streams.runtime.clock import ManualClock
from streams.runtime.core import Emit, InRecord, Outputs, StageSpec
from streams.runtime.delivery import REFUSED_PAYLOAD_HEAD, Delivery
from streams.runtime.kafka import DeliveryTracker, produce_nowait
from streams.runtime.observability import HealthState, StageMetrics
from streams.runtime.runner import StageRunner
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

pytestmark = pytest.mark.unit


def counting_process(batch: Sequence[InRecord[Any]], state: dict[str, int], clock: Any) -> Outputs:
    """Counts records per key, like a cooldown table: a re-run of a record on changed state double-counts."""
    out = Outputs()
    for rec in batch:
        state[rec.key] = state.get(rec.key, 0) + 1
        if rec.value.prediction_id == "poison":
            raise ZeroDivisionError("boom")
        out.emits.append(Emit(Topic.SIGNALS, rec.key, rec.value, 0))
    return out


def checkpoint(state: dict[str, int]) -> Callable[[], None]:
    saved = dict(state)

    def restore() -> None:
        state.clear()
        state.update(saved)

    return restore


def records(ids: list[str]) -> list[InRecord[Any]]:
    return [InRecord(prediction_pb2.Prediction(prediction_id=i, symbol="X"), "X", "predictions.v1", 0, n)
            for n, i in enumerate(ids)]


def test_the_retry_after_a_failed_batch_starts_from_the_state_before_it() -> None:
    """Tried: a batch [a, b, poison, c] whose third record crashes the core after the first two changed state."""
    spec: StageSpec[dict[str, int]] = StageSpec("t", (Topic.PREDICTIONS,), lambda context: {}, counting_process,
                                                checkpoint=checkpoint)
    runner = StageRunner(spec, Settings(), clock=ManualClock(1))
    state = {"X": 10}
    out = runner._process_isolating_failures(records(["a", "b", "poison", "c"]), state)
    assert [e.value.prediction_id for e in out.emits] == ["a", "b", "c"]  # type: ignore[attr-defined]  # Predictions
    assert [(r.record.offset, r.reason) for r in out.rejects] == [(2, "ZeroDivisionError: boom")]
    # 10 before, +1 for each good record; neither the half-done batch nor the poison record left a trace.
    assert state == {"X": 13}


def test_without_a_checkpoint_the_half_done_batch_would_count_twice() -> None:
    """The control case: the same batch with no checkpoint shows the bug the checkpoint fixes."""
    spec: StageSpec[dict[str, int]] = StageSpec("t", (Topic.PREDICTIONS,), lambda context: {}, counting_process)
    state = {"X": 10}
    StageRunner(spec, Settings(), clock=ManualClock(1))._process_isolating_failures(
        records(["a", "b", "poison", "c"]), state)
    assert state == {"X": 10 + 3 + 4}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_readiness_needs_recent_progress() -> None:
    """Tried: a stage flagged ready whose loop stops beating (a hung core, acks that never come)."""
    clock = FakeMonotonic()
    health = HealthState(stall_after_s=30, monotonic=clock)
    health.set_ready(True, phase="consuming")
    assert health.snapshot()[1] is True
    clock.now = 29.0
    assert health.snapshot()[1] is True
    clock.now = 31.5
    live, ready, detail = health.snapshot()
    assert (live, ready, detail["stalled_s"]) == (True, False, "31.5")
    health.beat()
    assert health.snapshot()[1] is True


def test_a_hold_keeps_a_consuming_stage_not_ready_until_released() -> None:
    """Tried: the features stage assigned its partitions while its kernel still compiles (a hold)."""
    health = HealthState(stall_after_s=30, monotonic=FakeMonotonic())
    health.hold("kernel")
    health.set_ready(True, phase="consuming")
    live, ready, detail = health.snapshot()
    assert (live, ready, detail["waiting_for"]) == (True, False, "kernel")
    health.release("kernel")
    live, ready, detail = health.snapshot()
    assert (live, ready, "waiting_for" in detail) == (True, True, False)


def test_supervisor_waits_for_features_readiness_and_the_others_health() -> None:
    """Ingest must start only once features can fold ticks at once (its kernel compiled)."""
    from services.stack.supervisor import FEATURES_READY_TIMEOUT_S, plan_children
    from streams.runtime.settings import Settings

    settings = Settings(source="sim")
    children = {child.name: child for child in plan_children(settings, "sim")}
    assert children["features"].ready_timeout_s == FEATURES_READY_TIMEOUT_S
    assert children["infer"].ready_timeout_s == 30.0


def test_an_output_too_large_to_produce_is_dead_lettered_with_its_head() -> None:
    """Tried: an emit of 2 MB, over librdkafka's 1 MB message.max.bytes. The producer refuses it at once
    (no broker is needed for that), and the runner turns it into a dead letter that does fit."""
    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": 1_000_000})
    big = b"x" * 2_000_000
    refused = produce_nowait(producer, [("predictions.v1", b"X", big, None)], DeliveryTracker())
    assert [(rec[2] is big, why) for rec, why in refused] == [
        (True, "predictions.v1 record of 2000000 bytes exceeds the producer's message.max.bytes")]
    delivery = Delivery("infer", StageMetrics.create("infer"), ManualClock(7))
    topic, key, value, _ = delivery.refused_letter(refused[0][0], refused[0][1], 7)
    letter = dlq_pb2.DeadLetter.FromString(value)
    assert (topic, key, letter.error_type, len(letter.payload)) == ("dlq.v1", b"X", "output_too_large",
                                                                    REFUSED_PAYLOAD_HEAD)
    assert letter.reason.endswith(f"payload truncated to its first {REFUSED_PAYLOAD_HEAD} bytes")
    assert (letter.source_topic, letter.stage, letter.failed_us) == ("predictions.v1", "infer", 7)
