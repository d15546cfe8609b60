"""The risk state machine: exact transitions, and properties that hold for any sequence of outcomes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.outcomes.risk import RiskLevel, RiskPolicy, RiskState, after_outcome, after_time, reset, severity

pytestmark = pytest.mark.unit

POLICY = RiskPolicy(shutdown_cooloff_us=1_000, recovery_quiet_us=5_000)
LOSS, WIN = -10.0, 10.0


def play(returns: list[float], state: RiskState | None = None, policy: RiskPolicy = POLICY) -> RiskState:
    state = state or RiskState()
    for i, r in enumerate(returns):
        state = after_outcome(state, r, i, policy)
    return state


def test_three_five_eight_losses_enter_cautious_risk_averse_shutdown() -> None:
    levels = []
    state = RiskState()
    for i in range(8):
        state = after_outcome(state, LOSS, i, POLICY)
        levels.append(state.level.name)
    assert levels == ["NORMAL", "NORMAL", "CAUTIOUS", "CAUTIOUS", "RISK_AVERSE", "RISK_AVERSE", "RISK_AVERSE",
                      "SHUTDOWN"]


def test_drawdown_alone_escalates() -> None:
    """Two large losses of a full-size position: 6 % then 11 % below the high-water mark."""
    policy = RiskPolicy(position_fraction=1.0)
    state = play([600.0], policy=policy)
    state = after_outcome(state, -600.0, 1, policy)
    assert (state.level, round(state.drawdown, 4)) == (RiskLevel.CAUTIOUS, 0.06)
    state = after_outcome(state, -530.0, 2, policy)
    assert state.level == RiskLevel.RISK_AVERSE and 0.10 <= state.drawdown < 0.15


def test_recovery_needs_consecutive_wins_and_goes_one_level_at_a_time() -> None:
    state = play([LOSS] * 5)
    assert state.level == RiskLevel.RISK_AVERSE
    state = play([WIN, WIN], state)
    assert state.level == RiskLevel.RISK_AVERSE
    state = play([WIN], state)
    assert (state.level, state.reason) == (RiskLevel.CAUTIOUS, "recovered: 3 consecutive wins")
    state = play([WIN, WIN, LOSS, WIN, WIN], state)
    assert state.level == RiskLevel.CAUTIOUS  # the loss broke the run of wins
    assert play([WIN], state).level == RiskLevel.NORMAL


def test_shutdown_ends_only_by_cooloff_or_reset() -> None:
    state = play([LOSS] * 8)
    assert state.level == RiskLevel.SHUTDOWN
    assert play([WIN] * 20, state).level == RiskLevel.SHUTDOWN
    assert after_time(state, state.since_us + 999, POLICY).level == RiskLevel.SHUTDOWN
    cooled = after_time(state, state.since_us + 1_000, POLICY)
    assert (cooled.level, cooled.consecutive_losses, cooled.drawdown) == (RiskLevel.RISK_AVERSE, 0, 0.0)
    manual = reset(state, 5, "alice")
    assert (manual.level, manual.reason, manual.peak_equity) == (RiskLevel.NORMAL, "reset by alice", state.equity)


returns = st.lists(st.floats(min_value=-2_000, max_value=2_000, allow_nan=False), max_size=60)


@settings(max_examples=300, deadline=None)
@given(returns)
def test_the_level_is_never_below_what_the_streak_and_drawdown_call_for(rs: list[float]) -> None:
    state = RiskState()
    for i, r in enumerate(rs):
        previous = state
        state = after_outcome(state, r, i, POLICY)
        assert state.level >= severity(state, POLICY)
        assert state.level >= previous.level - 1  # recovery is one step at a time
        if previous.level == RiskLevel.SHUTDOWN:
            assert state.level == RiskLevel.SHUTDOWN  # only time or an operator ends a shutdown
        assert state.equity > 0 and state.peak_equity >= state.equity
        assert 0.0 <= state.drawdown < 1.0


@settings(max_examples=200, deadline=None)
@given(returns, st.integers(min_value=8, max_value=20))
def test_eight_losses_in_a_row_always_shut_down(rs: list[float], n: int) -> None:
    state = play([*rs, *([-1.0] * n)])
    assert state.level == RiskLevel.SHUTDOWN


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="ascending"):
        RiskPolicy(loss_streaks=(5, 3, 8))
    with pytest.raises(ValueError, match="drawdown"):
        RiskPolicy(drawdowns=(0.1, 0.05, 0.2))


def test_a_quiet_restricted_level_steps_down_with_time() -> None:
    """CAUTIOUS allows tier A only; a model that never reaches tier A would never trade, win or recover."""
    state = play([LOSS] * 3)  # losses at event times 0, 1, 2
    assert state.level == RiskLevel.CAUTIOUS
    assert after_time(state, 2 + 4_999, POLICY).level == RiskLevel.CAUTIOUS
    calm = after_time(state, 2 + 5_000, POLICY)
    assert (calm.level, calm.consecutive_losses, calm.reason) == (RiskLevel.NORMAL, 0, "no loss for 8.33333e-05 min")
    averse = play([LOSS] * 5)
    assert after_time(averse, 4 + 5_000, POLICY).level == RiskLevel.CAUTIOUS  # one level at a time
