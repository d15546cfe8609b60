"""Replay source: recorded raw Binance frames -> the same ingest core and the same ticks.v1 output as live.

Accepted line formats (gzip or plain, detected by content; one frame per line):

* hftbacktest: ``<local_ts> <raw json>``, the local receive time in nanoseconds, microseconds or milliseconds
  (told apart by magnitude); the raw JSON is a combined-stream envelope or a bare REST depth snapshot
  ``{"lastUpdateId":..}``, which seeds (or re-seeds) the book of the symbol the file is about;
* cryptofeed: ``<unix seconds float>: <raw json>`` (its ``wss://... <-> ...`` header line is skipped);
* plain JSON lines: the raw frame alone, timed by its own event time ``E`` (else the previous line's time).

PATH may be a file or a directory (every capture file in it). Several files are merged by time, so a
directory holding day-after-day files of several symbols replays as one market.

Replay time drives a ``ManualClock``: micro-batching and every timestamp are by recorded time, so a replay is
deterministic (batch ids are based on the first recorded time; replaying again yields the same ids, which the
sink de-duplicates). ``speed`` paces recorded time against the wall clock (2 = twice as fast), or ``max``.
A replay cannot fetch snapshots or backfill trades: resync requests wait for the next snapshot line in the
capture, and missing trade ids are counted as lost at once.
"""

from __future__ import annotations

import gzip
import heapq
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.ingest import core
from streams.ingest.config import IngestConfig
from streams.ingest.core import STAGE, Frame, IngestOutputs
from streams.ingest.quality import IngestQuality, health_detail
from streams.runtime.clock import Clock, ManualClock
from streams.runtime.observability import HealthState, StageMetrics
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner
from streams.venues.binance.codec import CODEC, sniff_event_time_us, sniff_stream, symbol_of
from streams.venues.binance.spec import VenueSpec, venue_spec

log = logging.getLogger("surge.ingest.replay")

CAPTURE_SUFFIXES = (".gz", ".jsonl", ".json", ".txt", ".dat", ".log", ".ndjson")
CHUNK_US = 1_000                # frames within 1 ms of recorded time are processed together
PUBLISH_EVERY_US = 5_000        # paced replays publish at least this often (wall time)
PUBLISH_MAX_EMITS = 2_000       # ... and in bigger batches at max speed
MAX_BACKLOG = 64                # unacknowledged publishes before a replay waits for the broker
EXPORT_EVERY_US = 1_000_000
_SYMBOL_FILE = re.compile(r"^([A-Za-z0-9]+?)(?:[_\-.].*)?$")


@dataclass(frozen=True, slots=True)
class ReplayLine:
    local_us: int
    file_index: int     # tie-breaker, keeps each file's order
    line_no: int
    hint: str           # symbol the file is about (for bare REST snapshot lines)
    payload: bytes


def parse_speed(value: str) -> float | None:
    """"max" -> None (as fast as possible); otherwise a positive factor of recorded time."""
    if value.strip().lower() == "max":
        return None
    speed = float(value)
    if not speed > 0:
        raise ValueError(f"replay speed must be positive or 'max', not {value!r}")
    return speed


def to_micros(raw_ts: bytes) -> int:
    """A recorded timestamp (ns, µs, ms, or float seconds) in Unix microseconds, told apart by magnitude."""
    if b"." in raw_ts:
        return round(float(raw_ts) * 1e6)
    ts = int(raw_ts)
    if ts >= 10**17:
        return ts // 1000        # nanoseconds
    if ts >= 10**14:
        return ts                # microseconds
    if ts >= 10**11:
        return ts * 1000         # milliseconds
    return ts * 1_000_000        # seconds


def _stream_symbol(payload: bytes) -> str:
    stream = sniff_stream(payload)
    return symbol_of(stream) if stream else ""


