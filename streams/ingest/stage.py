"""Ingest stage runner: one of three sources -> the pure ingest core -> ticks.v1 (+ dlq.v1).

``settings.source`` picks the source: ``sim`` (the built-in simulator, paced by the clock), ``live`` (Binance
WebSocket + REST, ``streams.venues.binance.feed``), ``replay:PATH`` (recorded captures, ``replay.py``) or
``auto``: live when the venue spec's REST ping answers, else the simulator, and it says which, loudly. Every
source produces the same TickBatches from states built by ``IngestConfig``; the stage serves /metrics (with the
data-quality series of ``quality.py``), /healthz (detail: quarantined, resyncing and clock-degraded symbols,
connections) and /readyz.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import orjson
from confluent_kafka import Producer

from schemas import common_pb2
from streams.ingest import core
from streams.ingest.config import IngestConfig
from streams.ingest.core import STAGE
from streams.ingest.quality import IngestQuality, health_detail
from streams.ingest.replay import capture_files, parse_speed, run_replay
from streams.ingest.simulator import MarketSimulator
from streams.runtime import carryover
from streams.runtime.clock import Clock
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider
from streams.runtime.settings import Settings
from streams.runtime.source import SourceContext, SourceRunner, SourceSpec
from streams.runtime.topics import Topic
from streams.venues.binance.feed import run_live
from streams.venues.binance.spec import base_urls, ping_url, venue_spec

__all__ = ["STAGE", "IngestLoop", "drive", "resolve_source", "spec"]

LOOP_US = 5_000          # poll the simulator every ~5 ms: well inside the 20 ms micro-batch window
EXPORT_EVERY_US = 1_000_000
SIM_SOURCE_TOPIC = "sim"  # dead letters from the simulator have no Kafka origin
SIM_MAX_BACKLOG = 64      # unacknowledged rounds before the simulator waits for the broker
CLOSE_TIMEOUT_S = 10.0    # at stop; inside the supervisor's 15 s, so ingest reports what it could not deliver

log = logging.getLogger("surge.ingest")


def sim_prices_path(settings: Settings) -> Path:
    return settings.data_dir / "ingest" / "sim-prices.json"


def save_sim_prices(path: Path, prices: Mapping[str, float], now_us: int) -> None:
    """Write the simulator's mids for the next session (``streams.runtime.carryover``)."""
    carryover.write_atomically(path, orjson.dumps({"saved_at_us": now_us, "prices": dict(prices)}))


