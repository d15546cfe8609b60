"""One definition, two drivers: a real capture through the live features stage (via the broker) and through the
batch driver gives identical vectors.

The capture (Binance USD-M BTCUSDT, 2023-04-04 23:58 -> 04-05 00:06, with markPrice@1s) is turned into TickBatches
by the ingest core exactly as the replay source does, produced to ticks.v1, consumed by a real
``python -m services.cli stage features`` process, and read back from features.v1. The same TickBatches go through
``compute_frame`` (the batch driver's path). Every value must agree within 1e-9, NaN with NaN.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer

from schemas import common_pb2, features_pb2
from streams.features import definitions as d
from streams.features.batch import capture_batches
from streams.features.core import compute_frame
from streams.features.stage import warm_up_kernel
from streams.runtime.kafka import consumer_config
from streams.runtime.topics import Topic
from tests.integration.stack import StackProcesses, start_infrastructure

pytestmark = pytest.mark.integration

CAPTURE = ("ws_messages/hftbacktest/usdm/btcusdt_20230404.dat.gz",
           "ws_messages/hftbacktest/usdm/btcusdt_20230405.dat.gz")
READ_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def parity_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcesses]:
    # Recorded event time is years behind the wall clock: backpressure would drop tiers on every batch.
    yield from start_infrastructure(tmp_path_factory.mktemp("features-parity"), SURGE_FEATURES_BACKPRESSURE_LAG_S="0")


def read_vectors(stack: StackProcesses, expected: int) -> dict[str, features_pb2.FeatureVector]:
    consumer = Consumer(consumer_config(stack.settings, f"parity-{uuid.uuid4().hex[:8]}", from_beginning=True))
    consumer.subscribe([Topic.FEATURES.value])
    out: dict[str, features_pb2.FeatureVector] = {}
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(2_000, 0.5):
                if msg.error() is None:
                    vec = features_pb2.FeatureVector.FromString(msg.value() or b"")
                    out[vec.vector_id] = vec
    finally:
        consumer.close()
    return out


def test_live_stage_and_batch_driver_give_identical_vectors(parity_infra: StackProcesses, shared_data: Path) -> None:
    started = time.monotonic()
    warm_up_kernel()  # compile once here, so the stage process loads the kernel from numba's cache
    batches = list(capture_batches([shared_data / p for p in CAPTURE], venue="usdm"))
    assert len(batches) > 10_000
    expected = compute_frame(batches)
    assert len(expected) == len(batches) and expected["vector_id"].is_unique

    parity_infra.send(Topic.TICKS.value, batches)
    parity_infra.start_stage("features")
    got = read_vectors(parity_infra, len(batches))
    print(f"\n{len(batches)} TickBatches -> {len(got)} vectors through the live stage in "
          f"{time.monotonic() - started:.1f}s")
    assert set(got) == set(expected["vector_id"]), f"{len(got)} of {len(batches)} vectors came back"

    live = np.array([list(got[vid].values) for vid in expected["vector_id"]])
    batch = expected[list(d.FEATURE_NAMES)].to_numpy()
    both_nan = np.isnan(live) & np.isnan(batch)
    diff = np.where(both_nan, 0.0, np.abs(live - batch))
    worst = np.unravel_index(int(np.argmax(np.nan_to_num(diff, nan=np.inf))), diff.shape)
    assert not np.isnan(diff).any() and float(diff.max()) <= 1e-9, (
        f"{d.FEATURE_NAMES[worst[1]]} row {worst[0]}: live {live[worst]} vs batch {batch[worst]}")
    # Every feature is exercised: each has values somewhere in this capture, except the >= 10-minute windows.
    valued = {n for j, n in enumerate(d.FEATURE_NAMES) if not np.isnan(batch[:, j]).all()}
    assert len(valued) >= 50, sorted(set(d.FEATURE_NAMES) - valued)
    for vid, regime, mid, insufficient in zip(expected["vector_id"], expected["regime"], expected["mid_price"],
                                              expected["window_insufficient"], strict=True):
        vec = got[vid]
        assert vec.feature_version == d.FEATURE_VERSION and tuple(vec.names) == d.FEATURE_NAMES
        assert vec.regime == regime
        assert vec.mid_price == mid or (math.isnan(vec.mid_price) and math.isnan(mid))
        assert (common_pb2.WINDOW_INSUFFICIENT in vec.quality_flags) == insufficient
        assert common_pb2.TIERS_DROPPED not in vec.quality_flags
