"""The USD-M open-interest poll schedule: which symbols' REST ``openInterest`` is due, within the weight budget.

Each symbol is polled every ``interval_s`` (``SURGE_OPEN_INTEREST_INTERVAL_S``), the symbols staggered evenly over
the interval so the polls never come in one burst. The polls of all symbols together plan for at most
``PLAN_BUDGET_SHARE`` of ingest's REST weight budget (``SURGE_REST_WEIGHT_SHARE`` of Binance's per-minute limit):
with more symbols than fit, the interval is stretched. A poll only goes out while ingest's spending in the last
minute, the polls of this round included, stays within ``HEADROOM_SHARE`` of the budget (what book audits leave
to snapshots and backfills too); otherwise it is put off by a quarter interval and counted (``deferred``).
Spending itself is the REST client's (``BinanceRest.open_interest`` spends on the shared ``WeightBudget``).

Pure apart from the clock it is given, so a test drives it with a manual clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.runtime.clock import Clock
from streams.venues.binance.rest import WeightBudget

PLAN_BUDGET_SHARE = 0.1      # the polls of every symbol plan for at most this share of ingest's REST weight budget
HEADROOM_SHARE = 0.5         # a poll goes out only while ingest's spending stays within this share of the budget


class OpenInterestSchedule:
    """When each followed symbol's open interest is due (µs on ``clock``)."""

    def __init__(self, symbols: Iterable[str], interval_s: float, weight: int, budget: WeightBudget,
                 clock: Clock) -> None:
        if interval_s <= 0:
            raise ValueError("open-interest polling needs an interval > 0")
        self.setting_s = interval_s
        self.weight = weight
        self.budget = budget
        self.clock = clock
        self.due: dict[str, int] = {}
        self.deferred = 0                  # polls put off because the budget had no headroom
        self.polls = 0                     # polls handed out
        self.set_symbols(symbols)

    def interval_us(self, n_symbols: int | None = None) -> int:
        """The poll interval per symbol: the setting, stretched when ``n_symbols`` polls per interval would need
        more than ``PLAN_BUDGET_SHARE`` of the budget per minute."""
        n = len(self.due) if n_symbols is None else n_symbols
        per_minute = self.budget.per_minute * PLAN_BUDGET_SHARE
        needed_s = n * self.weight * 60.0 / per_minute
        return round(max(self.setting_s, needed_s) * 1e6)

    def set_symbols(self, symbols: Iterable[str]) -> None:
        """Follow exactly ``symbols``: the ones already scheduled keep their turn, new ones are staggered over one
        interval from now."""
        wanted = list(dict.fromkeys(symbols))
        kept = {s: at for s, at in self.due.items() if s in wanted}
        new = [s for s in wanted if s not in kept]
        interval = self.interval_us(len(wanted))
        now = self.clock.now_us()
        for i, symbol in enumerate(new):
            kept[symbol] = now + interval * (i + 1) // len(new)
        self.due = {s: kept[s] for s in wanted}

    def take_due(self) -> list[str]:
        """The symbols to poll now, in turn order, each moved to its next turn (or put off without headroom)."""
        now = self.clock.now_us()
        interval = self.interval_us()
        chosen: list[str] = []
        for symbol, at in sorted(self.due.items(), key=lambda kv: kv[1]):
            if at > now:
                break
            if not self.budget.headroom(self.weight * (len(chosen) + 1), HEADROOM_SHARE):
                self.deferred += 1
                self.due[symbol] = now + interval // 4
                continue
            chosen.append(symbol)
            following = at + interval
            self.due[symbol] = following if following > now else now + interval
        self.polls += len(chosen)
        return chosen
