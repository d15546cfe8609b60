"""Ingest data-quality metrics: the core's per-symbol counters as Prometheus series, plus health detail.

The pure core keeps cumulative counters in ``SymbolState``; ``IngestQuality.export`` turns their growth into
Prometheus counter increments and sets the gauges. It is called by the stage's loop (not per event), so the
hot path never touches Prometheus.

Series (all labelled by ``symbol``, on the ingest stage's registry):

* ``surge_ingest_depth_updates_total``, ``surge_ingest_sequence_gaps_total`` and the gauge
  ``surge_ingest_sequence_gap_ratio`` (gaps per applied diff; reference target < 0.2 %);
* ``surge_ingest_trades_total``, ``surge_ingest_trades_lost_total``, ``surge_ingest_trades_backfilled_total``
  and the gauge ``surge_ingest_message_loss_ratio`` (lost trade ids / (emitted + lost); target < 1 %),
  estimated from gaps in the exchange's contiguous trade ids;
* ``surge_ingest_resyncs_total{reason}`` (a synced book lost sync: gap, crossed, reconnect, ticker_divergence,
  bad_depth, overload), ``surge_ingest_snapshots_total``, ``surge_ingest_snapshot_retries_total``;
* ``surge_ingest_book_ticker_checks_total``, ``surge_ingest_book_ticker_divergence_total``;
* ``surge_ingest_duplicates_total``, ``surge_ingest_bad_inputs_total``;
* USD-M derivatives data: ``surge_ingest_liquidations_total``, ``surge_ingest_open_interest_samples_total``;
* book audits (live): ``surge_ingest_book_audits_total``, ``surge_ingest_book_audit_mismatches_total``,
  ``surge_ingest_book_audits_inconclusive_total``, ``surge_ingest_book_rebuilds_total`` and the gauge
  ``surge_ingest_update_id_gap_ratio`` (breaks of the diffs' update-id chain per diff, last minute);
* gauges ``surge_ingest_clock_drift_seconds`` (EWMA of exchange minus local time),
  ``surge_ingest_degraded_time_sync`` (1 beyond 100 ms), ``surge_ingest_book_synced``,
  ``surge_ingest_quarantined`` and the unlabelled ``surge_ingest_quarantined_symbols``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.ingest.core import IngestState, SymbolState

# (counter name, help, SymbolState attribute)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("surge_ingest_depth_updates", "Depth diffs applied to a synced book", "depth_updates"),
    ("surge_ingest_sequence_gaps", "Depth update-id gaps on the stream", "gaps"),
    ("surge_ingest_trades", "Trades passed on to ticks.v1", "trades"),
    ("surge_ingest_trades_lost", "Trade ids never received nor backfilled", "trades_lost"),
    ("surge_ingest_trades_backfilled", "Missing trades recovered from REST", "trades_backfilled"),
    ("surge_ingest_snapshots", "REST depth snapshots applied", "snapshots"),
    ("surge_ingest_snapshot_retries", "Snapshots older than the buffered stream (fetched again)",
     "snapshot_retries"),
    ("surge_ingest_book_ticker_checks", "bookTickers compared with the book at the same update id",
     "ticker_checks"),
    ("surge_ingest_book_ticker_divergence", "bookTickers that disagreed with the book", "divergences"),
    ("surge_ingest_duplicates", "Duplicate events dropped", "duplicates"),
    ("surge_ingest_bad_inputs", "Frames dead-lettered", "bad_inputs"),
    ("surge_ingest_book_audits", "Books compared with a REST snapshot at the same update id", "audits"),
    ("surge_ingest_book_audit_mismatches", "Audits that found the local book wrong (then resynced)",
     "audit_mismatches"),
    ("surge_ingest_book_audits_inconclusive", "Audits with no exact comparison (book resynced, diffs out of reach)",
     "audits_inconclusive"),
    ("surge_ingest_book_rebuilds", "Books rebuilt because the minute's update-id gap ratio was too high",
     "rebuilds"),
    ("surge_ingest_liquidations", "USD-M forced liquidations (forceOrder) passed on to ticks.v1", "liquidations"),
    ("surge_ingest_open_interest_samples", "USD-M open-interest samples (REST openInterest) passed on to ticks.v1",
     "open_interest_samples"),
)


@dataclass
class IngestQuality:
    """Prometheus view of the core's quality counters; one per ingest session."""

    counters: dict[str, Counter]
    resyncs: Counter
    gap_ratio: Gauge
    loss_ratio: Gauge
    drift: Gauge
    degraded: Gauge
    synced: Gauge
    quarantined: Gauge
    quarantined_symbols: Gauge
    chain_gap_ratio: Gauge
    _exported: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestQuality:
        sym = ["symbol"]
        return cls(
            counters={attr: Counter(name, doc, sym, registry=registry) for name, doc, attr in _COUNTERS},
            resyncs=Counter("surge_ingest_resyncs", "Synced books that lost sync, by reason", [*sym, "reason"],
                            registry=registry),
            gap_ratio=Gauge("surge_ingest_sequence_gap_ratio", "Sequence gaps per applied depth diff", sym,
                            registry=registry),
            loss_ratio=Gauge("surge_ingest_message_loss_ratio", "Lost trade ids / (trades + lost)", sym,
                             registry=registry),
            drift=Gauge("surge_ingest_clock_drift_seconds", "EWMA of exchange minus local receive time", sym,
                        registry=registry),
            degraded=Gauge("surge_ingest_degraded_time_sync", "1 while |clock drift| exceeds 100 ms", sym,
                           registry=registry),
            synced=Gauge("surge_ingest_book_synced", "1 while the local book is in sync", sym, registry=registry),
            quarantined=Gauge("surge_ingest_quarantined", "1 while the symbol is quarantined", sym,
                              registry=registry),
            quarantined_symbols=Gauge("surge_ingest_quarantined_symbols", "Symbols in quarantine",
                                      registry=registry),
            chain_gap_ratio=Gauge("surge_ingest_update_id_gap_ratio",
                                  "Breaks of the depth diffs' update-id chain per diff over the last minute", sym,
                                  registry=registry),
        )

    def export(self, state: IngestState) -> None:
        n_quarantined = 0
        for symbol, st in state.symbols.items():
            for attr, counter in self.counters.items():
                self._advance(counter, symbol, attr, getattr(st, attr), (symbol,))
            for reason, count in st.resyncs.items():
                self._advance(self.resyncs, symbol, "resync:" + reason, count, (symbol, reason))
            applied = st.depth_updates + st.gaps
            self.gap_ratio.labels(symbol).set(st.gaps / applied if applied else 0.0)
            seen = st.trades + st.trades_lost
            self.loss_ratio.labels(symbol).set(st.trades_lost / seen if seen else 0.0)
            if st.drift_ewma_us is not None:
                self.drift.labels(symbol).set(st.drift_ewma_us / 1e6)
            self.degraded.labels(symbol).set(1.0 if st.time_sync_degraded else 0.0)
            self.synced.labels(symbol).set(1.0 if st.book.synced else 0.0)
            self.quarantined.labels(symbol).set(1.0 if st.quarantined else 0.0)
            if st.recent_diffs is not None:
                self.chain_gap_ratio.labels(symbol).set(st.chain_gap_ratio)
            n_quarantined += st.quarantined
        self.quarantined_symbols.set(n_quarantined)

    def forget(self, symbols: Sequence[str]) -> None:
        """Drop the gauges of symbols no longer followed (a live universe change); counters stay as they were."""
        gauges = (self.gap_ratio, self.loss_ratio, self.drift, self.degraded, self.synced, self.quarantined,
                  self.chain_gap_ratio)
        for symbol in symbols:
            for gauge in gauges:
                with contextlib.suppress(KeyError):
                    gauge.remove(symbol)

    def _advance(self, counter: Counter, symbol: str, attr: str, value: int, labels: tuple[str, ...]) -> None:
        key = (symbol, attr)
        delta = value - self._exported.get(key, 0)
        if delta > 0:
            counter.labels(*labels).inc(delta)
            self._exported[key] = value


def health_detail(state: IngestState) -> dict[str, str]:
    """What /healthz shows about the books: quarantined, unsynced and clock-degraded symbols."""
    symbols = state.symbols.values()

    def names(pick: list[SymbolState]) -> str:
        return ",".join(sorted(st.symbol for st in pick))

    return {
        "symbols": str(len(state.symbols)),
        "books_synced": str(sum(st.book.synced for st in symbols)),
        "quarantined": names([st for st in symbols if st.quarantined]),
        "resyncing": names([st for st in symbols if not st.book.synced]),
        "degraded_time_sync": names([st for st in symbols if st.time_sync_degraded]),
    }
