"""The risk state machine of the paper book: NORMAL -> CAUTIOUS -> RISK_AVERSE -> SHUTDOWN.

Driven by outcomes (each one's net return in bps). Pure and immutable: ``after_outcome``, ``after_time`` and
``reset`` return a new ``RiskState``; the outcomes stage publishes it and the decision stage obeys it.

* **Escalation** is immediate: the level is at least the severity of the consecutive-loss streak (3 / 5 / 8 by
  default) and of the paper book's drawdown from its high-water mark (5 / 10 / 15 %).
* **Recovery** is slow: below SHUTDOWN, ``recovery_wins`` consecutive winning outcomes step the level down by
  one, and never below what the current streak and drawdown call for. A restricted level that sees no new loss
  for ``recovery_quiet_us`` also steps down one level, with the streak and drawdown counted afresh: CAUTIOUS
  allows tier A only, and a model that rarely reaches tier A would otherwise never trade again, so never win,
  so never recover.
* **SHUTDOWN** is left only by an operator ``reset`` (back to NORMAL with a new high-water mark) or after
  ``shutdown_cooloff_us`` (to RISK_AVERSE, with a new high-water mark, so trading restarts cautiously).

An outcome with a negative net return is a loss; zero or positive is a win.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any


class RiskLevel(IntEnum):
    NORMAL = 0
    CAUTIOUS = 1
    RISK_AVERSE = 2
    SHUTDOWN = 3


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    loss_streaks: tuple[int, int, int] = (3, 5, 8)
    drawdowns: tuple[float, float, float] = (0.05, 0.10, 0.15)
    recovery_wins: int = 3
    recovery_quiet_us: int = 3_600_000_000       # CAUTIOUS / RISK_AVERSE without a new loss for this long: one down
    shutdown_cooloff_us: int = 3_600_000_000
    # Paper notional of one position as a fraction of the book: equity *= 1 + fraction x net_bps / 1e4.
    position_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.loss_streaks[0] <= self.loss_streaks[1] <= self.loss_streaks[2]):
            raise ValueError(f"loss streak thresholds must be positive and ascending, got {self.loss_streaks}")
        if not (0 < self.drawdowns[0] <= self.drawdowns[1] <= self.drawdowns[2] < 1):
            raise ValueError(f"drawdown thresholds must be ascending within (0, 1), got {self.drawdowns}")
        if self.recovery_wins < 1 or self.shutdown_cooloff_us < 0 or not 0 < self.position_fraction <= 1:
            raise ValueError("recovery_wins >= 1, shutdown_cooloff_us >= 0 and position_fraction in (0, 1]")


@dataclass(frozen=True, slots=True)
class RiskState:
    level: RiskLevel = RiskLevel.NORMAL
    consecutive_losses: int = 0
    consecutive_wins: int = 0
    equity: float = 1.0
    peak_equity: float = 1.0
    since_us: int = 0          # when the current level was entered
    last_loss_us: int = 0      # event time of the latest losing outcome
    reason: str = "start"
    outcomes: int = 0

    @property
    def drawdown(self) -> float:
        return 0.0 if self.peak_equity <= 0 else max(0.0, 1.0 - self.equity / self.peak_equity)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level.name, "consecutive_losses": self.consecutive_losses,
                "consecutive_wins": self.consecutive_wins, "equity": self.equity, "peak_equity": self.peak_equity,
                "drawdown": self.drawdown, "since_us": self.since_us, "reason": self.reason,
                "outcomes": self.outcomes, "last_loss_us": self.last_loss_us}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RiskState:
        return cls(level=RiskLevel[doc["level"]], consecutive_losses=int(doc["consecutive_losses"]),
                   consecutive_wins=int(doc["consecutive_wins"]), equity=float(doc["equity"]),
                   peak_equity=float(doc["peak_equity"]), since_us=int(doc["since_us"]), reason=str(doc["reason"]),
                   outcomes=int(doc.get("outcomes", 0)), last_loss_us=int(doc.get("last_loss_us", 0)))


def severity(state: RiskState, policy: RiskPolicy) -> RiskLevel:
    """The level the current loss streak and drawdown call for."""
    by_losses = sum(state.consecutive_losses >= n for n in policy.loss_streaks)
    by_drawdown = sum(state.drawdown >= d for d in policy.drawdowns)
    return RiskLevel(max(by_losses, by_drawdown))


def after_outcome(state: RiskState, net_return_bps: float, at_us: int, policy: RiskPolicy) -> RiskState:
    """The state after one resolved position with ``net_return_bps`` (in its own direction, after costs)."""
    step = max(-1.0, policy.position_fraction * net_return_bps / 1e4)  # a position cannot lose more than itself
    equity = state.equity * (1.0 + step)
    loss = net_return_bps < 0
    updated = replace(state, equity=equity, peak_equity=max(state.peak_equity, equity),
                      last_loss_us=at_us if loss else state.last_loss_us,
                      consecutive_losses=state.consecutive_losses + 1 if loss else 0,
                      consecutive_wins=0 if loss else state.consecutive_wins + 1, outcomes=state.outcomes + 1)
    target = severity(updated, policy)
    if target > updated.level:
        why = (f"{updated.consecutive_losses} consecutive losses, drawdown {updated.drawdown:.2%}")
        return replace(updated, level=target, since_us=at_us, reason=f"escalated: {why}", consecutive_wins=0)
    if (updated.level not in (RiskLevel.NORMAL, RiskLevel.SHUTDOWN) and updated.consecutive_wins >= policy.recovery_wins
            and target < updated.level):
        down = RiskLevel(updated.level - 1)
        return replace(updated, level=down, since_us=at_us, consecutive_wins=0,
                       reason=f"recovered: {policy.recovery_wins} consecutive wins")
    return updated


def after_time(state: RiskState, now_us: int, policy: RiskPolicy) -> RiskState:
    """SHUTDOWN ends after its cool-off: RISK_AVERSE, with the drawdown and the loss streak counted afresh; a quiet
    CAUTIOUS or RISK_AVERSE (no loss for ``recovery_quiet_us``) steps down one level the same way."""
    if state.level == RiskLevel.SHUTDOWN and now_us - state.since_us >= policy.shutdown_cooloff_us:
        return replace(state, level=RiskLevel.RISK_AVERSE, since_us=now_us, peak_equity=state.equity,
                       consecutive_losses=0, consecutive_wins=0, reason="shutdown cool-off ended")
    if (state.level in (RiskLevel.CAUTIOUS, RiskLevel.RISK_AVERSE)
            and now_us - max(state.since_us, state.last_loss_us) >= policy.recovery_quiet_us):
        return replace(state, level=RiskLevel(state.level - 1), since_us=now_us, peak_equity=state.equity,
                       consecutive_losses=0, consecutive_wins=0,
                       reason=f"no loss for {policy.recovery_quiet_us / 60e6:g} min")
    return state


def reset(state: RiskState, now_us: int, actor: str) -> RiskState:
    """An operator's reset: NORMAL, with the current equity as the new high-water mark."""
    return replace(state, level=RiskLevel.NORMAL, since_us=now_us, peak_equity=state.equity, consecutive_losses=0,
                   consecutive_wins=0, reason=f"reset by {actor}")
