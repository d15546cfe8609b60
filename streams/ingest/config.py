"""``IngestConfig``: the ingest core's settings, resolved once, and the one way an ``IngestState`` is built.

Every source (the simulator, live, replay, the features batch driver) builds its state with
``IngestConfig.from_settings(settings).new_state(venue, ...)``, so the micro-batch window, the trade backfill
timeout and the quarantine rules are the same whatever produces the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import common_pb2
from streams.ingest.core import IngestState
from streams.ingest.events import Codec
from streams.runtime.settings import Settings
from streams.venues.binance.codec import CODEC as BINANCE_CODEC


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


def codec_for(venue: common_pb2.Venue) -> Codec:
    """The codec of a venue's frames. Both Binance venues share one wire format; so does the simulator, which
    speaks Binance spot's."""
    if venue in (common_pb2.BINANCE_SPOT, common_pb2.BINANCE_USDM, common_pb2.SIMULATOR):
        return BINANCE_CODEC
    raise ValueError(f"no codec for venue {common_pb2.Venue.Name(venue)}")


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """What the ingest core takes from the settings (SURGE_MICROBATCH_MS, SURGE_TRADE_BACKFILL_TIMEOUT_S and the
    SURGE_QUARANTINE_* family), in the core's units."""

    microbatch_ms: int
    trade_backfill_timeout_us: int
    quarantine_failures: int
    quarantine_window_us: int
    quarantine_release_us: int
    quarantine_resync_interval_us: int
    book_audit_gap_ratio: float = 0.002
    stale_input_us: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        return cls(
            microbatch_ms=settings.microbatch_ms,
            trade_backfill_timeout_us=_us(settings.trade_backfill_timeout_s),
            quarantine_failures=settings.quarantine_failures,
            quarantine_window_us=_us(settings.quarantine_window_s),
            quarantine_release_us=_us(settings.quarantine_release_s),
            quarantine_resync_interval_us=_us(settings.quarantine_resync_interval_s),
            book_audit_gap_ratio=settings.book_audit_gap_ratio, stale_input_us=_us(settings.stale_input_s))

    def new_state(self, venue: common_pb2.Venue, *, futures: bool = False, sequence_base: int = 0,
                  codec: Codec | None = None, audits: bool = False) -> IngestState:
        """A fresh state for ``venue``. ``futures``: the venue's depth diffs chain by the previous final id
        (``VenueSpec.futures``); ``sequence_base`` keeps batch ids unique across sessions (a session's start time);
        ``codec``: the venue's own (``codec_for``) unless given; ``audits``: keep what book audits need and audit
        the update-id chain every minute (live, where REST snapshots can answer)."""
        return IngestState(
            venue=venue, futures=futures, sequence_base=sequence_base, codec=codec or codec_for(venue),
            microbatch_ms=self.microbatch_ms, trade_backfill_timeout_us=self.trade_backfill_timeout_us,
            quarantine_failures=self.quarantine_failures, quarantine_window_us=self.quarantine_window_us,
            quarantine_release_us=self.quarantine_release_us,
            quarantine_resync_interval_us=self.quarantine_resync_interval_us, audits=audits,
            audit_gap_ratio=self.book_audit_gap_ratio, stale_after_us=self.stale_input_us)
