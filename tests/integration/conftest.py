"""Integration fixtures: a fresh real infrastructure (broker, chdb warehouse, redis) per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.stack import StackProcesses, start_infrastructure

# Decision thresholds that make every test prediction actionable, so counts are exact.
ALWAYS_ACT = {
    "SURGE_TAU_A": "0",
    "SURGE_KAPPA_A": "-1000000",
    "SURGE_COOLDOWN_LOW_VOL_S": "0",
    "SURGE_COOLDOWN_MEDIUM_VOL_S": "0",
    "SURGE_COOLDOWN_HIGH_VOL_S": "0",
    "SURGE_DECISION_HORIZONS": "5",
    # Test predictions are stamped "now"; a loaded CI box must not turn them into paused WAITs.
    "SURGE_DECISION_MAX_EXCHANGE_LAG_S": "0",
    # Acting on everything loses money after fees, so the paper book's risk state machine would soon shut the
    # signals down (as it should); these tests count signals, so its thresholds are put out of reach.
    "SURGE_RISK_LOSS_STREAKS": "1000000,1000000,1000000",
    "SURGE_RISK_DRAWDOWNS": "0.97,0.98,0.99",
}


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcesses]:
    root: Path = tmp_path_factory.mktemp("stack")
    yield from start_infrastructure(root, **ALWAYS_ACT)
