"""The outcomes stage's state as JSON, so a restart resumes every open position where it was.

Written at every commit (in the stage's flush, before offsets are committed), so the snapshot is never older
than the committed input. Re-reading input the snapshot already holds is harmless (see ``core``), and the
outcomes resolved just before a crash, which may not have been acknowledged, are sent again on start.
"""

from __future__ import annotations

import base64
import dataclasses
from collections import OrderedDict
from itertools import islice
from typing import Any, Final

import orjson

from streams.outcomes import risk
from streams.outcomes.core import BookTop, OpenPosition, OutcomesConfig, OutcomesState
from streams.outcomes.quality import Sample

SNAPSHOT_VERSION: Final = 1
RESOLVED_IN_SNAPSHOT: Final = 20_000     # enough to recognise any signal redelivered after a restart
RECENT_IN_SNAPSHOT: Final = 500          # outcomes of the last batches, which may be unacknowledged


def dumps(state: OutcomesState) -> bytes:
    resolved = list(islice(reversed(state.resolved), RESOLVED_IN_SNAPSHOT))[::-1]  # the newest, not all
    return orjson.dumps({
        "version": SNAPSHOT_VERSION,
        "open": [dataclasses.asdict(p) for positions in state.open.values() for p in positions],
        "tops": [[venue, symbol, top.bid, top.ask] for (venue, symbol), top in state.tops.items()],
        "newest": [[venue, symbol, us] for (venue, symbol), us in state.newest_event_us.items()],
        "sequences": [[venue, symbol, seq] for (venue, symbol), seq in state.last_sequence.items()],
        "watermark_us": state.watermark_us,
        "resolved": resolved,
        "recent": [base64.b64encode(raw).decode() for raw in state.recent[-RECENT_IN_SNAPSHOT:]],
        "risk": state.risk.to_json(),
        "pnl_bps_by_symbol": state.pnl_bps_by_symbol,
        "counts": state.counts,
        "quality": {"samples": [dataclasses.astuple(q) for q in state.quality.samples],
                    "tau_offset": state.quality.tau_offset, "kappa_offset": state.quality.kappa_offset,
                    "flagged": sorted(state.quality.flagged), "since_adapt": state.quality.since_adapt},
    })


def loads(raw: bytes, config: OutcomesConfig) -> OutcomesState:
    """The state a snapshot holds; its recent outcomes are queued to be sent again with the first batch."""
    doc: dict[str, Any] = orjson.loads(raw)
    if doc.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"outcomes snapshot version {doc.get('version')!r}, this build reads {SNAPSHOT_VERSION}")
    state = OutcomesState(config=config)
    for item in doc["open"]:
        pos = OpenPosition(**item)
        state.open.setdefault((pos.venue, pos.symbol), []).append(pos)
    state.tops = {(int(v), str(s)): BookTop(float(b), float(a)) for v, s, b, a in doc["tops"]}
    state.newest_event_us = {(int(v), str(s)): int(us) for v, s, us in doc["newest"]}
    state.last_sequence = {(int(v), str(s)): int(seq) for v, s, seq in doc.get("sequences", [])}
    state.watermark_us = int(doc["watermark_us"])
    state.resolved = OrderedDict((str(i), None) for i in doc["resolved"])
    state.recent = [base64.b64decode(r) for r in doc["recent"]]
    state.replay_on_start = list(state.recent)
    state.risk = risk.RiskState.from_json(doc["risk"])
    state.pnl_bps_by_symbol = {str(k): float(v) for k, v in doc["pnl_bps_by_symbol"].items()}
    state.counts = {str(k): int(v) for k, v in doc["counts"].items()}
    quality = doc.get("quality")
    if quality is not None:
        state.quality.samples.extend(Sample(*item) for item in quality["samples"])
        state.quality.tau_offset = float(quality["tau_offset"])
        state.quality.kappa_offset = float(quality["kappa_offset"])
        state.quality.flagged = set(quality["flagged"])
        state.quality.since_adapt = int(quality["since_adapt"])
    return state
