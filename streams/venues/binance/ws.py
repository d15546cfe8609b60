"""Binance WebSocket connections: combined streams, pings, reconnect backoff and the proactive 24 h rollover.

``plan_connections`` spreads the symbols over combined-stream connections (``/stream?streams=a/b``): up to
``symbols_per_connection`` symbols each, one connection per routed path of the venue spec. A ``StreamConnection``
keeps one of them up: client pings (a missing pong drops it), reconnects with exponential backoff capped at
``backoff_max_s`` and jitter, and a rollover before Binance's 24 h cut: a replacement connects and buffers, then
takes over when the old one closes, so nothing is lost or resynced (the core drops the overlap as duplicates).
Frames and connection events go to a ``ConnectionListener`` (the live feed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from streams.runtime.clock import Clock
from streams.venues.binance.spec import StreamKind, VenueSpec

log = logging.getLogger("surge.venues.binance.ws")

ROLLOVER_OVERLAP_US = 1_000_000   # the replacement connection buffers this long after its first frame
ROLLOVER_WAIT_MAX_US = 15_000_000  # ... but no longer than this for a first frame (quiet symbols)
ROLLOVER_RETRY_S = 30.0
MAX_MESSAGE_BYTES = 16 * 2**20
YIELD_EVERY = 64               # frames a reader takes in a row before letting other tasks run


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """One combined-stream connection: its URL, the symbols it carries and what kinds of data."""

    route: str
    symbols: tuple[str, ...]
    streams: tuple[str, ...]
    url: str
    carries_depth: bool
    carries_trades: bool

    @property
    def label(self) -> str:
        return f"{self.route or '/'}[{self.symbols[0]}..{self.symbols[-1]}]"


def route_plan(spec: VenueSpec, ws_base: str, route: str, symbols: Sequence[str]) -> ConnectionPlan:
    """The connection of ``symbols`` on one routed path of the venue."""
    kinds: list[StreamKind] = [k for k in spec.streams if k.route == route]
    streams = tuple(f"{s.lower()}{k.suffix}" for s in symbols for k in kinds)
    if len(streams) > spec.max_streams_per_connection:
        raise ValueError(f"{len(streams)} streams on one connection; {spec.name} allows "
                         f"{spec.max_streams_per_connection}: lower SURGE_SYMBOLS_PER_CONNECTION")
    url = f"{ws_base.rstrip('/')}{route}/stream?streams={'/'.join(streams)}"
    names = {k.name for k in kinds}
    return ConnectionPlan(route, tuple(symbols), streams, url, "depth" in names, "trade" in names)


def plan_connections(spec: VenueSpec, ws_base: str, symbols: Sequence[str],
                     per_connection: int) -> list[ConnectionPlan]:
    """Spread the symbols over connections: ``per_connection`` symbols each, one connection per route."""
    routes = list(dict.fromkeys(k.route for k in spec.streams))
    plans: list[ConnectionPlan] = []
    for i in range(0, len(symbols), per_connection):
        chunk = tuple(symbols[i:i + per_connection])
        plans.extend(route_plan(spec, ws_base, route, chunk) for route in routes)
    return plans


# --- reconnect backoff -------------------------------------------------------------------------------------------


class Backoff:
    """Exponential reconnect delays: base, 2*base, ... capped at ``cap_s``; each scaled by a jitter in [0.5, 1]
    so many connections dropped together do not reconnect in lockstep."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 8.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


# --- connections -------------------------------------------------------------------------------------------------


class ConnectionListener(Protocol):
    """What a connection tells its owner: every frame (with its local receive time) and its ups and downs."""

    def deliver(self, message: bytes, local_us: int) -> None: ...

    def on_connected(self, conn: StreamConnection, *, reconnect: bool) -> None: ...

    def on_connect_failed(self, conn: StreamConnection) -> None: ...

    def on_disconnected(self, conn: StreamConnection) -> None: ...

    def on_rollover(self, conn: StreamConnection) -> None: ...


class _Link:
    """One open WebSocket and the task reading it. Frames go to ``deliver``, or to a buffer while the link is a
    rollover replacement waiting to take over."""

    def __init__(self, ws: ClientConnection, deliver: Callable[[bytes, int], None], clock: Clock, *,
                 buffering: bool = False) -> None:
        self.ws = ws
        self.deliver = deliver
        self.clock = clock
        self.buffer: list[tuple[bytes, int]] | None = [] if buffering else None
        self.frames = 0
        self.first_frame_us = 0
        self.opened_us = clock.now_us()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        ws, clock = self.ws, self.clock
        while True:
            message = await ws.recv(decode=False)
            local_us = clock.now_us()
            if isinstance(message, str):
                message = message.encode()
            if not self.frames:
                self.first_frame_us = local_us
            self.frames += 1
            if message.startswith(b'{"result"'):
                continue  # a SUBSCRIBE acknowledgement, not market data
            if self.buffer is not None:
                self.buffer.append((message, local_us))
            else:
                self.deliver(message, local_us)
            if not self.frames % YIELD_EVERY:
                # recv() does not suspend while frames are queued: let the processor run, or micro-batch
                # windows stretch under load.
                await asyncio.sleep(0)

    def go_live(self) -> None:
        """Hand the buffered frames over in order, then deliver directly (no await in between: no reordering)."""
        buffered, self.buffer = self.buffer or [], None
        for message, local_us in buffered:
            self.deliver(message, local_us)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def closed_reason(self) -> str:
        if self.task is None or not self.task.done() or self.task.cancelled():
            return "open"
        exc = self.task.exception()
        return f"{type(exc).__name__}: {exc}" if exc is not None else "closed"


