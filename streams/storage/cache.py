"""Redis access shared by the sink (writer) and the gateway (reader): one key layout, one client factory.

Redis is a cache for the live dashboard and "latest" reads, never the record: the warehouse is. Layout:

* ``LATEST_KEY``: hash, instrument key (``BINANCE_SPOT:BTCUSDT``) -> JSON of its latest signal
* ``RECENT_KEY``: list of JSON signals, newest first, at most ``RECENT_MAX``
* ``CHANNEL``: pub/sub, every new signal, for live dashboards
* ``RISK_KEY``, ``RISK_RESET_KEY``, ``OUTCOMES_SNAPSHOT_KEY``: the outcomes stage's risk state, an operator's
  reset request, and the stage's snapshot (see ``streams/outcomes/stage.py``)
* ``COST_ACTIVE_KEY``: string, the active cost-table version; ``COST_TABLES_PREFIX + version``: hash, one per
  table version, ``venue:regime`` -> JSON cost entry and ``adv:venue:symbol`` -> ADV (``streams/decision/cost.py``,
  loaded by ``surge cost load``)
"""

from __future__ import annotations

from collections.abc import Sequence
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
