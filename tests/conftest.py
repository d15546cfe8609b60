"""Shared fixtures: paths to the real Binance data in ../shared, free ports."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "binance"


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port *below* the kernel's ephemeral range.

    A port the OS hands out with bind(0) is an ephemeral one: once a test kills the process listening on it, any
    new outgoing connection may take it as its local port, and the restarted process cannot bind it again.
    """
    low, _ = ephemeral_port_range()
    candidates = list(range(max(1024, low - 20_000), low))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real Binance data not found at {SHARED_DATA} (../shared is absent on this machine)")
    return SHARED_DATA
