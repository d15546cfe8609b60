"""Transaction-cost model (cost-v3, fitted on real Binance captures) and the expected-move table of the decision stage.

Cost of a round trip (enter and leave a position with taker orders), ``CostModel.estimate`` -> ``CostEstimate``:

    total = fee_bps          2 x the venue's taker (or maker) fee per side, from settings
          + spread_bps       one full spread: half crossed on entry, half on exit (the prediction's spread)
          + slippage_bps     walking the book beyond the touch, both sides, at the table's reference notional N0
          + impact_bps       the size term: lam x [(V / ADV)^psi - (N0 / ADV)^psi], the extra (or saved) walk
                             cost of an order of V instead of N0; 0 at V = N0
          + funding_bps      USD-M only: funding rate x horizon / funding interval (8 h), signed by side
          + opportunity_bps  capital tied up for the horizon at an annual rate (settings)

* **Slippage** comes from ``CostTables``, a versioned artifact fitted by ``surge cost fit`` from the depth
  captures in ``../shared/data/binance`` (book rebuilt by the ingest core, walked every 250 ms, labelled with
  the regime the features stage assigns): per venue and regime the quantiles p25/p50/p75/p95/p97.5/p99 of the
  round-trip beyond-the-touch walk cost at N0. ``quantile`` picks one (default p50; ``stressed=True``, for a
  volatility or liquidation burst, picks the stressed quantile p97.5). When the caller has the live book
  (``book=(bids, asks)``, best first), the walk of that book at V replaces the table for p50 and below, and is
  floored by the table above the median.
* **Impact** is the power law ``lam (V/ADV)^psi`` fitted per venue and regime by least squares in log space
  on the mean walk cost at the notional grid (1k to 1M USDT), with ADV per symbol from klines quote volume
  when they cover the capture, else from the capture's own trade tape. ``slippage + impact`` is the walk cost
  of V, so nothing is counted twice; slippage + impact is never below 0.
* **Funding** (``funding_rate`` is the live ``markPrice`` rate, a fraction per interval): a LONG pays a
  positive rate, a SHORT receives it (negative cost). Pro-rating by horizon is the expectation for an entry at
  a random time: the payment itself happens only at the 8-hourly settlements.
* **Unknown regime** ("" during the features warm-up, or any label the tables do not know) is charged the
  venue's worst entry (element-wise maximum of the regimes' quantiles): when we do not know the market, assume
  it is bad. Regimes with too few samples use the venue's pooled entry (``fallback="venue"``).
* **Confidence** in [0, 1]: n / (n + 100) for the n samples behind the entry; halved for a pooled or
  unknown-regime entry; (1 + c) / 2 when the live book was walked.

Tables are read through ``CostTableCache``: Redis (``COST_ACTIVE_KEY`` names the active version, one hash
``COST_TABLES_PREFIX + version`` with a field per ``venue:regime``) behind an in-process L1 cache with a TTL
(default 200 ms) on the injected clock. Without Redis, or while it is down, the artifact shipped as package
data (``streams/decision/artifacts/cost_tables.json``) is used. A lookup is a dict hit.

Expected move: the model gives ``p``, the probability that the upper barrier (+U bps) is hit before the lower
one (-D bps) within the horizon. U and D come with the prediction when the model states its labels; otherwise
both are the table value B(horizon) (``HORIZON_MOVE_BPS``; other horizons scale the 5-minute B by sqrt(h / 5),
as a random walk's typical move does).

* LONG:  ``p x U - (1 - p) x D``. When the model counts timeouts as "not up", a timeout is charged as a full
  loss of D: conservative, since a timed-out position usually closes nearer its entry.
* SHORT: ``(1 - p) x D - p x U``, only when ``1 - p`` is the probability of the lower barrier first. A model
  whose "not up" includes timeouts says nothing about how often the lower barrier comes first, so it prices
  no SHORT at all (reading its small p_up as a confident SHORT is exactly the error to avoid).
* Break-even ``p* = D / (U + D)``: the p at which the LONG's expectation is zero (0.5 for symmetric barriers).

With symmetric barriers both reduce to ``|2p - 1| x B`` for the favoured side (cost-v1's formula).

The decision stage prices with ``estimate`` and stamps ``CostEstimate.version`` on its signals. Legacy (cost-v2,
no longer on the decision path): ``round_trip_cost_bps(regime, spread_bps)`` = 2 x ``fee_bps`` + spread +
``SLIPPAGE_BPS[regime]`` (a hand-set table, worst entry for unknown regimes), stamped ``COST_MODEL_VERSION``;
``CostTables.fixed(SLIPPAGE_BPS)`` prices the same numbers through ``estimate``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol, TypeVar

import orjson
import redis

from schemas import common_pb2, signal_pb2
from streams.runtime.clock import Clock
from streams.runtime.regimes import REGIME_LABELS, UNKNOWN_REGIME
from streams.storage.cache import COST_ACTIVE_KEY, COST_TABLES_PREFIX

log = logging.getLogger("surge.decision.cost")

COST_MODEL_VERSION: Final = "cost-v2"   # the legacy round_trip_cost_bps; signals priced by estimate() carry
COST_V3: Final = "cost-v3"              # CostEstimate.version = "cost-v3/<tables version>"
TABLES_FORMAT: Final = 1

REGIMES: Final = REGIME_LABELS
VENUES: Final = ("spot", "usdm")
QUANTILES: Final = ("p25", "p50", "p75", "p95", "p97.5", "p99")
QUANTILE_LEVELS: Final[Mapping[str, float]] = MappingProxyType(
    {"p25": 0.25, "p50": 0.50, "p75": 0.75, "p95": 0.95, "p97.5": 0.975, "p99": 0.99})
POOLED: Final = "*"                       # the venue's entry over every sample (all regimes and the warm-up)
CONFIDENCE_N0: Final = 100.0              # n / (n + N0)
PACKAGED_TABLES: Final = "cost_tables.json"
BPS: Final = 1e4
MINUTES_PER_YEAR: Final = 365.0 * 24.0 * 60.0

# Prediction.venue -> table venue. The simulator and an unset venue are priced as spot (the dearer fees).
# Plain dicts (private, never mutated): a mappingproxy lookup costs more on the hot path.
_VENUE_NAMES: Final[dict[int | str, str]] = {
    common_pb2.VENUE_UNSPECIFIED: "spot", common_pb2.BINANCE_SPOT: "spot", common_pb2.BINANCE_USDM: "usdm",
    common_pb2.SIMULATOR: "spot", "spot": "spot", "usdm": "usdm",
}
_LONG: Final = signal_pb2.LONG
_SHORT: Final = signal_pb2.SHORT
_ABOVE_MEDIAN: Final = frozenset(q for q, level in QUANTILE_LEVELS.items() if level > 0.5)

Level = tuple[float, float]  # (price, qty)
Book = tuple[Sequence[Level], Sequence[Level]]  # (bids best first, asks best first)


# --- legacy cost-v2 table (round_trip_cost_bps) ---------------------------------------------------------------

SLIPPAGE_BPS: Final[Mapping[str, float]] = MappingProxyType({
    "vol_low_depth_thick": 0.5,
    "vol_low_depth_medium": 1.0,
    "vol_low_depth_thin": 2.0,
    "vol_medium_depth_thick": 1.0,
    "vol_medium_depth_medium": 1.5,
    "vol_medium_depth_thin": 3.0,
    "vol_high_depth_thick": 2.0,
    "vol_high_depth_medium": 3.0,
    "vol_high_depth_thin": 5.0,
})

# Triple-barrier half-width B (bps) per horizon in minutes.
HORIZON_MOVE_BPS: Final[Mapping[int, float]] = MappingProxyType({
    1: 10.0,
    3: 15.0,
    5: 20.0,
    10: 28.0,
    15: 35.0,
    30: 50.0,
    60: 70.0,
})
_REFERENCE_HORIZON_MIN: Final = 5


# --- book walk --------------------------------------------------------------------------------------------------


def walk_vwap(levels: Sequence[Level], notional: float) -> tuple[float, float]:
    """(VWAP, filled notional) of taking ``notional`` (quote currency) from ``levels``, best first.

    When the levels hold less than ``notional`` the VWAP is of what they hold (NaN for no level)."""
    left = notional
    qty = 0.0
    for price, size in levels:
        value = price * size
        if value >= left:
            qty += left / price
            return notional / qty, notional
        qty += size
        left -= value
    filled = notional - left
    return (filled / qty if qty > 0.0 else math.nan), filled


def round_trip_walk_bps(bids: Sequence[Level], asks: Sequence[Level], notional: float) -> float | None:
    """Beyond-the-touch cost (bps of mid) of buying and of selling ``notional`` on this book, summed: the book's
    round-trip walk minus its spread. None when either side holds less than ``notional`` (or is empty)."""
    if not bids or not asks:
        return None
    vwap_buy, filled_buy = walk_vwap(asks, notional)
    vwap_sell, filled_sell = walk_vwap(bids, notional)
    if filled_buy < notional * (1.0 - 1e-9) or filled_sell < notional * (1.0 - 1e-9):
        return None
    best_bid, best_ask = bids[0][0], asks[0][0]
    return max(0.0, ((vwap_buy - best_ask) + (best_bid - vwap_sell)) / ((best_bid + best_ask) / 2.0) * BPS)


def levels_of(levels: Sequence[Any]) -> list[Level]:
    """``PriceLevel`` protobufs (``.price``, ``.qty``) -> (price, qty) tuples for ``book=``."""
    return [(lv.price, lv.qty) for lv in levels]


# --- the fitted tables ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostEntry:
    """The fitted cost of one venue and regime, self-contained (a Redis field holds exactly one)."""

    quantiles: Mapping[str, float]   # round-trip beyond-touch slippage (bps) at notional_usd, per QUANTILES
    impact_lambda: float             # lam of lam (V / ADV)^psi, bps
    impact_psi: float
    n: int                           # samples behind the entry
    confidence: float
    fallback: str                    # "": own fit; "venue": the venue's pooled entry; "worst": unknown regime
    notional_usd: float              # N0
    version: str                     # "cost-v3/<tables version>", stamped on every estimate

    def size_bps(self, notional_usd: float, adv_usd: float) -> float:
        """The impact term: lam x [(V / ADV)^psi - (N0 / ADV)^psi] (0 when V = N0)."""
        if notional_usd == self.notional_usd or self.impact_lambda == 0.0 or adv_usd <= 0.0:
            return 0.0
        return self.impact_lambda * (float((notional_usd / adv_usd) ** self.impact_psi)
                                     - float((self.notional_usd / adv_usd) ** self.impact_psi))

    def to_json(self) -> dict[str, Any]:
        return {"quantiles": dict(self.quantiles), "impact": {"lambda": self.impact_lambda, "psi": self.impact_psi},
                "n": self.n, "confidence": self.confidence, "fallback": self.fallback,
                "notional_usd": self.notional_usd, "version": self.version}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, notional_usd: float | None = None,
                  version: str | None = None) -> CostEntry:
        quantiles = {q: float(doc["quantiles"][q]) for q in QUANTILES}
        values = list(quantiles.values())
        if any(not math.isfinite(v) or v < 0.0 for v in values) or values != sorted(values):
            raise ValueError(f"cost entry quantiles must be finite, >= 0 and non-decreasing: {quantiles}")
        impact = doc.get("impact") or {}
        lam, psi = float(impact.get("lambda", 0.0)), float(impact.get("psi", 1.0))
        if not (math.isfinite(lam) and lam >= 0.0 and math.isfinite(psi) and psi > 0.0):
            raise ValueError(f"cost entry impact must have lambda >= 0 and psi > 0: {impact}")
        confidence = float(doc["confidence"])
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"cost entry confidence {confidence} outside [0, 1]")
        return cls(MappingProxyType(quantiles), lam, psi, int(doc["n"]), confidence, str(doc.get("fallback") or ""),
                   float(notional_usd if notional_usd is not None else doc["notional_usd"]),
                   str(version if version is not None else doc["version"]))


@dataclass(frozen=True, slots=True)
class CostTables:
    """A versioned table artifact: an entry for every venue x (REGIMES + unknown), ADV per venue and symbol."""

    version: str                      # "ct-<sha256 prefix of the fitted content>"
    notional_usd: float
    fitted_at: str
    entries: Mapping[tuple[str, str], CostEntry]
    adv_usd: Mapping[tuple[str, str], float]   # (venue, symbol); (venue, "") = the venue's smallest ADV
    doc: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def model_version(self) -> str:
        return f"{COST_V3}/{self.version}"

    def entry(self, venue: str, regime: str) -> CostEntry:
        hit = self.entries.get((venue, regime))
        return hit if hit is not None else self.entries[(venue, UNKNOWN_REGIME)]

    def adv(self, venue: str, symbol: str) -> float:
        hit = self.adv_usd.get((venue, symbol))
        return hit if hit is not None else self.adv_usd[(venue, UNKNOWN_REGIME)]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CostTables:
        """Validate and index an artifact (see ``services.costfit``); every venue needs every regime and ""."""
        if doc.get("format") != TABLES_FORMAT or doc.get("model") != COST_V3:
            raise ValueError(f"not a {COST_V3} table artifact (format {doc.get('format')!r}, model "
                             f"{doc.get('model')!r})")
        version, notional = str(doc["version"]), float(doc["notional_usd"])
        model_version = f"{COST_V3}/{version}"
        entries: dict[tuple[str, str], CostEntry] = {}
        for venue in VENUES:
            table = doc["tables"].get(venue)
            if table is None:
                raise ValueError(f"cost tables {version} have no entries for venue {venue}")
            for regime in (*REGIME_LABELS, UNKNOWN_REGIME, POOLED):
                if regime not in table:
                    raise ValueError(f"cost tables {version} lack {venue}:{regime or '<unknown>'}")
                entries[(venue, regime)] = CostEntry.from_json(table[regime], notional_usd=notional,
                                                               version=model_version)
        adv: dict[tuple[str, str], float] = {}
        for key, row in doc.get("adv_usd", {}).items():
            venue, _, symbol = key.partition(":")
            value = float(row["adv_usd"])
            if venue in VENUES and symbol and math.isfinite(value) and value > 0.0:
                adv[(venue, symbol)] = value
        for venue in VENUES:
            known = [v for (ven, _), v in adv.items() if ven == venue]
            adv[(venue, UNKNOWN_REGIME)] = min(known) if known else float(doc.get("default_adv_usd", 1e8))
        return cls(version, notional, str(doc.get("fitted_at", "")), MappingProxyType(entries),
                   MappingProxyType(adv), doc)

    @classmethod
    def fixed(cls, slippage_bps: Mapping[str, float], *, version: str = "ct-fixed", notional_usd: float = 10_000.0,
              adv_usd: float = 1e9) -> CostTables:
        """Tables with one slippage per regime at every quantile, on both venues, and no size term; the unknown
        regime gets the largest. For tests and what-ifs: ``CostModel(fee_bps=2.0, tables=CostTables.fixed(
        SLIPPAGE_BPS), opportunity_rate=0.0).estimate(...)`` prices exactly as cost-v2 did."""
        def cell(value: float, fallback: str = "") -> dict[str, Any]:
            return {"n": 1_000_000, "quantiles": dict.fromkeys(QUANTILES, value), "confidence": 1.0,
                    "fallback": fallback, "impact": {"lambda": 0.0, "psi": 1.0}}
        worst = max(slippage_bps.values())
        table = {regime: cell(slippage_bps.get(regime, worst), "" if regime in slippage_bps else "worst")
                 for regime in REGIME_LABELS}
        table[UNKNOWN_REGIME] = cell(worst, "worst")
        table[POOLED] = cell(worst)
        return cls.from_json({"format": TABLES_FORMAT, "model": COST_V3, "version": version,
                              "notional_usd": notional_usd, "tables": dict.fromkeys(VENUES, table),
                              "default_adv_usd": adv_usd})

    @classmethod
    def load(cls, path: Path) -> CostTables:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def redis_fields(self) -> dict[str, bytes]:
        """The hash ``COST_TABLES_PREFIX + version``: ``venue:regime`` -> entry JSON, ``adv:venue:symbol`` -> ADV."""
        fields = {f"{venue}:{regime}": orjson.dumps(e.to_json()) for (venue, regime), e in self.entries.items()}
        fields.update({f"adv:{venue}:{symbol}": orjson.dumps(v) for (venue, symbol), v in self.adv_usd.items()})
        return fields


@functools.cache
def packaged_tables() -> CostTables:
    """The table artifact shipped as package data (``streams/decision/artifacts/cost_tables.json``)."""
    resource = importlib.resources.files("streams.decision.artifacts").joinpath(PACKAGED_TABLES)
    return CostTables.from_json(json.loads(resource.read_text(encoding="utf-8")))


def load_into_redis(client: redis.Redis, tables: CostTables, *, activate: bool = True) -> str:
    """Write the tables' hash and (by default) make it the active version; returns the hash key."""
    key = COST_TABLES_PREFIX + tables.version
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=tables.redis_fields())  # type: ignore[arg-type]  # bytes values are fine
    if activate:
        pipe.set(COST_ACTIVE_KEY, tables.version)
    pipe.execute()
    return key