class StreamConnection:
    """Keeps one combined-stream connection up: reconnects with backoff, rolls over before the 24 h limit."""

    def __init__(self, plan: ConnectionPlan, feed: ConnectionListener, clock: Clock, *, ping_interval_s: float,
                 rollover_s: float, backoff_max_s: float, rng: random.Random | None = None) -> None:
        self.plan = plan
        self.feed = feed
        self.clock = clock
        self.ping_interval_s = ping_interval_s
        self.rollover_us = round(rollover_s * 1e6)
        self.backoff = Backoff(cap_s=backoff_max_s, rng=rng)
        self.active: _Link | None = None
        self.sessions = 0
        self.rollovers = 0
        self._request_id = 0

    @property
    def up(self) -> bool:
        return self.active is not None and self.active.task is not None and not self.active.task.done()

    async def resubscribe(self, plan: ConnectionPlan) -> None:
        """Carry ``plan``'s streams from now on: SUBSCRIBE / UNSUBSCRIBE the difference on the open connection,
        and connect with the new URL from the next (re)connect or rollover on. The other streams never stop."""
        old = set(self.plan.streams)
        new = set(plan.streams)
        self.plan = plan
        link = self.active
        if link is None or not self.up:
            return
        removed = [s for s in old if s not in new]
        added = [s for s in plan.streams if s not in old]
        with contextlib.suppress(WebSocketException, OSError):  # dropped meanwhile: the reconnect uses the new URL
            for method, params in (("UNSUBSCRIBE", removed), ("SUBSCRIBE", added)):
                if params:
                    self._request_id += 1
                    await link.ws.send(orjson.dumps({"method": method, "params": params,
                                                     "id": self._request_id}).decode())

    async def _open(self) -> ClientConnection:
        return await connect(self.plan.url, ping_interval=self.ping_interval_s, ping_timeout=self.ping_interval_s,
                             max_size=MAX_MESSAGE_BYTES, open_timeout=10, close_timeout=2, compression=None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                ws = await self._open()
            except (OSError, TimeoutError, WebSocketException, InvalidURI, InvalidHandshake) as exc:
                delay = self.backoff.next()
                log.warning("connect %s failed (%s); retrying in %.1fs", self.plan.label, exc, delay)
                self.feed.on_connect_failed(self)
                await _sleep_or_stop(stop, delay)
                continue
            link = _Link(ws, self.feed.deliver, self.clock)
            self.sessions += 1
            self.active = link
            link.start()  # its first frame comes only after the next await, so on_connected still goes first
            self.feed.on_connected(self, reconnect=self.sessions > 1)
            await self._serve(stop)
            current = self.active
            self.feed.on_disconnected(self)
            if stop.is_set():
                break
            if current.frames:
                self.backoff.reset()  # it worked for a while: start again from the shortest delay
            delay = self.backoff.next()
            log.warning("connection %s dropped (%s); reconnecting in %.1fs", self.plan.label, current.closed_reason,
                        delay)
            await _sleep_or_stop(stop, delay)

    async def _serve(self, stop: asyncio.Event) -> None:
        """Until the active link drops (a rollover hands over to a new link without returning) or stop."""
        rollover = asyncio.create_task(self._rollover_loop())
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                link = self.active
                assert link is not None and link.task is not None
                done, _ = await asyncio.wait({link.task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    await (self.active or link).close()
                    return
                if self.active is not link:
                    continue  # rolled over to a fresh connection
                return
        finally:
            rollover.cancel()
            stopper.cancel()
            await asyncio.gather(rollover, stopper, return_exceptions=True)

    async def _rollover_loop(self) -> None:
        while True:
            link = self.active
            assert link is not None
            wait_s = (link.opened_us + self.rollover_us - self.clock.now_us()) / 1e6
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            try:
                ws = await self._open()
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("rollover of %s could not connect (%s); retrying in %.0fs", self.plan.label, exc,
                            ROLLOVER_RETRY_S)
                await asyncio.sleep(ROLLOVER_RETRY_S)
                continue
            fresh = _Link(ws, self.feed.deliver, self.clock, buffering=True)
            fresh.start()
            while True:
                assert fresh.task is not None
                if fresh.task.done():
                    break
                now = self.clock.now_us()
                if fresh.frames and now - fresh.first_frame_us >= ROLLOVER_OVERLAP_US:
                    break
                if now - fresh.opened_us >= ROLLOVER_WAIT_MAX_US:
                    break
                await asyncio.sleep(0.05)
            assert fresh.task is not None
            if fresh.task.done():
                log.warning("rollover replacement for %s closed early (%s); retrying", self.plan.label,
                            fresh.closed_reason)
                await asyncio.sleep(ROLLOVER_RETRY_S)
                continue
            old = link
            self.active = fresh       # before closing the old link, so _serve sees a hand-over, not a drop
            await old.close()         # the old reader delivered everything it received
            fresh.go_live()           # then the overlap, which the core drops as duplicates
            self.rollovers += 1
            self.feed.on_rollover(self)
            log.info("rolled %s over to a fresh connection (buffered %d frames of overlap)", self.plan.label,
                     fresh.frames)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
