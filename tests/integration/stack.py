"""A real embedded stack for integration tests: Tansu broker, chdb warehouse service, redis-server, stages.

Every service runs as its own OS process on free ports, exactly as `surge run` starts them, so the tests
exercise the real wire protocols.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer
from google.protobuf.message import Message

from services.stack.binaries import redis_command, tansu_command
from services.stack.supervisor import port_open
from streams.infer.artifacts import shipped
from streams.runtime.instrument import key_of
from streams.runtime.kafka import ensure_topics, produce_all, producer_config
from streams.runtime.settings import Settings
from tests.conftest import REPO_ROOT, ephemeral_port_range, free_port


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1,
             context: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it holds; on timeout the error carries ``context()`` (e.g. log tails), so a failure
    on CI says what the processes were doing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    detail = f"\n{context()}" if context is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{detail}")


def kill_run(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a `surge run` left running by a failed test, and its children first: once the supervisor is gone
    they are re-parented and can no longer be found."""
    if proc.poll() is None:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait(10)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class StackProcesses:
    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            for k in [k for k in os.environ if k.startswith("SURGE_")]:
                del os.environ[k]
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("SURGE_")})
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as out:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                    stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def start_stage(self, stage: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env_backup = self.env
        if extra_env:
            self.env = {**self.env, **extra_env}
        try:
            proc = self.start(stage, [sys.executable, "-m", "services.cli", "stage", stage])
        finally:
            self.env = env_backup
        port = self.settings.stage_port(stage)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz") or proc.poll() is not None, 60,
                 f"{stage} health")
        assert proc.poll() is None, f"{stage} died at start:\n{self.log_path(stage).read_text()[-3000:]}"
        return proc

    def wait_stage_ready(self, stage: str, timeout_s: float = 30) -> None:
        port = self.settings.stage_port(stage)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout_s, f"{stage} partition assignment")

    def start_warehouse(self) -> None:
        """The chdb warehouse service on the stack's folder and port (again, after a stop: same folder)."""
        s = self.settings
        self.start("warehouse", [sys.executable, "-m", "services.cli", "warehouse",
                                 "--path", str(self.root / "data" / "clickhouse"), "--port", str(s.warehouse_port)])
        wait_for(lambda: http_ok(f"http://127.0.0.1:{s.warehouse_port}/health"), 60, "warehouse health")

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str, timeout_s: float = 20) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name, timeout_s=10)

    def producer(self) -> Producer:
        return Producer(producer_config(self.settings, "test-producer"))

    def produce(self, records: list[tuple[str, str, bytes]]) -> None:
        produce_all(self.producer(), [(t, k, v, None) for t, k, v in records])

    def send(self, topic: str, messages: Sequence[Message]) -> None:
        """Produce bus messages keyed by their instrument, as every stage keys them."""
        self.produce([(topic, key_of(m), m.SerializeToString()) for m in messages])  # type: ignore[arg-type]

    def warehouse_rows(self, sql: str) -> list[dict[str, Any]]:
        from streams.storage.warehouse import open_warehouse_from

        wh = open_warehouse_from(self.settings)
        try:
            return wh.query(sql)
        finally:
            wh.close()


def stack_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    base = free_port()
    # Stage ports are base..base+5, the jobs worker's base+10, the notifier's base+20: the whole range is free.
    span = 21
    while base + span >= ephemeral_port_range()[0] or any(port_open(base + i) for i in range(span)):
        base = free_port()

    def outside_the_range() -> int:
        port = free_port()
        while base <= port < base + span:
            port = free_port()
        return port

    env.update({
        "SURGE_BROKER_PORT": str(outside_the_range()),
        "SURGE_WAREHOUSE_PORT": str(outside_the_range()),
        "SURGE_REDIS_PORT": str(outside_the_range()),
        "SURGE_GATEWAY_PORT": str(outside_the_range()),
        "SURGE_METRICS_BASE_PORT": str(base),
        "SURGE_DATA_DIR": str(root / "data"),
        "SURGE_PARTITIONS": "3",
        "SURGE_WAREHOUSE_TOKEN": secrets.token_urlsafe(32),  # the warehouse service refuses clients without it
        # The simulator's model: these tests exercise the pipeline on simulated or captured ticks with tick-level
        # features, and count signals; the real-data default (btcusdt-klines) rarely acts, by design.
        "SURGE_MODEL_DIR": str(shipped("simulator")),
        # No scheduled broker recycle under a test of `surge run`: it would empty the store mid-test (the
        # recycle has its own tests; bench/soak.py runs the default).
        "SURGE_BROKER_RECYCLE_EVERY_S": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def start_infrastructure(root: Path, **extra_env: str) -> Iterator[StackProcesses]:
    """Broker, warehouse and redis as real processes; yields, then stops them all."""
    stack = StackProcesses(root=root, env=stack_env(root, **extra_env))
    s = stack.settings
    try:
        stack.start("broker", tansu_command(s.broker_port))
        wait_for(lambda: port_open(s.broker_port), 20, "broker port")
        stack.start_warehouse()
        stack.start("redis", redis_command(s.redis_port, root / "data" / "redis"))
        wait_for(lambda: port_open(s.redis_port), 20, "redis port")
        ensure_topics(s)
        yield stack
    finally:
        stack.stop_all()