def split_line(line: bytes, previous_us: int) -> tuple[int, bytes] | None:
    """(local µs, raw frame) of one capture line, or None for blank and header lines."""
    line = line.strip()
    if not line:
        return None
    if line[:1] in (b"{", b"["):
        at = sniff_event_time_us(line)
        return (at if at is not None else previous_us), line
    head, sep, rest = line.partition(b" ")
    if not sep or not head[:1].isdigit():
        return None  # e.g. cryptofeed's "wss://... <-> ts" header
    head = head.rstrip(b":")
    try:
        return to_micros(head), rest.strip()
    except ValueError:
        return None


def capture_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name.endswith(CAPTURE_SUFFIXES))
        if files:
            return files
        raise FileNotFoundError(f"no capture files ({', '.join(CAPTURE_SUFFIXES)}) in {path}")
    raise FileNotFoundError(f"replay capture {path} not found")


def _open(path: Path) -> Iterator[bytes]:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        with gzip.open(path, "rb") as fh:
            yield from fh
    else:
        with path.open("rb") as fh:
            yield from fh


def _file_symbol(path: Path) -> str:
    match = _SYMBOL_FILE.match(path.name)
    return match.group(1).upper() if match else ""


def read_capture(path: Path, file_index: int = 0) -> Iterator[ReplayLine]:
    """The lines of one capture file in order. A bare snapshot line gets the symbol of the frames around it
    (or of the file name, as in ``btcusdt_20240808.gz``)."""
    hint = _file_symbol(path)
    previous_us = 0
    for line_no, line in enumerate(_open(path)):
        parsed = split_line(line, previous_us)
        if parsed is None:
            continue
        local_us, payload = parsed
        previous_us = local_us
        seen = _stream_symbol(payload) if b'"stream"' in payload[:16] else ""
        if seen:
            hint = seen
        yield ReplayLine(local_us, file_index, line_no, hint, payload)


def read_captures(path: Path) -> Iterator[ReplayLine]:
    """Every capture under ``path``, merged by recorded time (stable within each file)."""
    iterators = [read_capture(p, i) for i, p in enumerate(capture_files(path))]
    if len(iterators) == 1:
        return iterators[0]
    return heapq.merge(*iterators, key=lambda ln: (ln.local_us, ln.file_index, ln.line_no))


@dataclass
class ReplayStats:
    frames: int = 0
    batches: int = 0
    dead_letters: int = 0
    snapshot_requests: int = 0
    unserved_resyncs: int = 0   # books still waiting for a snapshot line when the replay ended


class Replayer:
    """Feeds recorded frames through the core on a replay clock and answers what a replay can answer."""

    def __init__(self, state: core.IngestState, clock: ManualClock) -> None:
        self.state = state
        self.clock = clock
        self.stats = ReplayStats()
        self._waiting: set[str] = set()

    @classmethod
    def for_capture(cls, settings: Settings, spec: VenueSpec, start_us: int) -> Replayer:
        """A replayer of ``spec``'s captures from recorded time ``start_us``: the state ``IngestConfig`` builds from
        ``settings``, batch ids based on ``start_us`` (replaying again yields the same ids) and a replay clock."""
        state = IngestConfig.from_settings(settings).new_state(spec.venue, futures=spec.futures,
                                                               sequence_base=start_us, codec=CODEC)
        return cls(state, ManualClock(start_us))

    def feed(self, frames: list[Frame], at_us: int) -> IngestOutputs:
        """Process frames recorded from ``at_us`` on; answers trade gaps at once (nothing to backfill from)."""
        if at_us > self.clock.now_us():
            self.clock.set_us(at_us)
        out = core.process(frames, self.state, self.clock)
        self._answer(out)
        self.stats.frames += len(frames)
        return out

    def finish(self) -> IngestOutputs:
        out = core.flush(self.state, self.clock, force=True)
        self._answer(out)
        self.stats.unserved_resyncs = len(self._waiting)
        return out

    def _answer(self, out: IngestOutputs) -> None:
        for gap in out.trade_gaps:
            out.extend(core.apply_trade_backfill(self.state, gap.symbol, [], self.clock))
        out.trade_gaps = []
        for symbol in out.resync_requests:
            if symbol not in self._waiting:
                self._waiting.add(symbol)
                self.stats.snapshot_requests += 1
                log.info("%s needs a snapshot; the replay waits for the next snapshot line in the capture", symbol)
        for symbol in list(self._waiting):
            if self.state.symbols[symbol].book.synced:
                self._waiting.discard(symbol)
        self.stats.batches += len(out.emits)
        self.stats.dead_letters += len(out.dead_letters)


