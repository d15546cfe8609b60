"""``IngestConfig.from_settings`` is the one way an ``IngestState`` gets its settings: sim, live and replay alike."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import orjson
import pytest
from confluent_kafka import Producer

from schemas import common_pb2
from streams.ingest.config import IngestConfig, codec_for
from streams.ingest.core import IngestState
from streams.ingest.quality import IngestQuality
from streams.ingest.replay import Replayer, run_replay
from streams.ingest.stage import IngestLoop
from streams.runtime.clock import LiveClock, ManualClock
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner
from streams.venues.binance.codec import CODEC
from streams.venues.binance.feed import LiveOptions
from streams.venues.binance.spec import venue_spec
from tests.unit.test_ingest_stage import FakeProducer

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000
# Every ingest-core setting away from its default.
TUNED = Settings(microbatch_ms=15, trade_backfill_timeout_s=2.5, quarantine_failures=2, quarantine_window_s=7.0,
                 quarantine_release_s=11.0, quarantine_resync_interval_s=3.0)
EXPECTED = {"microbatch_ms": 15, "trade_backfill_timeout_us": 2_500_000, "quarantine_failures": 2,
            "quarantine_window_us": 7_000_000, "quarantine_release_us": 11_000_000,
            "quarantine_resync_interval_us": 3_000_000}


def carried(state: IngestState) -> dict[str, int]:
    return {name: getattr(state, name) for name in EXPECTED}


def test_from_settings_converts_to_the_cores_units() -> None:
    config = IngestConfig.from_settings(TUNED)
    assert {name: getattr(config, name) for name in EXPECTED} == EXPECTED
    state = config.new_state(common_pb2.BINANCE_USDM, futures=True, sequence_base=T0)
    assert carried(state) == EXPECTED
    assert (state.venue, state.futures, state.sequence_base, state.codec) == (common_pb2.BINANCE_USDM, True, T0, CODEC)
    assert codec_for(common_pb2.SIMULATOR) is CODEC  # the simulator speaks Binance spot's format
    with pytest.raises(ValueError, match="no codec"):
        codec_for(common_pb2.VENUE_UNSPECIFIED)


def test_sim_live_and_replay_states_carry_the_quarantine_and_backfill_settings() -> None:
    sim = IngestLoop(TUNED, ManualClock(T0), cast(Producer, FakeProducer()), StageMetrics.create("ingest"))
    assert carried(sim.state) == EXPECTED
    assert (sim.state.venue, sim.state.sequence_base) == (common_pb2.SIMULATOR, T0)
    replay = Replayer.for_capture(TUNED, venue_spec("usdm"), T0)
    assert carried(replay.state) == EXPECTED
    assert (replay.state.venue, replay.state.futures, replay.clock.now_us()) == (common_pb2.BINANCE_USDM, True, T0)
    assert LiveOptions.from_settings(TUNED).ingest == IngestConfig.from_settings(TUNED)  # the live feed's state


def test_a_replay_quarantines_by_the_settings(tmp_path: Path) -> None:
    """Two bad frames quarantine a symbol with SURGE_QUARANTINE_FAILURES=2 (the default needs five)."""
    trade = {"e": "trade", "E": 1700000000001, "s": "BTCUSDT", "t": 1, "p": "100.5", "q": "0.1", "T": 1700000000001,
             "m": True}
    bad = orjson.dumps({"stream": "btcusdt@trade", "data": {**trade, "p": "abc"}})
    capture = tmp_path / "btcusdt_quarantine.jsonl"
    capture.write_bytes(b"".join(
        b"%d %s\n" % (T0 + i * 1000, line) for i, line in enumerate([
            b'{"lastUpdateId":100,"bids":[["100.00","1.0"]],"asks":[["101.00","2.0"]]}',
            orjson.dumps({"stream": "btcusdt@trade", "data": trade}), bad, bad])))

    def quarantined(settings: Settings) -> str:
        metrics = StageMetrics.create("ingest")
        publisher = SourceRunner("ingest", cast(Producer, FakeProducer()), metrics,
                                 make_tracer_provider("ingest", settings).get_tracer("t"), LiveClock(),
                                 source_topic="replay")
        health = HealthState()
        assert run_replay(settings, capture, publisher=publisher, metrics=metrics,
                          quality=IngestQuality.create(metrics.registry), health=health, stop=threading.Event(),
                          wall=LiveClock()) == 0
        return health.snapshot()[2]["quarantined"]

    assert quarantined(TUNED.model_copy(update={"replay_speed": "max", "replay_exit": True})) == "BTCUSDT"
    assert quarantined(Settings(replay_speed="max", replay_exit=True)) == ""
