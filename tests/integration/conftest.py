"""Integration fixtures: a fresh real infrastructure (broker, chdb warehouse, redis) per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.stack import StackProcesses, start_infrastructure

# Decision thresholds that make every test prediction actionable, so counts are exact.
ALWAYS_ACT = {
    "SURGE_COOLDOWN_S": "0",
    "SURGE_MIN_EDGE": "0",
    "SURGE_TIER_A_UTILITY_BPS": "-100000",
    "SURGE_TIER_B_UTILITY_BPS": "-100000",
}


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcesses]:
    root: Path = tmp_path_factory.mktemp("stack")
    yield from start_infrastructure(root, **ALWAYS_ACT)
