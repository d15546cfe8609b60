"""Redis access shared by the sink (writer) and the gateway (reader): one key layout, one client factory.

Redis is a cache for the live dashboard and "latest" reads, never the record: the warehouse is. Layout:

* ``LATEST_KEY``: hash, instrument key (``BINANCE_SPOT:BTCUSDT``) -> JSON of its latest signal
* ``RECENT_KEY``: list of JSON signals, newest first, at most ``RECENT_MAX``
* ``CHANNEL``: pub/sub, every new signal, for live dashboards
* ``RISK_KEY``, ``RISK_RESET_KEY``, ``OUTCOMES_SNAPSHOT_KEY``: the outcomes stage's risk state, an operator's
  reset request, and the stage's snapshot (see ``streams/outcomes/stage.py``)
* ``LATEST_PREFIX + kind + ":" + instrument`` (kind ``prediction`` or ``book``): string, JSON of the latest
  prediction / top of book of the instrument, written pipelined with ``SET ... EX`` (``SURGE_CACHE_TTL_S``, 3-10 s)
  so a stale value expires instead of being served as current
* ``INSTRUMENT_IDS_KEY``: hash, instrument key -> small integer id (allocated once, from ``INSTRUMENT_SEQ_KEY``
  by INCR + HSETNX, so concurrent writers agree); ``INSTRUMENT_NAMES_KEY``: the reverse hash
* ``COST_ACTIVE_KEY``: string, the active cost-table version; ``COST_TABLES_PREFIX + version``: hash, one per
  table version, ``venue:regime`` -> JSON cost entry and ``adv:venue:symbol`` -> ADV (``streams/decision/cost.py``,
  loaded by ``surge cost load``)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

LATEST_KEY: Final = "surge:signals:latest"
RECENT_KEY: Final = "surge:signals:recent"
RECENT_MAX: Final = 1000
CHANNEL: Final = "surge:signals"
# The risk state machine's current state (JSON), written by the outcomes stage, obeyed by the decision stage.
RISK_KEY: Final = "surge:risk:state"
# An operator's reset request (JSON {actor, reason}), taken by the outcomes stage at its next commit.
RISK_RESET_KEY: Final = "surge:risk:reset"
# Threshold offsets the outcomes stage's live quality adapts (JSON {tau_offset, kappa_offset}); decision adds them.
ADAPT_KEY: Final = "surge:decision:adapt"
# The outcomes stage's state as of its last commit, so a restart resumes the open positions.
OUTCOMES_SNAPSHOT_KEY: Final = "surge:outcomes:snapshot"
# The decision stage's cost tables: the active version, and one hash per version (``surge cost load``).
COST_ACTIVE_KEY: Final = "surge:cost:active"
COST_TABLES_PREFIX: Final = "surge:cost:tables:"
# Hot keys: latest prediction / book top per instrument (SET EX), and the instrument id registry.
LATEST_PREFIX: Final = "surge:latest:"
PREDICTION: Final = "prediction"
BOOK: Final = "book"
KINDS: Final = (PREDICTION, BOOK)
INSTRUMENT_IDS_KEY: Final = "surge:instruments:ids"
INSTRUMENT_NAMES_KEY: Final = "surge:instruments:names"
INSTRUMENT_SEQ_KEY: Final = "surge:instruments:seq"
MIN_TTL_S: Final = 3
MAX_TTL_S: Final = 10


def open_redis(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A Redis client that fails fast: one immediate retry (a pooled connection gone stale after a Redis
    restart), no backoff, short timeouts, so a Redis outage costs each batch milliseconds, not seconds."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
    )


def instrument_field(doc: dict[str, Any]) -> str:
    """The latest hash's field of a signal document: its instrument key (``BINANCE_SPOT:BTCUSDT``), so spot and
    USD-M of one symbol keep separate latest signals. The document's venue is already the enum's name."""
    return f"{doc['venue']}:{doc['symbol']}"


class SignalCache:
    """The signal documents in Redis (``streams.sink.core.signal_doc`` shape), written by the sink."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publish(self, docs: Sequence[dict[str, Any]]) -> None:
        """Latest per symbol, the recent list and pub/sub in one pipelined round trip; raises RedisError."""
        if not docs:
            return
        pipe = self.client.pipeline(transaction=False)
        for doc in docs:
            payload = orjson.dumps(doc)
            pipe.hset(LATEST_KEY, instrument_field(doc), payload)
            pipe.lpush(RECENT_KEY, payload)  # pushed in arrival order, so the head is the newest
            pipe.publish(CHANNEL, payload)
        pipe.ltrim(RECENT_KEY, 0, RECENT_MAX - 1)
        pipe.execute()

    def recent(self) -> list[dict[str, Any]]:
        """The recent list, newest first, each signal once (a sink restart can re-push a redelivered one)."""
        raw: list[bytes] = self.client.lrange(RECENT_KEY, 0, RECENT_MAX - 1)  # type: ignore[assignment]  # sync client
        seen: set[str] = set()
        docs: list[dict[str, Any]] = []
        for item in raw:
            try:
                doc = orjson.loads(item)
            except orjson.JSONDecodeError:
                continue
            sid = doc.get("signal_id")
            if sid in seen:
                continue
            seen.add(sid)
            docs.append(doc)
        return docs

    def latest(self) -> list[dict[str, Any]]:
        """The latest signal of every symbol, sorted by symbol."""
        raw: dict[bytes, bytes] = self.client.hgetall(LATEST_KEY)  # type: ignore[assignment]  # sync client
        return sorted((orjson.loads(v) for v in raw.values()),
                      key=lambda d: (str(d.get("symbol", "")), str(d.get("venue", ""))))