# --- where tables are read from ---------------------------------------------------------------------------------


V = TypeVar("V")


class TableSource(Protocol):
    def entry(self, venue: str, regime: str) -> CostEntry: ...

    def adv(self, venue: str, symbol: str) -> float: ...


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0           # L1 expired or empty: a Redis read (or the fallback) was needed
    redis_reads: int = 0
    redis_errors: int = 0
    fallbacks: int = 0        # served from the packaged (or given) artifact


class CostTableCache:
    """Tables from Redis behind an in-process L1 cache keyed by (venue, regime), with a TTL on the clock.

    An L1 entry loaded at t is served while ``now < t + ttl``; then the next lookup re-reads Redis (the active
    version and the field, one pipelined round trip; a second one only when the active version changed). With no
    client, no active version in Redis, or a missing field, the ``fallback`` tables answer. A Redis error serves
    the last value read (else the fallback) and Redis is not tried again for ``retry_us``.
    """

    def __init__(self, fallback: CostTables, clock: Clock, client: redis.Redis | None = None, *,
                 ttl_us: int = 200_000, retry_us: int = 5_000_000) -> None:
        self.fallback = fallback
        self.clock = clock
        self.client = client
        self.ttl_us = ttl_us
        self.retry_us = retry_us
        self.stats = CacheStats()
        self._entries: dict[tuple[str, str], tuple[int, CostEntry]] = {}
        self._adv: dict[tuple[str, str], tuple[int, float]] = {}
        self._active: str | None = None
        self._down_until_us = 0
        self._parsed: dict[bytes, CostEntry] = {}

    def entry(self, venue: str, regime: str) -> CostEntry:
        key = (venue, regime)
        hit = self._entries.get(key)
        now = self.clock.now_us()
        if hit is not None and now < hit[0]:
            return hit[1]
        return self._refill(self._entries, key, hit, now, f"{venue}:{regime}", f"{venue}:{UNKNOWN_REGIME}",
                            lambda raw: self._parsed.get(raw) or self._parse_entry(raw),
                            lambda: self._fallback_entry(venue, regime))

    def adv(self, venue: str, symbol: str) -> float:
        key = (venue, symbol)
        hit = self._adv.get(key)
        now = self.clock.now_us()
        if hit is not None and now < hit[0]:
            return hit[1]
        return self._refill(self._adv, key, hit, now, f"adv:{venue}:{symbol}", f"adv:{venue}:{UNKNOWN_REGIME}",
                            lambda raw: float(orjson.loads(raw)), lambda: self.fallback.adv(venue, symbol))

    def _refill(self, cache: dict[tuple[str, str], tuple[int, V]], key: tuple[str, str], hit: tuple[int, V] | None,
                now: int, wanted: str, default: str, parse: Callable[[bytes], V], fallback: Callable[[], V]) -> V:
        """An L1 miss: read the field from Redis (or its default), else keep a stale value while Redis is briefly
        down, else the artifact; cached for the TTL either way."""
        self.stats.misses += 1
        raw = self._read(now, wanted, default)
        if raw is not None:
            value = parse(raw)
        elif hit is not None and self._stale_ok(now):
            value = hit[1]
        else:
            value = fallback()
        cache[key] = (now + self.ttl_us, value)
        return value

    def invalidate(self) -> None:
        self._entries.clear()
        self._adv.clear()

    # internals

    def _stale_ok(self, now: int) -> bool:
        """After a Redis error the last value read beats the fallback (it is the fleet's current table)."""
        return now < self._down_until_us

    def _fallback_entry(self, venue: str, regime: str) -> CostEntry:
        self.stats.fallbacks += 1
        return self.fallback.entry(venue, regime)

    def _parse_entry(self, raw: bytes) -> CostEntry:
        entry = CostEntry.from_json(orjson.loads(raw))
        if len(self._parsed) > 1024:
            self._parsed.clear()
        self._parsed[raw] = entry
        return entry

    def _read(self, now: int, wanted: str, default: str) -> bytes | None:
        """The field ``wanted`` (else ``default``) of the active version's hash; None: use the fallback."""
        if self.client is None or now < self._down_until_us:
            return None
        self.stats.redis_reads += 1
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(COST_ACTIVE_KEY)
            known = self._active
            if known is not None:
                pipe.hmget(COST_TABLES_PREFIX + known, [wanted, default])
            replies = pipe.execute()
            active_raw = replies[0]
            if active_raw is None:
                self._active = None
                return None  # nothing loaded into Redis: the artifact
            active = active_raw.decode() if isinstance(active_raw, bytes) else str(active_raw)
            values = replies[1] if known == active else None
            if values is None:
                self._active = active
                values = self.client.hmget(COST_TABLES_PREFIX + active, [wanted, default])
        except redis.RedisError as exc:
            self.stats.redis_errors += 1
            if now >= self._down_until_us:
                log.warning("cost tables unreadable from Redis (%s); serving cached or packaged tables for %.1fs",
                            exc, self.retry_us / 1e6)
            self._down_until_us = now + self.retry_us
            return None
        first, second = values  # sync client: a list of two
        raw = first if first is not None else second
        if isinstance(raw, str):
            return raw.encode()
        return raw if isinstance(raw, bytes) else None


