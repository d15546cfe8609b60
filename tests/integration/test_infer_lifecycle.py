"""Model lifecycle against real processes: the infer stage (its own process) on the Tansu broker with the chdb
warehouse as registry. Fresh install -> ensure_default; `surge models deploy` -> hot reload without a restart;
a canary served on its share of symbols; a broken canary rolled back automatically with an audit row."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer

from schemas import prediction_pb2
from streams.infer.canary import is_canary_symbol
from streams.infer.lifecycle import AUTO_ACTOR, BOOTSTRAP_ACTOR
from streams.runtime.clock import LiveClock
from streams.runtime.kafka import consumer_config
from streams.runtime.topics import Topic
from streams.storage.registry import ModelRegistry
from streams.storage.warehouse import open_warehouse_from
from tests.conftest import REPO_ROOT
from tests.integration.stack import StackProcesses, http_ok, wait_for
from tests.unit.test_infer_canary import feature_vector, toy_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SYMBOLS = [f"L{i:02d}USDT" for i in range(24)]
SHARE = 0.5


@pytest.fixture(scope="module")
def registry(infra: StackProcesses) -> Iterator[ModelRegistry]:
    wh = open_warehouse_from(infra.settings)
    yield ModelRegistry(wh, LiveClock())
    wh.close()


class Predictions:
    """A consumer of predictions.v1 that remembers every prediction by vector id."""

    def __init__(self, stack: StackProcesses) -> None:
        self.consumer = Consumer(consumer_config(stack.settings, f"lifecycle-{uuid.uuid4().hex[:8]}"))
        self.consumer.subscribe([Topic.PREDICTIONS.value])
        self.by_vector: dict[str, prediction_pb2.Prediction] = {}

    def drain(self, timeout_s: float = 0.2) -> None:
        for msg in self.consumer.consume(500, timeout_s):
            if msg.error() is None:
                p = prediction_pb2.Prediction.FromString(msg.value() or b"")
                self.by_vector[p.prediction_id.rsplit(":", 1)[0]] = p

    def round(self, stack: StackProcesses, tag: str, timeout_s: float = 15) -> dict[str, prediction_pb2.Prediction]:
        """Feed one vector per symbol and wait for all their predictions; symbol -> prediction."""
        vecs = [feature_vector(i, s, a=0.1 * (i % 7) - 0.3, b=0.2) for i, s in enumerate(SYMBOLS)]
        now_us = time.time_ns() // 1000
        for v in vecs:
            v.vector_id = f"{tag}:{v.symbol}"
            v.ts.exchange_us = now_us  # the stage's live clock refuses event times from 1970 (event_time_too_old)
        stack.send(Topic.FEATURES.value, vecs)
        ids = {v.vector_id for v in vecs}
        deadline = time.monotonic() + timeout_s
        while not ids <= set(self.by_vector) and time.monotonic() < deadline:
            self.drain()
        missing = ids - set(self.by_vector)
        assert not missing, f"no prediction for {sorted(missing)[:3]}..."
        return {self.by_vector[i].symbol: self.by_vector[i] for i in ids}


def cli(stack: StackProcesses, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "services.cli", *args], env=stack.env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def until(stack: StackProcesses, preds: Predictions, done: object, what: str, timeout_s: float = 30) -> \
        dict[str, prediction_pb2.Prediction]:
    """Feed rounds until ``done(round)`` holds; returns that round."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while True:
        n += 1
        got = preds.round(stack, f"{what}-{n}-{uuid.uuid4().hex[:6]}")
        if done(got):  # type: ignore[operator]
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def metric(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{name}\{{{labels}\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_deploy_hot_reload_canary_and_automatic_rollback(infra: StackProcesses, registry: ModelRegistry,
                                                        tmp_path: Path) -> None:
    m1 = toy_model(tmp_path / "m1", "m1")
    m2 = toy_model(tmp_path / "m2", "m2", weight=2.0)
    m3 = toy_model(tmp_path / "m3", "m3", weight=2.2)
    m4 = toy_model(tmp_path / "m4", "m4", bias=float("nan"))
    env_backup = infra.env
    infra.env = {**infra.env, "SURGE_MODEL_DIR": str(m1), "SURGE_INFER_REGISTRY_POLL_S": "0.5",
                 "SURGE_CANARY_SHARE": str(SHARE), "SURGE_CANARY_MIN_ROWS": "24", "SURGE_CANARY_WINDOW_S": "60"}
    try:
        proc = infra.start("infer", [sys.executable, "-m", "streams.infer.stage"])
    finally:
        infra.env = env_backup
    port = infra.settings.stage_port("infer")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz") or proc.poll() is not None, 60, "infer health")
    assert proc.poll() is None, infra.log_path("infer").read_text()[-3000:]
    infra.wait_stage_ready("infer")
    pid = proc.pid
    preds = Predictions(infra)

    # Fresh install: the bootstrap artifact was registered and activated by the stage itself.
    first = preds.round(infra, "boot")
    assert {p.model_version for p in first.values()} == {"m1"}
    active = registry.active()
    assert active is not None and (active.model_version, active.deployed_by) == ("m1", BOOTSTRAP_ACTOR)

    # Deploy m2 with the CLI: predictions switch without a restart.
    cli(infra, "models", "register", str(m2))
    cli(infra, "models", "deploy", "m2", "--reason", "lifecycle test")
    got = until(infra, preds, lambda r: {p.model_version for p in r.values()} == {"m2"}, "hot reload to m2")
    assert all(not p.canary for p in got.values())
    assert proc.poll() is None and proc.pid == pid

    # Canary m3 on a stable-hash share of the symbols.
    cli(infra, "models", "register", str(m3))
    cli(infra, "models", "deploy", "m3", "--canary")
    rec = registry.canary()
    assert rec is not None and rec.model_version == "m3"
    share = {s for s in SYMBOLS if is_canary_symbol(f"m3@{rec.deployed_at_us}", s, SHARE)}
    assert 0 < len(share) < len(SYMBOLS)
    got = until(infra, preds, lambda r: any(p.model_version == "m3" for p in r.values()), "canary m3")
    assert {s for s, p in got.items() if p.model_version == "m3"} == share
    assert all(p.canary == (p.model_version == "m3") for p in got.values())
    assert {p.model_version for s, p in got.items() if s not in share} == {"m2"}

    # A broken canary (NaN outputs): its rows are served by m2, and it is rolled back automatically.
    cli(infra, "models", "register", str(m4))
    cli(infra, "models", "deploy", "m4", "--canary")
    deadline = time.monotonic() + 40
    while registry.canary() is not None:
        assert time.monotonic() < deadline, "the broken canary was not rolled back"
        got = preds.round(infra, f"bad-{uuid.uuid4().hex[:6]}")
        assert all(p.model_version in {"m2", "m3"} for p in got.values())  # m3 until m4 is loaded
        time.sleep(0.2)
    audit = registry.audit_log()
    rollback = [r for r in audit if r["action"] == "rollback_canary"]
    assert [(r["actor"], r["model_version"]) for r in rollback] == [(AUTO_ACTOR, "m4")]
    assert rollback[0]["reason"].startswith("automatic canary rollback: invalid-output rate")
    got = preds.round(infra, "after")
    assert {p.model_version for p in got.values()} == {"m2"} and not any(p.canary for p in got.values())
    assert proc.poll() is None and proc.pid == pid  # never restarted

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert metric(text, "surge_infer_predictions_total", 'model_version="m3",role="canary"') >= len(share)
    assert metric(text, "surge_infer_invalid_outputs_total", 'model_version="m4",role="canary"') >= 24
    assert metric(text, "surge_infer_canary_rollbacks_total", 'model_version="m4"') == 1.0
    # The exposition sorts label names.
    assert metric(text, "surge_infer_model_serving", 'feature_version="toyfv",model_version="m2",role="active"') == 1
    assert metric(text, "surge_infer_model_serving", 'feature_version="toyfv",model_version="m4",role="canary"') == 0
    preds.consumer.close()
    assert infra.stop("infer") == 0