def latest_key(kind: str, instrument: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown latest kind {kind!r}: one of {KINDS}")
    return f"{LATEST_PREFIX}{kind}:{instrument}"


class L1Cache:
    """A small in-process LRU with a TTL, in front of Redis for hot keys (the dashboard polls the same few
    keys many times a second). ``hits`` / ``misses`` count lookups; thread-safe."""

    def __init__(self, ttl_ms: float, capacity: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_ms / 1000.0
        self.capacity = capacity
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[bool, Any]:
        """(found, value); a found value may be None (a key known to be absent)."""
        if self.ttl_s <= 0:
            return False, None
        with self._lock:
            item = self._items.get(key)
            if item is not None and item[0] > self._clock():
                self._items.move_to_end(key)
                self.hits += 1
                return True, item[1]
            if item is not None:
                del self._items[key]
            self.misses += 1
            return False, None

    def put(self, key: str, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._items[key] = (self._clock() + self.ttl_s, value)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class HotCache:
    """Latest prediction / book top per instrument (``SET ... EX``), instrument ids, behind an optional L1.

    Writers (the sink) call ``put_latest``; readers (the gateway) ``get_latest`` / ``instrument_ids``."""

    def __init__(self, client: redis.Redis, *, ttl_s: int = 5, l1: L1Cache | None = None) -> None:
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"hot-cache TTL must be {MIN_TTL_S}..{MAX_TTL_S} s, not {ttl_s}")
        self.client = client
        self.ttl_s = ttl_s
        self.l1 = l1
        self._ids: dict[str, int] = {}  # ids never change once allocated: cached forever in-process

    def put_latest(self, kind: str, docs: Iterable[dict[str, Any]]) -> int:
        """The newest document per instrument (by ``exchange_us``) of ``docs``, pipelined, one round trip.
        Each document needs ``instrument``. Returns how many keys were set; raises RedisError."""
        newest: dict[str, dict[str, Any]] = {}
        for doc in docs:
            old = newest.get(doc["instrument"])
            if old is None or int(doc.get("exchange_us", 0)) >= int(old.get("exchange_us", 0)):
                newest[doc["instrument"]] = doc
        if not newest:
            return 0
        self.ensure_ids(newest)
        pipe = self.client.pipeline(transaction=False)
        for instrument, doc in newest.items():
            pipe.set(latest_key(kind, instrument), orjson.dumps({**doc, "instrument_id": self._ids.get(instrument)}),
                     ex=self.ttl_s)
        pipe.execute()
        return len(newest)

    def get_latest(self, kind: str, instruments: Sequence[str]) -> dict[str, dict[str, Any]]:
        """instrument -> latest document, for those present (one MGET for the L1 misses)."""
        found: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        for instrument in instruments:
            key = latest_key(kind, instrument)
            hit, value = self.l1.get(key) if self.l1 is not None else (False, None)
            if hit:
                if value is not None:
                    found[instrument] = value
            else:
                missing.append(instrument)
        if missing:
            raw: list[bytes | None] = self.client.mget([latest_key(kind, i) for i in missing])  # type: ignore[assignment]
            for instrument, item in zip(missing, raw, strict=True):
                doc = _loads(item)
                if self.l1 is not None:
                    self.l1.put(latest_key(kind, instrument), doc)
                if doc is not None:
                    found[instrument] = doc
        return found

    def ensure_ids(self, instruments: Iterable[str]) -> dict[str, int]:
        """Allocate (once, across every process) and return the integer id of each instrument."""
        wanted = [i for i in instruments if i not in self._ids]
        if wanted:
            known: list[bytes | None] = self.client.hmget(INSTRUMENT_IDS_KEY, wanted)  # type: ignore[assignment]
            for instrument, raw in zip(wanted, known, strict=True):
                if raw is not None:
                    self._ids[instrument] = int(raw)
                    continue
                candidate = int(self.client.incr(INSTRUMENT_SEQ_KEY))
                if self.client.hsetnx(INSTRUMENT_IDS_KEY, instrument, candidate):
                    self.client.hset(INSTRUMENT_NAMES_KEY, str(candidate), instrument)
                    self._ids[instrument] = candidate
                else:  # another writer won the race: use its id (ours is simply never used)
                    self._ids[instrument] = int(self.client.hget(INSTRUMENT_IDS_KEY, instrument))  # type: ignore[arg-type]
        return dict(self._ids)

    def instrument_ids(self) -> dict[str, int]:
        """Every registered instrument -> id."""
        raw: dict[bytes, bytes] = self.client.hgetall(INSTRUMENT_IDS_KEY)  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}


def _loads(item: bytes | None) -> dict[str, Any] | None:
    if item is None:
        return None
    try:
        doc = orjson.loads(item)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