# --- the model --------------------------------------------------------------------------------------------------


class VenueFees(NamedTuple):
    taker_bps: float
    maker_bps: float


# Binance VIP 0 without BNB discount: spot 0.1 % / 0.1 %, USD-M 0.05 % taker / 0.02 % maker (per side).
DEFAULT_FEES: Final[Mapping[str, VenueFees]] = MappingProxyType(
    {"spot": VenueFees(10.0, 10.0), "usdm": VenueFees(5.0, 2.0)})


class CostEstimate(NamedTuple):
    """One round trip's cost in bps (immutable); ``total_bps`` is the sum of the six components."""

    total_bps: float
    fee_bps: float
    spread_bps: float
    slippage_bps: float
    impact_bps: float
    funding_bps: float
    opportunity_bps: float
    quantile: str
    confidence: float
    version: str          # "cost-v3/<tables version>": the signal's cost_model_version


class CostBase(NamedTuple):
    """The part of one round trip's cost that depends on neither the horizon nor the side (``CostModel.base``):
    one per prediction priced, however many horizons it carries."""

    fixed_bps: float             # fee + spread + slippage + impact
    fee_bps: float
    spread_bps: float
    slippage_bps: float
    impact_bps: float
    quantile: str
    confidence: float
    version: str
    funding_per_min_bps: float   # a LONG's funding per minute held (USD-M with a live rate, else 0)
    opportunity_per_min_bps: float

    def funding_bps(self, horizon_min: float, side: int) -> float:
        """A LONG pays a positive rate, a SHORT receives it; any other side pays none."""
        funding = self.funding_per_min_bps * horizon_min
        return funding if side == _LONG else 0.0 - funding if side == _SHORT else 0.0  # 0.0 - x: no -0.0

    def total_bps(self, horizon_min: float, side: int) -> float:
        return self.fixed_bps + self.funding_bps(horizon_min, side) + self.opportunity_per_min_bps * horizon_min