def load_sim_prices(path: Path, symbols: Sequence[str], now_us: int, max_age_us: int) -> dict[str, float]:
    """The mids the last clean stop saved, for the symbols still simulated, if at most ``max_age_us`` old. The
    file is used once (``carryover.take``), so a later crash-restart starts from the base prices as before; a
    file that cannot be read is reported and ignored."""
    try:
        data = carryover.take(path)
        if data is None:
            return {}
        doc = orjson.loads(data)
        saved_us = int(doc["saved_at_us"])
        prices = {str(symbol): float(price) for symbol, price in doc["prices"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignored the saved simulator prices %s: %s", path, exc)
        return {}
    stale = carryover.too_old(saved_us, now_us, max_age_us)
    if stale is not None:
        log.info("the saved simulator prices were %s: starting from the base prices", stale)
        return {}
    kept = {sym: price for sym, price in prices.items() if sym in symbols and math.isfinite(price) and price > 0}
    log.info("resumed the simulated prices of %d symbol(s) saved %.1f s ago", len(kept), (now_us - saved_us) / 1e6)
    return kept


class IngestLoop:
    """The pieces of one simulator session; ``step`` is one poll -> process -> produce -> metrics round."""

    def __init__(self, settings: Settings, clock: Clock, producer: Producer, metrics: StageMetrics,
                 quality: IngestQuality | None = None) -> None:
        self.clock = clock
        self.metrics = metrics
        self.quality = quality
        tracer = make_tracer_provider(STAGE, settings).get_tracer("surge.ingest")
        self.publisher = SourceRunner(STAGE, producer, metrics, tracer, clock, source_topic=SIM_SOURCE_TOPIC)
        starts = (load_sim_prices(sim_prices_path(settings), settings.symbol_list, clock.now_us(),
                                  round(settings.sim_resume_max_age_s * 1e6))
                  if settings.sim_resume_max_age_s > 0 else {})
        self.sim = MarketSimulator(settings.symbol_list, settings.sim_events_per_s, settings.sim_seed,
                                   start_prices=starts)
        # Batch ids restart per session; basing sequences on the session start keeps them unique across restarts.
        self.state = IngestConfig.from_settings(settings).new_state(common_pb2.SIMULATOR, sequence_base=clock.now_us())
        self.resyncs = 0

    def seed_books(self) -> None:
        """Anchor the simulator's grid and seed every book from its REST-style snapshot."""
        self.sim.advance(self.clock.now_us())
        out = core.IngestOutputs()
        for symbol, snapshot in self.sim.snapshots().items():
            out.extend(core.apply_snapshot(self.state, symbol, snapshot, self.clock))
        self.publish(out, raw_events=0)

    def step(self) -> int:
        """One round; returns the number of raw events handled."""
        now_us = self.clock.now_us()
        raw = self.sim.advance(now_us)
        started = time.perf_counter()
        out = core.process([(symbol, event, now_us) for symbol, event in raw], self.state, self.clock)
        for symbol in out.resync_requests:
            # The simulator answers a resync at once; the live source fetches the REST snapshot instead.
            self.resyncs += 1
            log.warning("resyncing %s from a fresh snapshot", symbol)
            out.extend(core.apply_snapshot(self.state, symbol, self.sim.snapshot(symbol), self.clock))
        for gap in out.trade_gaps:
            out.extend(core.apply_trade_backfill(self.state, gap.symbol, [], self.clock))  # nothing to fetch
        self.metrics.processing_seconds.labels(STAGE).observe(time.perf_counter() - started)
        if raw:
            self.metrics.events_in.labels(STAGE).inc(len(raw))
            self.metrics.batch_size.labels(STAGE).observe(len(raw))
            newest_ms = max(int(event.get("E", 0) or 0) for _, event in raw)
            if newest_ms:
                self.metrics.event_time_lag_seconds.labels(STAGE).set(max(0.0, (now_us - newest_ms * 1000) / 1e6))
        self.publish(out, raw_events=len(raw))
        return len(raw)

    def drain(self) -> None:
        """On stop: emit every pending micro-batch."""
        self.publish(core.flush(self.state, self.clock, force=True), raw_events=0)

    def publish(self, out: core.IngestOutputs, *, raw_events: int) -> None:
        self.publisher.submit(out.emits, out.rejects(), raw_events=raw_events)

    def export(self) -> dict[str, str]:
        if self.quality is not None:
            self.quality.export(self.state)
        return health_detail(self.state)


def resolve_source(settings: Settings) -> str:
    """"sim", "live" or "replay:PATH"; ``auto`` pings the venue's REST API and says loudly what it chose."""
    source = settings.source.strip()
    kind = source.lower()
    if kind in ("sim", "live"):
        return kind
    if kind.startswith("replay:"):
        path = Path(source.split(":", 1)[1]).expanduser()
        capture_files(path)  # raises FileNotFoundError with the reason
        parse_speed(settings.replay_speed)
        return f"replay:{path}"
    if kind == "auto":
        spec = venue_spec(settings.venue)
        ping = ping_url(settings)
        try:
            reachable = httpx.get(ping, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            reachable = False
        if reachable:
            log.warning("SOURCE: LIVE Binance %s public streams (%s answers)", spec.name, ping)
            return "live"
        log.warning("SOURCE: built-in market SIMULATOR (Binance %s at %s not reachable); data is NOT real",
                    spec.name, ping)
        return "sim"
    raise ValueError(f"unknown ingest source {settings.source!r}: use auto, sim, live or replay:PATH")


def check(settings: Settings) -> None:
    """Usage errors before anything connects: an unknown venue or source, a missing capture, a bad speed. ``auto``
    is resolved by ``drive`` (it pings the venue, which is not a usage question)."""
    venue_spec(settings.venue)
    if settings.source.strip().lower() != "auto":
        resolve_source(settings)


def drive(context: SourceContext) -> int:
    """Run the resolved source until the stop event (or the end of a finite source); 0 = clean."""
    settings, clock, metrics, health = context.settings, context.clock, context.metrics, context.health
    source = resolve_source(settings)
    quality = IngestQuality.create(metrics.registry)
    health.set_live(True, source=source)
    if source == "sim":
        return _run_sim(settings, clock, producer=context.producer, metrics=metrics, quality=quality, health=health,
                        stop=context.stop)
    if source == "live":
        spec = venue_spec(settings.venue)
        ws_base, _ = base_urls(settings, spec)
        return _run_live(settings, clock, publisher=context.runner(f"ws:{ws_base}"), metrics=metrics,
                         quality=quality, health=health, stop=context.stop)
    path = Path(source.split(":", 1)[1])
    publisher = context.runner(f"replay:{path}")
    code = run_replay(settings, path, publisher=publisher, metrics=metrics, quality=quality, health=health,
                      stop=context.stop, wall=clock)
    if publisher.close():  # a finite capture ends on its own and may leave a long backlog to deliver
        code = code or 1
    return code


def spec(settings: Settings) -> SourceSpec:
    """The ingest stage for ``run_source``: source-driven, so no consumer and no ``StageSpec``."""
    return SourceSpec(name=STAGE, output_topics=(Topic.TICKS, Topic.DLQ), drive=drive, check=check)


def _run_sim(settings: Settings, clock: Clock, *, producer: Producer, metrics: StageMetrics,
             quality: IngestQuality, health: HealthState, stop: threading.Event) -> int:
    loop = IngestLoop(settings, clock, producer, metrics, quality)
    code = 0
    loop.seed_books()
    health.set_live(True, **loop.export())
    health.set_ready(True, phase="producing", source="sim")
    log.info("ingest from the simulator: %s at %.0f events/s (seed %d)", ",".join(settings.symbol_list),
             settings.sim_events_per_s, settings.sim_seed)
    _loop(loop, settings, clock, stop, health)
    health.set_ready(False, phase="draining")
    log.info("stopping: publishing the pending micro-batches, %d batch(es) await acknowledgement",
             loop.publisher.backlog)
    if not loop.publisher.failed:
        loop.drain()
    if loop.publisher.close(CLOSE_TIMEOUT_S) or loop.publisher.failed:
        code = 1
    if settings.sim_resume_max_age_s > 0:
        save_sim_prices(sim_prices_path(settings), loop.sim.mid_prices(), clock.now_us())
    loop.export()
    # The exact count a soak reconciles against the warehouse (the counter is only sampled).
    accepted = sum(st.trades for st in loop.state.symbols.values())
    log.info("ingest stopped after %d resync(s): %d trades accepted%s", loop.resyncs, accepted,
             "" if code == 0 else ", output not delivered")
    return code


def _run_live(settings: Settings, clock: Clock, *, publisher: SourceRunner, metrics: StageMetrics,
              quality: IngestQuality, health: HealthState, stop: threading.Event) -> int:
    try:
        code = asyncio.run(run_live(settings, clock, stop, publisher=publisher, metrics=metrics, quality=quality,
                                    health=health))
    finally:
        health.set_ready(False, phase="draining")
        unacked = publisher.close(CLOSE_TIMEOUT_S)
    if publisher.failed or unacked:
        return 1
    log.info("live ingest stopped (%s)", "cleanly" if code == 0 else f"code {code}")
    return code


def _loop(loop: IngestLoop, settings: Settings, clock: Clock, stop: threading.Event, health: HealthState) -> None:
    started_us = clock.now_us()
    end_us = started_us + round(settings.sim_duration_s * 1e6) if settings.sim_duration_s > 0 else None
    next_us = started_us
    next_export_us = started_us + EXPORT_EVERY_US
    while not stop.is_set() and not loop.publisher.failed:
        loop.step()
        loop.publisher.wait_for_room(stop, SIM_MAX_BACKLOG)
        now_us = clock.now_us()
        if end_us is not None and now_us >= end_us:
            break
        if now_us >= next_export_us:
            next_export_us = now_us + EXPORT_EVERY_US
            health.set_live(True, **loop.export())
        # Fixed cadence; a slow round is not made up with a burst of rounds, the simulator hands over the
        # backlog in one bigger batch instead.
        next_us = max(next_us + LOOP_US, now_us)
        wait_s = (next_us - now_us) / 1e6
        if wait_s > 0:
            stop.wait(wait_s)