def run_replay(settings: Settings, path: Path, *, publisher: SourceRunner, metrics: StageMetrics,
               quality: IngestQuality, health: HealthState, stop: threading.Event, wall: Clock) -> int:
    """Replay ``path`` to the bus at ``settings.replay_speed``; 0 when done (or stopped)."""
    spec = venue_spec(settings.venue)
    speed = parse_speed(settings.replay_speed)
    lines = read_captures(path)
    first = next(lines, None)
    if first is None:
        log.error("replay capture %s holds no frame", path)
        return 2
    replayer = Replayer.for_capture(settings, spec, first.local_us)
    clock, state = replayer.clock, replayer.state
    publisher.clock = clock  # dead letters and latency metrics in recorded time
    health.set_live(True, source=f"replay:{path}", venue=spec.name, speed=settings.replay_speed)
    health.set_ready(True, phase="replaying")
    log.info("ingest from REPLAY of %s (%s, speed %s)", path, spec.name, settings.replay_speed)

    wall_start = last_publish = last_export = wall.now_us()
    pending = IngestOutputs()
    pending_raw = 0

    def publish() -> None:
        nonlocal pending, pending_raw, last_publish
        publisher.submit(pending.emits, pending.rejects(), raw_events=pending_raw)
        publisher.wait_for_room(stop, MAX_BACKLOG)
        pending, pending_raw = IngestOutputs(), 0
        last_publish = wall.now_us()

    def handle(chunk: list[Frame], chunk_us: int) -> None:
        nonlocal pending_raw, last_export
        if speed is not None:
            due_us = wall_start + round((chunk_us - first.local_us) / speed)
            wait_s = (due_us - wall.now_us()) / 1e6
            if wait_s > 0.001:
                if pending.emits or pending.dead_letters:
                    publish()  # what is due goes out before we sleep
                stop.wait(wait_s)
        started = time.perf_counter()
        pending.extend(replayer.feed(chunk, chunk_us))
        metrics.processing_seconds.labels(STAGE).observe(time.perf_counter() - started)
        metrics.events_in.labels(STAGE).inc(len(chunk))
        pending_raw += len(chunk)
        now = wall.now_us()
        if len(pending.emits) >= PUBLISH_MAX_EMITS or (speed is not None and now - last_publish >= PUBLISH_EVERY_US):
            publish()
        if now - last_export >= EXPORT_EVERY_US:
            last_export = now
            quality.export(state)
            health.set_live(True, **health_detail(state))

    chunk: list[Frame] = []
    chunk_us = first.local_us
    for line in _chain(first, lines):
        if stop.is_set() or publisher.failed:
            break
        if chunk and line.local_us - chunk_us >= CHUNK_US:
            handle(chunk, chunk_us)
            chunk = []
        if not chunk:
            chunk_us = line.local_us
        chunk.append((line.hint, line.payload, line.local_us))
    if chunk and not stop.is_set():
        handle(chunk, chunk_us)
    pending.extend(replayer.finish())
    publish()
    quality.export(state)
    if publisher.failed:
        log.error("replay of %s stopped: the bus refused its output", path)
        return 1
    stats = replayer.stats
    log.info("replay of %s %s: %d frames, %d batches, %d dead letters, %d unserved resync(s), recorded %.1fs",
             path, "stopped" if stop.is_set() else "finished", stats.frames, stats.batches, stats.dead_letters,
             stats.unserved_resyncs, (clock.now_us() - first.local_us) / 1e6)
    health.set_live(True, phase="replay finished", **health_detail(state))
    health.set_ready(False, phase="replay finished")
    if not settings.replay_exit:
        stop.wait()  # under a supervisor an exit would restart (and repeat) the replay
    return 0


def _chain(first: ReplayLine, rest: Iterator[ReplayLine]) -> Iterator[ReplayLine]:
    yield first
    yield from rest
