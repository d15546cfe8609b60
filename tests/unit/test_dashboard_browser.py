"""The live dashboard in a real headless Chromium (Debian ``chromium``; skipped when it is absent), driven over the
Chrome DevTools protocol (``websockets``), against a gateway on a real port with chdb and Redis behind it: the
page loads, a signal written by the sink reaches it through SSE and renders as a card, the panels fill, no
script error is raised, and a screenshot is kept as a test artifact (``.surge/test-artifacts/dashboard.png``)."""

from __future__ import annotations

import base64
import itertools
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import uvicorn
from websockets.sync.client import ClientConnection, connect

from schemas import SCHEMA_VERSION, common_pb2, outcome_pb2, signal_pb2
from services.gateway.app import create_app
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.runtime.settings import Settings
from streams.sink import stage
from streams.sink.stage import SinkRuntime
from streams.storage.cache import RISK_KEY, open_redis
from streams.storage.warehouse import apply_ddl, open_warehouse
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.unit

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
ARTIFACTS = REPO_ROOT / ".surge" / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1400,1000"]


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class DevTools:
    """A minimal CDP client: one page target, commands answered by id, events kept for inspection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(orjson.dumps({"id": msg_id, "method": method, "params": params}).decode())
        while True:
            msg = orjson.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, SinkRuntime, redis.Redis]]:
    folder = tmp_path / "ch"
    wh = open_warehouse(f"chdb://{folder}", "surge")
    apply_ddl(wh, "surge")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    port = free_port()
    app = create_app(Settings(clickhouse_url=f"chdb://{folder}", redis_url=redis_url, gateway_rate_per_min=1e6))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(base), 20, "the gateway")
    try:
        yield base, SinkRuntime(warehouse=wh, redis=open_redis(redis_url)), client
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()
        wh.close()


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=1).status_code in (200, 503)
    except httpx.HTTPError:
        return False


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; `make system-deps` does it)")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, "chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        targets = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                                    if t.get("type") == "page"], 10, "a page target")
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            tools = DevTools(ws)
            tools.call("Runtime.enable")
            tools.call("Page.enable")
            yield tools
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def signal(i: int, symbol: str, decision: int) -> signal_pb2.Signal:
    now = time.time_ns() // 1000
    return signal_pb2.Signal(
        schema_version=SCHEMA_VERSION, signal_id=f"{symbol}:{i}", venue=common_pb2.BINANCE_SPOT, symbol=symbol,
        decision=decision, tier=signal_pb2.TIER_A, p_up=0.81, horizon_min=10,  # type: ignore[arg-type]
        expected_return_bps=9.0, estimated_cost_bps=4.0, net_utility_bps=5.0, regime="vol_low_depth_thick",
        model_version="m1", price=100.0, ts=common_pb2.Timestamps(exchange_us=now - 3_000, decision_us=now))


CARDS = "[...document.querySelectorAll('[data-testid=signal-card]')].map(c => c.innerText)"


def test_the_dashboard_renders_signal_cards_arriving_through_sse(
    gateway: tuple[str, SinkRuntime, redis.Redis], browser: DevTools
) -> None:
    base, sink, client = gateway
    stage.process([InRecord(value=signal(1, "ETHUSDT", signal_pb2.SHORT), key="ETHUSDT"),
                   InRecord(value=outcome_pb2.Outcome(
                       schema_version=SCHEMA_VERSION, outcome_id="ETHUSDT:1", signal_id="ETHUSDT:1",
                       venue=common_pb2.BINANCE_SPOT, symbol="ETHUSDT", decision=signal_pb2.SHORT,
                       tier=signal_pb2.TIER_A, horizon_min=10, label=outcome_pb2.HIT_TARGET,
                       exit_us=time.time_ns() // 1000), key="ETHUSDT")], sink, ManualClock(time.time_ns() // 1000))
    stage.flush(sink)
    client.set(RISK_KEY, orjson.dumps({"level": "CAUTIOUS", "consecutive_losses": 3, "consecutive_wins": 0,
                                       "equity": 9_650.5, "peak_equity": 10_000.0, "drawdown": 0.035,
                                       "since_us": 1, "reason": "3 losses in a row", "outcomes": 12}))
    browser.call("Page.navigate", url=base + "/")
    wait_for(lambda: browser.evaluate("document.readyState") == "complete", 20, "the page")
    # the snapshot: the signal stored before the page opened
    wait_for(lambda: any("ETHUSDT" in c for c in browser.evaluate(CARDS) or []), 20, "the snapshot's card")
    wait_for(lambda: browser.evaluate("document.getElementById('sse').textContent") == "(live)", 10, "SSE")

    # a new signal, published by the sink after the page subscribed, arrives through SSE
    stage.process([InRecord(value=signal(2, "BTCUSDT", signal_pb2.LONG), key="BTCUSDT")], sink,
                  ManualClock(time.time_ns() // 1000))
    stage.flush(sink)
    cards = wait_for(lambda: [c for c in browser.evaluate(CARDS) or [] if "BTCUSDT" in c], 20, "the SSE card")
    assert "LONG" in cards[0] and "0.810" in cards[0] and "A" in cards[0]
    risk = wait_for(lambda: browser.evaluate("document.getElementById('risk').innerText") or "", 10, "risk")
    wait_for(lambda: "CAUTIOUS" in (browser.evaluate("document.getElementById('risk').innerText") or ""), 10,
             f"the risk state, got {risk!r}")
    assert "9650.50" in browser.evaluate("document.getElementById('risk').innerText")
    wait_for(lambda: "ECE" in (browser.evaluate("document.getElementById('ece').textContent") or ""), 20,
             "the calibration panel")
    wait_for(lambda: browser.evaluate("document.querySelectorAll('#rows tr').length") == 2, 10, "the table")
    errors = [e for e in browser.events if e.get("method") in ("Runtime.exceptionThrown",)]
    assert not errors, errors

    shot = browser.call("Page.captureScreenshot", format="png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