class ExpectedMoves(NamedTuple):  # immutable and cheap to build: one per horizon priced
    """Expected return (bps) of each side for one probability; ``short_bps`` is None when it cannot be priced."""

    long_bps: float
    short_bps: float | None
    breakeven_p: float
    upper_bps: float
    lower_bps: float


@dataclass(frozen=True, slots=True)
class CostModel:
    """Round-trip cost and expected move; immutable so a running stage prices every signal the same way.

    ``fee_bps`` set: one flat taker fee per side on every venue (tests, the legacy cost-v2 path); None: the
    per-venue ``fees``. ``tables``: a ``CostTables`` or a ``CostTableCache`` (Redis + L1 + artifact).
    """

    fee_bps: float | None = None
    version: str = COST_MODEL_VERSION   # stamp of the legacy round_trip_cost_bps
    slippage_bps: Mapping[str, float] = field(default_factory=lambda: SLIPPAGE_BPS)
    move_bps: Mapping[int, float] = field(default_factory=lambda: HORIZON_MOVE_BPS)
    tables: TableSource = field(default_factory=packaged_tables)
    fees: Mapping[str, VenueFees] = field(default_factory=lambda: DEFAULT_FEES)
    notional_usd: float = 10_000.0
    quantile: str = "p50"
    stressed_quantile: str = "p97.5"   # a volatility or liquidation burst
    opportunity_rate: float = 0.05      # annual, on the notional
    funding_interval_h: float = 8.0
    _taker_fee: dict[str, float] = field(init=False, repr=False, compare=False)   # round trip, per venue
    _maker_fee: dict[str, float] = field(init=False, repr=False, compare=False)
    _funding_per_min: float = field(init=False, repr=False, compare=False)
    _opportunity_per_min: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for q in (self.quantile, self.stressed_quantile):
            if q not in QUANTILE_LEVELS:
                raise ValueError(f"unknown cost quantile {q!r}; choose one of {', '.join(QUANTILES)}")
        flat = self.fee_bps
        object.__setattr__(self, "_taker_fee", {venue: 2.0 * (flat if flat is not None else f.taker_bps)
                                                for venue, f in self.fees.items()})
        object.__setattr__(self, "_maker_fee", {venue: 2.0 * (flat if flat is not None else f.maker_bps)
                                                for venue, f in self.fees.items()})
        object.__setattr__(self, "_funding_per_min", BPS / (self.funding_interval_h * 60.0))
        object.__setattr__(self, "_opportunity_per_min", self.opportunity_rate * BPS / MINUTES_PER_YEAR)

    @classmethod
    def from_settings(cls, settings: Any, *, clock: Clock | None = None,
                      client: redis.Redis | None = None) -> CostModel:
        """The stage's model: per-venue fees and cost_* settings; tables from Redis through the L1 cache when a
        client and a clock are given, else the artifact (``SURGE_COST_TABLES`` or the packaged one)."""
        path = settings.cost_tables
        artifact = CostTables.load(Path(path)) if path else packaged_tables()
        source: TableSource = artifact
        if client is not None and clock is not None:
            source = CostTableCache(artifact, clock, client, ttl_us=round(settings.cost_l1_ttl_ms * 1000),
                                    retry_us=round(settings.cost_redis_retry_s * 1e6))
        fees = {"spot": VenueFees(settings.fee_spot_taker_bps, settings.fee_spot_maker_bps),
                "usdm": VenueFees(settings.fee_usdm_taker_bps, settings.fee_usdm_maker_bps)}
        return cls(tables=source, fees=fees, notional_usd=settings.cost_notional_usd,
                   quantile=settings.cost_quantile, stressed_quantile=settings.cost_stressed_quantile,
                   opportunity_rate=settings.cost_opportunity_rate,
                   funding_interval_h=settings.cost_funding_interval_h)

    def base(self, venue: int | str, symbol: str, regime: str, spread_bps: float, *,
             funding_rate: float | None = None, quantile: str | None = None, stressed: bool = False,
             book: Book | None = None, notional_usd: float | None = None, maker: bool = False) -> CostBase:
        """What ``estimate`` prices that depends on neither the horizon nor the side (the table lookup and the
        book walk): made once per prediction, then ``CostBase.total_bps`` per horizon and side. Arguments as
        for ``estimate``."""
        v = _VENUE_NAMES.get(venue, "spot")
        q = quantile if quantile is not None else (self.stressed_quantile if stressed else self.quantile)
        entry = self.tables.entry(v, regime)
        try:
            slippage = entry.quantiles[q]
        except KeyError:
            raise ValueError(f"unknown cost quantile {q!r}; choose one of {', '.join(QUANTILES)}") from None
        notional = self.notional_usd if notional_usd is None else notional_usd
        confidence = entry.confidence
        impact = 0.0
        walked = None if book is None else round_trip_walk_bps(book[0], book[1], notional)
        if walked is not None:
            slippage = max(walked, slippage) if q in _ABOVE_MEDIAN else walked
            confidence = 0.5 + 0.5 * confidence
        elif notional != entry.notional_usd:
            impact = max(entry.size_bps(notional, self.tables.adv(v, symbol)), -slippage)
        funding_per_min = funding_rate * self._funding_per_min if funding_rate is not None and v == "usdm" else 0.0
        fee = self._maker_fee[v] if maker else self._taker_fee[v]
        return CostBase(fee + spread_bps + slippage + impact, fee, spread_bps, slippage, impact, q, confidence,
                        entry.version, funding_per_min, self._opportunity_per_min)

    def estimate(self, venue: int | str, symbol: str, regime: str, spread_bps: float, horizon_min: float, *,
                 side: int = signal_pb2.LONG, funding_rate: float | None = None, quantile: str | None = None,
                 stressed: bool = False, book: Book | None = None, notional_usd: float | None = None,
                 maker: bool = False) -> CostEstimate:
        """The round trip's cost (see the module doc). ``venue``: a ``Venue`` enum value or "spot"/"usdm";
        ``side``: LONG or SHORT (funding sign; anything else pays no funding); ``quantile``: one of QUANTILES,
        default the model's, or its stressed quantile when ``stressed``; ``spread_bps`` finite and >= 0."""
        b = self.base(venue, symbol, regime, spread_bps, funding_rate=funding_rate, quantile=quantile,
                      stressed=stressed, book=book, notional_usd=notional_usd, maker=maker)
        return CostEstimate(b.total_bps(horizon_min, side), b.fee_bps, b.spread_bps, b.slippage_bps, b.impact_bps,
                            b.funding_bps(horizon_min, side), b.opportunity_per_min_bps * horizon_min, b.quantile,
                            b.confidence, b.version)

    def round_trip_fee_bps(self, venue: int | str, *, maker: bool = False) -> float:
        """2 x the venue's fee per side (the ``fee_bps`` of ``estimate``), e.g. for a realized cost that must use
        the same fees as the estimate it is compared with."""
        v = _VENUE_NAMES.get(venue, "spot")
        return self._maker_fee[v] if maker else self._taker_fee[v]

    # --- legacy cost-v2 (round_trip_cost_bps, slippage_for) ------------------------------------------------------

    @property
    def worst_slippage_bps(self) -> float:
        return max(self.slippage_bps.values())

    def slippage_for(self, regime: str) -> float:
        return self.slippage_bps.get(regime, self.worst_slippage_bps)

    def round_trip_cost_bps(self, regime: str, spread_bps: float) -> float:
        """cost-v2: 2 x fee + 2 x half spread + regime slippage. ``spread_bps`` must be finite and >= 0."""
        fee = self.fee_bps if self.fee_bps is not None else self.fees["spot"].taker_bps
        return 2.0 * fee + 2.0 * (spread_bps / 2.0) + self.slippage_for(regime)

    # --- expected moves ------------------------------------------------------------------------------------------

    def horizon_move_bps(self, horizon_min: int) -> float:
        if horizon_min in self.move_bps:
            return self.move_bps[horizon_min]
        reference = self.move_bps.get(_REFERENCE_HORIZON_MIN, HORIZON_MOVE_BPS[_REFERENCE_HORIZON_MIN])
        return reference * math.sqrt(max(horizon_min, 1) / _REFERENCE_HORIZON_MIN)

    def expected_moves(self, p_up: float, horizon_min: int, *, upper_bps: float = 0.0, lower_bps: float = 0.0,
                       timeout_counts_as_not_up: bool = False) -> ExpectedMoves:
        """Expected LONG and SHORT returns (bps) for ``p_up`` under the label's barriers; see the module doc."""
        if upper_bps > 0.0 and lower_bps > 0.0:
            up, down = upper_bps, lower_bps
        else:
            up = down = self.horizon_move_bps(horizon_min)
        long_bps = p_up * up - (1.0 - p_up) * down
        short_bps = None if timeout_counts_as_not_up else (1.0 - p_up) * down - p_up * up
        return ExpectedMoves(long_bps, short_bps, down / (up + down), up, down)
