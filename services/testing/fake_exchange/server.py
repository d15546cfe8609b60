"""Fake Binance exchange: a real WebSocket + HTTP server (one port) replaying a recorded capture.

It speaks Binance's URLs and payloads for one venue:

* WebSocket: ``/ws/<stream>[/<stream>...]`` (raw payloads), ``/stream?streams=a/b`` (combined envelopes), bare
  ``/ws`` and ``/stream`` with JSON ``SUBSCRIBE``; USD-M also under the routed paths ``/public`` (depth,
  bookTicker) and ``/market`` (trade, markPrice, ...), and, like Binance, unrouted USD-M connections only get
  ``/public`` streams. A subscription matches a capture stream by symbol and kind, so ``btcusdt@depth@100ms``
  is served from a capture of ``btcusdt@depth@0ms``, under the name the client asked for.
* REST (``/api/v3`` spot, ``/fapi/v1`` USD-M): ``ping``, ``time``, ``depth``, ``exchangeInfo``, ``ticker/24hr``,
  ``trades`` and ``historicalTrades`` (USD-M wants an API key there, as Binance does), USD-M ``openInterest``,
  with request weights in ``X-MBX-USED-WEIGHT-1M`` and 429 beyond the venue's limit. ``/fake/status`` reports
  what was sent and injected.
* Derivatives (USD-M; no capture records them): ``liquidations_every`` N synthesizes a ``forceOrder`` event in
  Binance's documented shape from every Nth replayed trade of a symbol (side, price, quantity and times of that
  trade; at most one per symbol per second of exchange time, as Binance sends them), on ``/market``.
  ``openInterest`` answers ``OPEN_INTEREST_BASE`` plus ``OPEN_INTEREST_PER_TRADE`` per trade published so far,
  stamped with the exchange time of the newest published event, so it changes as the market plays.

The market is one shared clock: it starts ``start_delay_s`` after the first WebSocket connects (or at once) and
walks the capture at ``speed`` times the recorded pace, from each symbol's REST snapshot line on. Its own book
per symbol applies every diff as it is published, so a REST snapshot is always consistent with the stream
position. Exchange times are mapped onto the wall clock (with the capture's clock skew removed), so drift
measurements are meaningful. Faults: drop every Nth depth diff from the stream (the book still changes: a
real gap), send every Nth message twice, abort connections after S seconds, send a malformed frame before
every Nth message of chosen symbols, delay every frame by D ms, and silently corrupt every Nth depth diff: one
of its levels (not among the best ``CORRUPT_MIN_RANK`` of its side, within the top ``CORRUPT_MAX_RANK``) goes out
with a wrong quantity and a correct sequence, while the exchange's own book (and so every REST snapshot) keeps
the true one. No sequence or bookTicker check can see that; only a book audit against a snapshot can.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import statistics
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streams.ingest.replay import ReplayLine, capture_files, read_capture
from streams.runtime.clock import Clock, LiveClock
from streams.venues.binance.spec import venue_spec

log = logging.getLogger("surge.fake_exchange")

PUBLIC_KINDS = frozenset({"depth", "bookTicker"})   # USD-M /public; everything else is /market
MAX_CLIENT_QUEUE = 200_000                          # a client this far behind is dropped, as Binance does
MALFORMED_VARIANTS = ("truncated", "bad_value", "unknown_event", "not_object")
CORRUPT_MIN_RANK = 3                                # a corrupted level is never among the best 3 of its side
CORRUPT_MAX_RANK = 20                               # ... and always among the best 20 (what audits compare)
OPEN_INTEREST_BASE = 10659.509                      # Binance's documented sample value
OPEN_INTEREST_PER_TRADE = 0.5                       # the served open interest grows by this per published trade
LIQUIDATION_MIN_GAP_MS = 1000                       # Binance sends at most one liquidation per symbol and second


@dataclass(frozen=True)
class FakeOptions:
    venue: str = "spot"
    speed: float = 1.0
    inject_gap_every: int = 0          # drop every Nth depth diff from the stream
    inject_duplicates: int = 0         # send every Nth message twice
    disconnect_after_s: float = 0.0    # abort each connection this long after it opened
    malformed_every: int = 0           # a malformed frame before every Nth message (of malformed_symbols)
    malformed_symbols: frozenset[str] = frozenset()  # empty: every symbol
    delay_ms: float = 0.0
    corrupt_qty_every: int = 0         # every Nth depth diff goes out with one level's quantity changed
    liquidations_every: int = 0        # USD-M: a forceOrder synthesized from every Nth trade of a symbol
    start_delay_s: float = 1.0         # after the first connection, so a client's other connections are up
    start_on_connect: bool = True
    rebase_time: bool = True


@dataclass(slots=True)
class CaptureEvent:
    local_us: int
    symbol: str
    kind: str
    data: dict[str, Any]


@dataclass
class Capture:
    events: list[CaptureEvent]
    snapshots: dict[str, dict[str, Any]]
    skew_ms: int                      # median exchange-minus-local time of the recording
    quote_volume: dict[str, float]

    @property
    def symbols(self) -> list[str]:
        return sorted(self.snapshots)


def stream_kind(stream: str) -> str:
    """"btcusdt@depth@0ms" -> "depth", "btcusdt@markPrice@1s" -> "markPrice"."""
    parts = stream.split("@")
    return parts[1] if len(parts) > 1 else ""


def _iter_lines(paths: Sequence[Path]) -> Iterator[ReplayLine]:
    files = [f for p in paths for f in capture_files(p)]
    iterators = [read_capture(f, i) for i, f in enumerate(files)]
    return heapq.merge(*iterators, key=lambda ln: (ln.local_us, ln.file_index, ln.line_no))


def load_capture(paths: Sequence[Path]) -> Capture:
    """Read captures (files or folders); keep each symbol's events from its first REST snapshot line on."""
    events: list[CaptureEvent] = []
    snapshots: dict[str, dict[str, Any]] = {}
    early_diffs: dict[str, list[dict[str, Any]]] = {}
    skews: list[int] = []
    volume: dict[str, float] = {}
    for line in _iter_lines(paths):
        try:
            msg = orjson.loads(line.payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(msg, dict):
            continue
        if "lastUpdateId" in msg:
            if line.hint and line.hint not in snapshots:
                snapshots[line.hint] = fold_diffs(msg, early_diffs.pop(line.hint, []))
            continue
        data = msg.get("data")
        stream = msg.get("stream")
        if not isinstance(data, dict) or not isinstance(stream, str):
            continue
        symbol = stream.split("@", 1)[0].upper()
        kind = stream_kind(stream)
        if symbol not in snapshots:
            # Before this symbol's snapshot the book is unknown; diffs newer than the snapshot still count.
            if kind == "depth":
                early_diffs.setdefault(symbol, []).append(data)
            continue
        events.append(CaptureEvent(line.local_us, symbol, kind, data))
        if isinstance(data.get("E"), int) and len(skews) < 10_000:
            skews.append(data["E"] - line.local_us // 1000)
        if kind == "trade":
            with contextlib.suppress(KeyError, TypeError, ValueError):
                volume[symbol] = volume.get(symbol, 0.0) + float(data["p"]) * float(data["q"])
    if not events:
        raise ValueError(f"no replayable event (after a REST snapshot line) in {', '.join(map(str, paths))}")
    return Capture(events, snapshots, round(statistics.median(skews)) if skews else 0, volume)


def fold_diffs(snapshot: dict[str, Any], diffs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The recorded snapshot moved forward by the diffs recorded before it that are newer than it.

    A capture buffers diffs from connect and records the snapshot later (Binance's procedure), so the diff that
    straddles the snapshot may come before the snapshot line; the exchange's book includes it.
    """
    book = FakeBook(snapshot)
    last = book.last_update_id
    for diff in diffs:
        if diff["u"] > last:
            book.apply(diff)
    bids, asks = book.snapshot(len(book.bids) + len(book.asks))
    folded = {"lastUpdateId": book.last_update_id, "bids": bids, "asks": asks}
    if "T" in snapshot or book.transaction_ms:
        folded["T"] = book.transaction_ms
    return folded


class FakeBook:
    """The exchange's own book of one symbol, as price strings -> quantity strings."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.bids: dict[str, str] = {p: q for p, q in snapshot["bids"]}
        self.asks: dict[str, str] = {p: q for p, q in snapshot["asks"]}
        self.last_update_id: int = snapshot["lastUpdateId"]
        self.transaction_ms: int = int(snapshot.get("T", 0))

    def apply(self, diff: dict[str, Any]) -> None:
        for side, levels in ((self.bids, diff.get("b", ())), (self.asks, diff.get("a", ()))):
            for price, qty in levels:
                if float(qty) == 0.0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        self.last_update_id = diff["u"]
        self.transaction_ms = int(diff.get("T", diff.get("E", 0)))

    def snapshot(self, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: float(kv[0]), reverse=True)[:limit]
        asks = sorted(self.asks.items(), key=lambda kv: float(kv[0]))[:limit]
        return [[p, q] for p, q in bids], [[p, q] for p, q in asks]


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    combined: bool
    route: str
    names: dict[tuple[str, str], bytes] = field(default_factory=dict)   # (symbol, kind) -> stream name
    queue: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    opened: float = 0.0

    def frame(self, key: tuple[str, str], data: bytes) -> bytes:
        if not self.combined:
            return data
        return b'{"stream":"' + self.names[key] + b'","data":' + data + b"}"


class FakeExchange:
    """The market engine plus the HTTP and WebSocket handlers."""

    def __init__(self, capture: Capture, options: FakeOptions, clock: Clock | None = None) -> None:
        self.capture = capture
        self.options = options
        self.clock = clock or LiveClock()
        self.spec = venue_spec(options.venue)
        self.api = self.spec.api
        self.books = {s: FakeBook(snap) for s, snap in capture.snapshots.items()}
        self.subscribers: dict[tuple[str, str], set[Client]] = {}
        self.clients: set[Client] = set()
        self.trades: dict[str, list[dict[str, Any]]] = {s: [] for s in capture.snapshots}
        self.position = 0
        self.started = False
        self.done = False
        self._start = asyncio.Event()
        self._start_wall_ms = 0
        self._first_local_ms = capture.events[0].local_us // 1000
        self._weights: deque[tuple[float, int]] = deque()
        self.stats: dict[str, Any] = {
            "published": {}, "gaps": [], "duplicates": 0, "malformed": [], "disconnects": 0,
            "connections_total": 0, "snapshots_served": {}, "rest_requests": 0, "rate_limited": 0,
            "corrupted": [], "liquidations": [], "open_interest_served": [],
        }
        self._depth_seen = 0
        self._sent = 0
        self._sent_by_symbol: dict[str, int] = {}
        self._malformed_turn = 0
        self._corrupt_due = False
        self._trades_seen: dict[str, int] = {}
        self._liquidation_due: set[str] = set()
        self._last_liquidation_ms: dict[str, int] = {}
        self._last_exchange_ms = 0

    # --- time -----------------------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return self.clock.now_us() // 1000

    def exchange_ms(self, recorded_ms: int) -> int:
        """Recorded exchange time -> wall time, on the same affine map as the replay pace (skew removed)."""
        if not self.options.rebase_time:
            return recorded_ms
        return self._start_wall_ms + round((recorded_ms - self.capture.skew_ms - self._first_local_ms)
                                           / self.options.speed)

    def _rebased(self, data: dict[str, Any]) -> dict[str, Any]:
        if not self.options.rebase_time:
            return data
        out = dict(data)
        for key in ("E", "T"):
            value = out.get(key)
            if isinstance(value, int):
                out[key] = self.exchange_ms(value)
        order = out.get("o")
        if isinstance(order, dict) and isinstance(order.get("T"), int):  # forceOrder: the trade time is inside
            out["o"] = {**order, "T": self.exchange_ms(order["T"])}
        return out

    # --- market ---------------------------------------------------------------------------------------------

    def trigger_start(self) -> None:
        self._start.set()

    async def run_market(self) -> None:
        if self.options.start_on_connect:
            await self._start.wait()
        await asyncio.sleep(self.options.start_delay_s)
        loop = asyncio.get_running_loop()
        events = self.capture.events
        self._start_wall_ms = self._now_ms()
        for book in self.books.values():
            book.transaction_ms = self.exchange_ms(book.transaction_ms) if book.transaction_ms else 0
        started = loop.time()
        first_us = events[0].local_us
        speed = self.options.speed
        self.started = True
        log.info("market started: %d events of %s at %.1fx", len(events), ",".join(self.capture.symbols), speed)
        burst = 0
        while self.position < len(events):
            event = events[self.position]
            due = started + (event.local_us - first_us) / 1e6 / speed
            wait = due - loop.time()
            if wait > 0:
                burst = 0
                await asyncio.sleep(wait)
                continue
            self._publish(event)
            self.position += 1
            burst += 1
            if burst >= 200:
                burst = 0
                await asyncio.sleep(0)  # let the senders run when far behind
        self.done = True
        log.info("capture finished: %s", orjson.dumps(self.status()["published"]).decode())

    def _publish(self, event: CaptureEvent) -> None:
        symbol, kind, data = event.symbol, event.kind, event.data
        published = self.stats["published"]
        out = self._rebased(data)
        if kind == "depth":
            self.books[symbol].apply(out)
            self._depth_seen += 1
            every = self.options.inject_gap_every
            if every and self._depth_seen % every == 0:
                self.stats["gaps"].append({"symbol": symbol, "U": data.get("U"), "u": data.get("u")})
                return  # the exchange's book moved, the stream skipped it: a real gap
            every = self.options.corrupt_qty_every
            if every and self._depth_seen % every == 0:
                self._corrupt_due = True
            if self._corrupt_due:
                corrupted = self._corrupt(symbol, out)
                self._corrupt_due = corrupted is out  # no level qualified: the next diff then
                out = corrupted
        if kind == "trade":
            self.trades[symbol].append(out)
            if self.options.liquidations_every and self.spec.futures:
                self._maybe_liquidation(event, out)
        if isinstance(out.get("E"), int):
            self._last_exchange_ms = max(self._last_exchange_ms, out["E"])
        published[kind] = published.get(kind, 0) + 1
        payload = orjson.dumps(out)
        key = (symbol, kind)
        subscribers = self.subscribers.get(key)
        if not subscribers:
            return
        if kind == "forceOrder":
            self.stats["liquidations"].append({"symbol": symbol, **out})
        self._sent += 1
        n = self._sent_by_symbol[symbol] = self._sent_by_symbol.get(symbol, 0) + 1
        every = self.options.malformed_every
        malformed = every and n % every == 0 and (
            not self.options.malformed_symbols or symbol in self.options.malformed_symbols)
        due = asyncio.get_running_loop().time() + self.options.delay_ms / 1000
        copies = 2 if self.options.inject_duplicates and self._sent % self.options.inject_duplicates == 0 else 1
        if copies == 2:
            self.stats["duplicates"] += 1
        variant = MALFORMED_VARIANTS[self._malformed_turn % len(MALFORMED_VARIANTS)] if malformed else ""
        if malformed:
            self._malformed_turn += 1
        for client in list(subscribers):
            if variant:
                bad = self._malformed(client, key, out, variant)
                self.stats["malformed"].append({"symbol": symbol, "kind": kind, "variant": variant,
                                                "payload": bad.decode()})
                self._enqueue(client, due, bad)
            frame = client.frame(key, payload)
            for _ in range(copies):
                self._enqueue(client, due, frame)

    def _maybe_liquidation(self, trade: CaptureEvent, sent: dict[str, Any]) -> None:
        """Every ``liquidations_every``-th trade of a symbol (or the first one a second after the symbol's last
        liquidation) becomes a forceOrder in Binance's documented shape, published right after the trade."""
        symbol, data = trade.symbol, trade.data
        n = self._trades_seen[symbol] = self._trades_seen.get(symbol, 0) + 1
        if n % self.options.liquidations_every == 0:
            self._liquidation_due.add(symbol)
        at_ms = sent.get("E")
        if symbol not in self._liquidation_due or not isinstance(at_ms, int):
            return
        if at_ms - self._last_liquidation_ms.get(symbol, -LIQUIDATION_MIN_GAP_MS) < LIQUIDATION_MIN_GAP_MS:
            return
        self._liquidation_due.discard(symbol)
        self._last_liquidation_ms[symbol] = at_ms
        qty = data["q"]
        liquidation = {"e": "forceOrder", "E": data["E"], "o": {
            "s": symbol, "S": "SELL" if data["m"] else "BUY", "o": "LIMIT", "f": "IOC", "q": qty, "p": data["p"],
            "ap": data["p"], "X": "FILLED", "l": qty, "z": qty, "T": data.get("T", data["E"])}}
        self._publish(CaptureEvent(trade.local_us, symbol, "forceOrder", liquidation))

    def _corrupt(self, symbol: str, diff: dict[str, Any]) -> dict[str, Any]:
        """``diff`` with one level's quantity changed (see the module doc); unchanged if no level qualifies."""
        book = self.books[symbol]
        for key, side, best_first in (("b", book.bids, True), ("a", book.asks, False)):
            ranked = (heapq.nlargest if best_first else heapq.nsmallest)(CORRUPT_MAX_RANK, side, key=float)
            eligible = set(ranked[CORRUPT_MIN_RANK:])
            levels = diff.get(key) or []
            for i, (price, qty) in enumerate(levels):
                if price in eligible and float(qty) > 0.0:
                    wrong = f"{float(qty) * 1.5 + 0.001:.8f}"
                    changed = [list(level) for level in levels]
                    changed[i][1] = wrong
                    self.stats["corrupted"].append({"symbol": symbol, "u": diff.get("u"), "side": key,
                                                    "price": price, "qty": qty, "sent": wrong})
                    return {**diff, key: changed}
        return diff

    def _enqueue(self, client: Client, due: float, frame: bytes) -> None:
        if client.queue.qsize() >= MAX_CLIENT_QUEUE:
            log.warning("client %s is too slow; dropping it", client.ws.remote_address)
            client.ws.transport.abort()
            return
        client.queue.put_nowait((due, frame))

    def _malformed(self, client: Client, key: tuple[str, str], data: dict[str, Any], variant: str) -> bytes:
        if variant == "truncated":
            whole = client.frame(key, orjson.dumps(data))
            return whole[: max(1, len(whole) // 2)]
        if variant == "not_object":
            return client.frame(key, b"[1,2,3]")
        bad = dict(data)
        if variant == "unknown_event":
            bad["e"] = "mysteryEvent"
        elif key[1] == "trade":
            bad["p"] = "abc"
        elif key[1] == "depth":
            bad["b"] = [["1.00", "-1.000"]]
        elif key[1] == "bookTicker":
            bad["b"] = "0"
        elif key[1] == "markPrice":
            bad["p"] = "NaN"
        elif key[1] == "forceOrder":
            bad["o"] = {**bad["o"], "p": "abc"}
        else:
            bad["e"] = "mysteryEvent"
        return client.frame(key, orjson.dumps(bad))

    # --- WebSocket ------------------------------------------------------------------------------------------

    def parse_ws_path(self, path: str) -> tuple[str, bool, list[str]] | None:
        """(route, combined, streams) of a WebSocket request path, or None if Binance would not serve it."""
        target, _, query = path.partition("?")
        route = ""
        for prefix in ("/public", "/market"):
            if target.startswith(prefix + "/"):
                if not self.spec.futures:
                    return None
                route, target = prefix, target[len(prefix):]
                break
        if target == "/stream":
            streams = urllib.parse.parse_qs(query).get("streams", [""])[0]
            return route, True, [s for s in streams.split("/") if s]
        if target == "/ws" or target.startswith("/ws/"):
            return route, False, [s for s in target[4:].split("/") if s]
        return None

    def _subscribe(self, client: Client, streams: Sequence[str]) -> None:
        for name in streams:
            symbol, kind = name.split("@", 1)[0].upper(), stream_kind(name)
            # USD-M routes by path (unrouted = /public); a stream on the wrong path is accepted and stays silent.
            if self.spec.futures and (kind in PUBLIC_KINDS) != (client.route in ("", "/public")):
                continue
            key = (symbol, kind)
            client.names[key] = name.encode()
            self.subscribers.setdefault(key, set()).add(client)

    def _unsubscribe(self, client: Client) -> None:
        for key in client.names:
            self.subscribers.get(key, set()).discard(client)
        self.clients.discard(client)

    async def handle_ws(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parsed = self.parse_ws_path(ws.request.path)
        assert parsed is not None  # process_request refused the others
        route, combined, streams = parsed
        loop = asyncio.get_running_loop()
        client = Client(ws, combined, route, opened=loop.time())
        self._subscribe(client, streams)
        self.clients.add(client)
        self.stats["connections_total"] += 1
        self.trigger_start()
        sender = asyncio.create_task(self._send_loop(client))
        killer = asyncio.create_task(self._disconnect_later(client)) if self.options.disconnect_after_s else None
        try:
            async for message in ws:
                await self._on_client_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._unsubscribe(client)
            sender.cancel()
            if killer is not None:
                killer.cancel()
            await asyncio.gather(sender, *([killer] if killer else []), return_exceptions=True)

    async def _send_loop(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, frame = await client.queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await client.ws.send(frame, text=True)

    async def _disconnect_later(self, client: Client) -> None:
        await asyncio.sleep(self.options.disconnect_after_s)
        self.stats["disconnects"] += 1
        log.info("injected disconnect of %s", client.ws.remote_address)
        client.ws.transport.abort()  # abrupt, like a network failure: no close frame

    async def _on_client_message(self, client: Client, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if not isinstance(request, dict):
            return
        method, params, ident = request.get("method"), request.get("params") or [], request.get("id")
        if method == "SUBSCRIBE" and isinstance(params, list):
            self._subscribe(client, [str(p) for p in params])
            await client.ws.send(orjson.dumps({"result": None, "id": ident}), text=True)
        elif method == "UNSUBSCRIBE" and isinstance(params, list):
            for name in (str(p) for p in params):
                key = (name.split("@", 1)[0].upper(), stream_kind(name))
                if client.names.get(key) == name.encode():
                    del client.names[key]
                    self.subscribers.get(key, set()).discard(client)
            await client.ws.send(orjson.dumps({"result": None, "id": ident}), text=True)
        elif method == "LIST_SUBSCRIPTIONS":
            names = [n.decode() for n in client.names.values()]
            await client.ws.send(orjson.dumps({"result": names, "id": ident}), text=True)

    # --- HTTP -----------------------------------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.parse_ws_path(request.path) is None:
                return _json(404, {"code": -1, "msg": f"no WebSocket at {request.path}"})
            return None
        return self.handle_http(request)

    def _weight(self, weight: int) -> int:
        loop_now = self.clock.now_us() / 1e6
        self._weights.append((loop_now, weight))
        while self._weights and self._weights[0][0] < loop_now - 60:
            self._weights.popleft()
        return sum(w for _, w in self._weights)

    def handle_http(self, request: Request) -> Response:
        target, _, query = request.path.partition("?")
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        self.stats["rest_requests"] += 1
        if target == "/fake/status":
            return _json(200, self.status())
        api = self.api
        if not target.startswith(api + "/"):
            return _json(404, {"code": -1, "msg": f"unknown path {target}"})
        endpoint = target[len(api) + 1:]
        weight = self._endpoint_weight(endpoint, params)
        used = self._weight(weight)
        if used > self.spec.weight_limit_per_min:
            self.stats["rate_limited"] += 1
            return _json(429, {"code": -1003, "msg": "Too much request weight used"},
                         extra={"Retry-After": "1", "X-MBX-USED-WEIGHT-1M": str(used)})
        try:
            code, body = self._rest(endpoint, params, request)
        except _RestFailure as exc:
            code, body = exc.status, {"code": exc.code, "msg": exc.msg}
        return _json(code, body, extra={"X-MBX-USED-WEIGHT-1M": str(used)})

    def _endpoint_weight(self, endpoint: str, params: dict[str, str]) -> int:
        if endpoint == "depth":
            return self.spec.depth_weight(int(params.get("limit", "100") or 100))
        if endpoint == "exchangeInfo":
            return self.spec.exchange_info_weight
        if endpoint == "ticker/24hr":
            return 2 if "symbol" in params else self.spec.ticker_24hr_weight
        if endpoint in ("trades", "historicalTrades"):
            return self.spec.trades_weight
        if endpoint == "openInterest":
            return self.spec.open_interest_weight or 1
        return 1

    def _symbol(self, params: dict[str, str]) -> str:
        symbol = params.get("symbol", "").upper()
        if symbol not in self.books:
            raise _RestFailure(400, -1121, "Invalid symbol.")
        return symbol

    def _rest(self, endpoint: str, params: dict[str, str], request: Request) -> tuple[int, Any]:
        handlers: dict[str, Callable[[], Any]] = {
            "ping": dict,
            "time": lambda: {"serverTime": self._now_ms()},
            "depth": lambda: self._rest_depth(params),
            "exchangeInfo": lambda: {"timezone": "UTC", "serverTime": self._now_ms(),
                                     "symbols": [self._symbol_info(s) for s in self.capture.symbols]},
            "ticker/24hr": lambda: (self._ticker(self._symbol(params)) if "symbol" in params
                                    else [self._ticker(s) for s in self.capture.symbols]),
            "trades": lambda: self._rest_trades(params, request, historical=False),
            "historicalTrades": lambda: self._rest_trades(params, request, historical=True),
        }
        if self.spec.open_interest_weight:
            handlers["openInterest"] = lambda: self._rest_open_interest(params)
        handler = handlers.get(endpoint)
        if handler is None:
            raise _RestFailure(404, -1, f"unknown endpoint {endpoint}")
        return 200, handler()

    def _rest_depth(self, params: dict[str, str]) -> dict[str, Any]:
        symbol = self._symbol(params)
        limit = int(params.get("limit", "100") or 100)
        try:
            self.spec.check_limit(limit)
        except ValueError as exc:
            raise _RestFailure(400, -1130, str(exc)) from None
        book = self.books[symbol]
        bids, asks = book.snapshot(limit)
        served = self.stats["snapshots_served"]
        served[symbol] = served.get(symbol, 0) + 1
        if self.spec.futures:
            return {"lastUpdateId": book.last_update_id, "E": self._now_ms(),
                    "T": book.transaction_ms or self._now_ms(), "bids": bids, "asks": asks}
        return {"lastUpdateId": book.last_update_id, "bids": bids, "asks": asks}

    def _rest_trades(self, params: dict[str, str], request: Request, *, historical: bool) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        if historical and self.spec.futures and "X-MBX-APIKEY" not in request.headers:
            raise _RestFailure(401, -2014, "API-key format invalid.")
        limit = min(1000, int(params.get("limit", "500") or 500))
        trades = self.trades[symbol]
        if historical and "fromId" in params:
            from_id = int(params["fromId"])
            first = trades[0]["t"] if trades else from_id
            start = max(0, from_id - first)  # published ids are contiguous
            chosen = trades[start:start + limit]
        else:
            chosen = trades[-limit:]
        return [self._rest_trade(t) for t in chosen]

    def _rest_open_interest(self, params: dict[str, str]) -> dict[str, Any]:
        """Binance's documented shape; the value grows with the trades published, the time is the market's."""
        symbol = self._symbol(params)
        value = OPEN_INTEREST_BASE + OPEN_INTEREST_PER_TRADE * len(self.trades[symbol])
        sample = {"openInterest": f"{value:.3f}", "symbol": symbol, "time": self._last_exchange_ms}
        self.stats["open_interest_served"].append(sample)
        return sample

    def _symbol_info(self, symbol: str) -> dict[str, Any]:
        base = symbol[:-4] if symbol.endswith("USDT") else symbol[:-3]
        info: dict[str, Any] = {"symbol": symbol, "status": "TRADING", "baseAsset": base,
                                "quoteAsset": symbol[len(base):]}
        if self.spec.futures:
            info["contractType"] = "PERPETUAL"
        return info

    def _ticker(self, symbol: str) -> dict[str, Any]:
        trades = self.trades[symbol]
        last = trades[-1]["p"] if trades else "0"
        prices = [float(t["p"]) for t in trades]
        high, low = (max(prices), min(prices)) if prices else (0.0, 0.0)
        return {"symbol": symbol, "lastPrice": last, "quoteVolume": f"{self.capture.quote_volume.get(symbol, 0.0):.8f}",
                "highPrice": f"{high:.8f}", "lowPrice": f"{low:.8f}", "count": len(trades)}

    def _rest_trade(self, trade: dict[str, Any]) -> dict[str, Any]:
        record = {"id": trade["t"], "price": trade["p"], "qty": trade["q"],
                  "quoteQty": f"{float(trade['p']) * float(trade['q']):.8f}", "time": trade["T"],
                  "isBuyerMaker": trade["m"]}
        if not self.spec.futures:
            record["isBestMatch"] = trade.get("M", True)
        return record

    def status(self) -> dict[str, Any]:
        trades = {s: {"first": t[0]["t"], "last": t[-1]["t"], "count": len(t)} for s, t in self.trades.items() if t}
        return {
            "venue": self.options.venue, "speed": self.options.speed, "started": self.started, "done": self.done,
            "position": self.position, "total": len(self.capture.events), "symbols": self.capture.symbols,
            "connections_open": len(self.clients), "trades": trades,
            "books": {s: b.last_update_id for s, b in self.books.items()}, **self.stats,
        }


class _RestFailure(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def _json(status: int, body: Any, extra: dict[str, str] | None = None) -> Response:
    payload = orjson.dumps(body)
    headers = Headers([("Date", formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    for key, value in (extra or {}).items():
        headers[key] = value
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              429: "Too Many Requests"}.get(status, "Error")
    return Response(status, reason, headers, payload)


async def serve_exchange(exchange: FakeExchange, host: str, port: int, stop: asyncio.Event,
                         ready: threading.Event | None = None) -> None:
    """Serve until ``stop``; ``ready`` is set once the port listens."""
    quiet = logging.getLogger("surge.fake_exchange.websockets")
    quiet.setLevel(logging.WARNING)  # websockets logs every HTTP request and connection at INFO
    server: Server = await serve(exchange.handle_ws, host, port, process_request=exchange.process_request,
                                 ping_interval=20, ping_timeout=60, max_queue=None, compression=None, logger=quiet)
    market = asyncio.create_task(exchange.run_market())
    if not exchange.options.start_on_connect:
        exchange.trigger_start()
    log.info("fake Binance %s on %s:%d (ws://%s:%d, http://%s:%d)", exchange.options.venue, host, port, host, port,
             host, port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        market.cancel()
        server.close()
        await asyncio.gather(market, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


class ExchangeThread:
    """A fake exchange on its own event loop thread, for in-process tests and benchmarks."""

    def __init__(self, exchange_factory: Any, host: str, port: int) -> None:
        self._factory = exchange_factory
        self.host, self.port = host, port
        self.exchange: FakeExchange | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-exchange", daemon=True)

    def start(self) -> FakeExchange:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fake exchange did not start")
        assert self.exchange is not None
        return self.exchange

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self.exchange = self._factory()
            await serve_exchange(self.exchange, self.host, self.port, self._stop, self._ready)

        self._loop.run_until_complete(main())

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the exchange's loop and return its result (status snapshots without races)."""
        result: list[Any] = []
        done = threading.Event()

        def run() -> None:
            result.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        return result[0]

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def main(captures: Sequence[Path], options: FakeOptions, host: str, port: int) -> None:
    """Blocking entry point for ``surge fake-exchange``; Ctrl-C / SIGTERM stops it."""
    import signal

    capture = load_capture(captures)
    log.info("loaded %d events of %s (clock skew %d ms)", len(capture.events), ",".join(capture.symbols),
             capture.skew_ms)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_exchange(FakeExchange(capture, options), host, port, stop)

    asyncio.run(run())
