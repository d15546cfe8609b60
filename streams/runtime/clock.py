"""One clock interface for live, replay, backtest and tests: logic never reads the wall clock itself."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_us(self) -> int:
        """Current time in Unix epoch microseconds."""
        ...


class LiveClock:
    """Wall-clock time; the only place the system clock is read."""

    def now_us(self) -> int:
        return time.time_ns() // 1000


class ManualClock:
    """A clock that only moves when told to: for unit tests, replay and backtests."""

    def __init__(self, start_us: int = 0) -> None:
        self._now_us = start_us

    def now_us(self) -> int:
        return self._now_us

    def advance_us(self, delta_us: int) -> None:
        if delta_us < 0:
            raise ValueError("a clock does not go backwards")
        self._now_us += delta_us

    def set_us(self, now_us: int) -> None:
        if now_us < self._now_us:
            raise ValueError("a clock does not go backwards")
        self._now_us = now_us
