"""A timing wheel (10 ms resolution) that delays orders and fills by a seeded latency distribution.

``schedule`` is O(1): an item goes into the slot of its due tick (``due_us // resolution``); ``pop_due`` walks the
slots from the last tick it reached up to ``now_us`` and returns what fell due, in (due time, insertion) order.
Items further away than the wheel's span go to an overflow list that is re-bucketed when the wheel turns past
them, so the cost stays linear in the number of scheduled events plus ticks walked.

Latency distributions (``parse_latency``): ``uniform:10-100`` (default), ``fixed:50`` or a bare ``50``,
``normal:60,15`` (mean, sd; clipped at 0), ``lognormal:40,0.5`` (median ms, sigma). Values in ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")

RESOLUTION_US = 10_000
DEFAULT_LATENCY = "uniform:10-100"


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency distribution in ms, sampled in whole wheel ticks by a seeded generator."""

    kind: str
    a: float
    b: float = 0.0

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        if self.kind == "uniform":
            return f"uniform:{self.a:g}-{self.b:g}"
        return f"{self.kind}:{self.a:g},{self.b:g}"

    def sampler(self, seed: int) -> LatencySampler:
        return LatencySampler(self, np.random.default_rng(seed))


def parse_latency(text: str) -> Latency:
    spec = text.strip().lower()
    kind, _, rest = spec.partition(":")
    if not rest:
        kind, rest = "fixed", kind
    try:
        if kind == "fixed":
            lat = Latency("fixed", float(rest))
        elif kind == "uniform":
            lo, _, hi = rest.partition("-")
            lat = Latency("uniform", float(lo), float(hi))
            if lat.b < lat.a:
                raise ValueError("upper bound below lower bound")
        elif kind in ("normal", "lognormal"):
            m, _, s = rest.partition(",")
            lat = Latency(kind, float(m), float(s))
            if lat.b < 0:
                raise ValueError("negative spread")
        else:
            raise ValueError(f"unknown distribution {kind!r}")
    except ValueError as exc:
        raise ValueError(f"latency {text!r}: {exc}; use uniform:A-B, fixed:X, normal:MEAN,SD or "
                         f"lognormal:MEDIAN,SIGMA (ms)") from None
    if not math.isfinite(lat.a) or lat.a < 0:
        raise ValueError(f"latency {text!r}: must be finite and >= 0 ms")
    return lat


class LatencySampler:
    """Draws latencies in µs, rounded up to the wheel's resolution; pre-draws in blocks for speed."""

    BLOCK = 4096

    def __init__(self, latency: Latency, rng: np.random.Generator) -> None:
        self.latency = latency
        self.rng = rng
        self._buf: list[int] = []
        self.total_us = 0
        self.count = 0

    def _draw(self) -> list[int]:
        lat, n = self.latency, self.BLOCK
        if lat.kind == "fixed":
            ms = np.full(n, lat.a)
        elif lat.kind == "uniform":
            ms = self.rng.uniform(lat.a, lat.b, n) if lat.b > lat.a else np.full(n, lat.a)
        elif lat.kind == "normal":
            ms = np.clip(self.rng.normal(lat.a, lat.b, n), 0.0, None)
        else:
            ms = lat.a * np.exp(self.rng.normal(0.0, lat.b, n))
        ticks = np.ceil(ms * 1000.0 / RESOLUTION_US).astype(np.int64)
        return list((ticks * RESOLUTION_US)[::-1].tolist())

    def sample_us(self) -> int:
        if not self._buf:
            self._buf = self._draw()
        value = self._buf.pop()
        self.total_us += value
        self.count += 1
        return int(value)


class TimingWheel(Generic[T]):
    """Items due at a time (µs), released by ``pop_due(now_us)`` in due order; see the module doc."""

    def __init__(self, slots: int = 4096, resolution_us: int = RESOLUTION_US) -> None:
        self.resolution_us = resolution_us
        self.n = slots
        self.slots: list[list[tuple[int, int, T]]] = [[] for _ in range(slots)]
        self.overflow: list[tuple[int, int, T]] = []
        self.tick: int | None = None     # the next tick not yet walked
        self.pending = 0
        self._seq = 0

    def __len__(self) -> int:
        return self.pending

    def schedule(self, due_us: int, item: T) -> None:
        t = -(-due_us // self.resolution_us)  # due at the end of its tick: never released early
        if self.tick is None:
            self.tick = t
        t = max(t, self.tick)
        self._seq += 1
        entry = (due_us, self._seq, item)
        if t - self.tick >= self.n:
            self.overflow.append(entry)
        else:
            self.slots[t % self.n].append(entry)
        self.pending += 1

    def next_due_us(self) -> int | None:
        """The earliest due time held (O(slots) worst case; used only when the caller is idle)."""
        if not self.pending or self.tick is None:
            return None
        best: int | None = None
        for k in range(self.n):
            slot = self.slots[(self.tick + k) % self.n]
            if slot:
                best = min(e[0] for e in slot)
                break
        if self.overflow:
            low = min(e[0] for e in self.overflow)
            best = low if best is None else min(best, low)
        return best

    def pop_due(self, now_us: int) -> list[T]:
        if not self.pending or self.tick is None:
            return []
        last = now_us // self.resolution_us
        out: list[tuple[int, int, T]] = []
        if last - self.tick >= self.n:  # a long jump: everything held is due or re-bucketed
            for slot in self.slots:
                out.extend(slot)
                slot.clear()
            out.extend(self.overflow)
            self.overflow = []
            keep = [e for e in out if e[0] > now_us]
            out = [e for e in out if e[0] <= now_us]
            self.tick = last + 1
            self.pending -= len(out) + len(keep)
            for due, _, item in sorted(keep, key=lambda e: (e[0], e[1])):
                self.schedule(due, item)
        else:
            while True:
                slot = self.slots[self.tick % self.n]
                if slot:
                    due_now = [e for e in slot if e[0] <= now_us]
                    if len(due_now) == len(slot):
                        out.extend(slot)
                        slot.clear()
                    else:  # the current tick, partly in the future
                        out.extend(due_now)
                        slot[:] = [e for e in slot if e[0] > now_us]
                        break
                if self.tick >= last:
                    break  # items scheduled overdue sit in the current tick: it is checked again next time
                self.tick += 1
                if self.overflow and self.tick % self.n == 0:
                    self._rebucket()
            self.pending -= len(out)
        out.sort(key=lambda e: (e[0], e[1]))
        return [e[2] for e in out]

    def _rebucket(self) -> None:
        assert self.tick is not None
        held, self.overflow = self.overflow, []
        for entry in held:
            t = max(-(-entry[0] // self.resolution_us), self.tick)
            if t - self.tick >= self.n:
                self.overflow.append(entry)
            else:
                self.slots[t % self.n].append(entry)
