"""`surge run` end to end: simulator -> five stage processes over Tansu -> signals.v1, ClickHouse, gateway."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from services.tail import tail
from streams.runtime.topics import Topic
from tests.conftest import REPO_ROOT
from tests.integration.conftest import ALWAYS_ACT
from tests.integration.stack import StackProcesses, kill_run, stack_env, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def surge_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], StackProcesses]]:
    root = tmp_path_factory.mktemp("run")
    # The lag-triggered recycle is off: a slow CI box must not recycle the broker under these tests (the exit-
    # triggered one, which test_a_lost_broker... needs, is not a setting). 500 events/s is plenty for signals.
    env = stack_env(root, SURGE_SOURCE="auto", SURGE_SIM_EVENTS_PER_S="500", SURGE_SYMBOLS="BTCUSDT,ETHUSDT,SOLUSDT",
                    SURGE_BROKER_RECYCLE_LAG_S="0",
                    **{**ALWAYS_ACT, "SURGE_COOLDOWN_LOW_VOL_S": "0.5", "SURGE_COOLDOWN_MEDIUM_VOL_S": "0.5",
                       "SURGE_COOLDOWN_HIGH_VOL_S": "0.5"},
                    # auto must fall back to the simulator: point "Binance" at a closed local port.
                    SURGE_BINANCE_REST_URL="http://127.0.0.1:9")
    handle = StackProcesses(root=root, env=env)
    log = (root / "surge-run.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc, handle
    finally:
        kill_run(proc)
        log.close()


def run_log(handle: StackProcesses) -> str:
    return (handle.root / "surge-run.log").read_text(errors="replace")


def diagnostics(handle: StackProcesses) -> str:
    """The supervisor's log tail and each child's last lines, for a failure message."""
    parts = [f"--- surge run (tail) ---\n{run_log(handle)[-3000:]}"]
    for path in sorted((handle.settings.data_dir / "logs").glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-8:]
        parts.append(f"--- {path.name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
    return "\n".join(parts)


RunHandle = tuple[subprocess.Popen[bytes], StackProcesses]


def test_signals_flow_to_topic_clickhouse_and_gateway(surge_run: RunHandle) -> None:
    proc, handle = surge_run
    s = handle.settings
    gateway = f"http://127.0.0.1:{s.gateway_port}"
    wait_for(lambda: "surge is running" in run_log(handle) or proc.poll() is not None, 120, "surge run ready")
    assert proc.poll() is None, run_log(handle)[-4000:]
    assert "SIMULATOR" in run_log(handle)  # auto said loudly which source it chose

    wait_for(lambda: len(httpx.get(f"{gateway}/signals", timeout=2).json()) > 0, 120, "signals at the gateway",
             interval_s=0.5, context=lambda: diagnostics(handle))
    signals = list(tail(s, Topic.SIGNALS, from_beginning=True, idle_timeout_s=2.0, max_messages=50))
    assert signals, "no signal on signals.v1"
    first = signals[0].value
    assert first is not None
    assert first["decision"] in {"LONG", "SHORT", "WAIT"}
    assert first["model_version"] and first["feature_version"] and first["cost_model_version"]
    ts = first["ts"]
    assert int(ts["exchange_us"]) <= int(ts["ingest_us"]) <= int(ts["infer_us"]) <= int(ts["decision_us"])
    assert "SIMULATED" in first["quality_flags"]

    # W3C trace context: every signal's trace starts at the ingest span of some tick batch.
    traceparent = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
    signal_traces = set()
    for rec in signals:
        match = traceparent.match(rec.headers.get("traceparent", ""))
        assert match, rec.headers
        signal_traces.add(match.group(1))
    # ticks.v1 never goes idle while ingest runs, so read it until every signal's trace is found (or 60 s).
    tick_traces: set[str] = set()
    deadline = time.monotonic() + 60
    for rec in tail(s, Topic.TICKS, from_beginning=True, idle_timeout_s=5.0):
        if match := traceparent.match(rec.headers.get("traceparent", "")):
            tick_traces.add(match.group(1))
        if signal_traces <= tick_traces or time.monotonic() > deadline:
            break
    assert signal_traces <= tick_traces, f"{len(signal_traces - tick_traces)} signal trace(s) not started by ingest"

    health = httpx.get(f"{gateway}/health", timeout=5)
    assert health.status_code == 200
    history = httpx.get(f"{gateway}/signals/history", params={"limit": 1000}, timeout=5).json()
    assert len(history) > 0
    topic_ids = {r.value["signal_id"] for r in signals if r.value}
    wait_for(lambda: topic_ids <= {h["signal_id"] for h in httpx.get(
        f"{gateway}/signals/history", params={"limit": 100000}, timeout=5).json()}, 60,
        "every tailed signal stored in ClickHouse", interval_s=1)


def test_cli_tail_and_topics(surge_run: tuple[subprocess.Popen[bytes], StackProcesses]) -> None:
    _, handle = surge_run
    cli = [sys.executable, "-m", "services.cli"]
    out = subprocess.run([*cli, "tail", "signals.v1", "--json", "--from-beginning", "--idle-timeout", "3",
                          "--max", "5"], env=handle.env, cwd=REPO_ROOT, capture_output=True, timeout=60, check=True)
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 5
    for line in lines:
        doc = orjson.loads(line)
        assert doc["signal_id"] and doc["symbol"] in {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
        assert "exchange_us" in doc["ts"]  # proto field names, not camelCase
    meta = subprocess.run([*cli, "tail", "ticks.v1", "--json", "--meta", "--from-beginning", "--max", "1"],
                          env=handle.env, cwd=REPO_ROOT, capture_output=True, timeout=60, check=True)
    envelope = orjson.loads(meta.stdout)
    assert envelope["topic"] == "ticks.v1" and envelope["value"]["batch_id"]
    bad = subprocess.run([*cli, "tail", "nope.v1"], env=handle.env, cwd=REPO_ROOT, capture_output=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and b"unknown topic" in bad.stderr
    topics = subprocess.run([*cli, "topics"], env=handle.env, cwd=REPO_ROOT, capture_output=True, timeout=60,
                            check=True).stdout.decode()
    for name in ("ticks.v1", "features.v1", "predictions.v1", "signals.v1", "outcomes.v1", "dlq.v1"):
        assert re.search(rf"{re.escape(name)}\s+│\s+3\s", topics), topics  # exists, 3 partitions, not re-created


def test_a_backtest_job_runs_on_the_supervised_worker_and_shap_reaches_the_reports(
        surge_run: RunHandle, shared_data: Path) -> None:
    """The jobs worker is one of `surge run`'s children: a backtest job queued through the real gateway (an admin
    token made by `surge tokens create`) on the first week of a real month of klines ends succeeded, and its run is in
    backtest_runs. Meanwhile the infer stage's SHAP worker has explained live predictions."""
    proc, handle = surge_run
    gateway = f"http://127.0.0.1:{handle.settings.gateway_port}"
    # Run on its own (not after the flow test), the stack may still be starting: tokens live in the warehouse.
    wait_for(lambda: _port_up(handle.settings.gateway_port) and httpx.get(f"{gateway}/health", timeout=5)
             .status_code == 200, 120, "the gateway", interval_s=1, context=lambda: diagnostics(handle))
    made = subprocess.run([sys.executable, "-m", "services.cli", "tokens", "create", "--name", "e2e", "--scope",
                           "admin"], env=handle.env, cwd=REPO_ROOT, capture_output=True, timeout=60, check=True)
    admin = {"Authorization": f"Bearer {made.stdout.decode().strip()}"}
    klines = shared_data / "klines_1m" / "BTCUSDT-1m-2026-05.zip"
    first_week = {"start_us": 1_777_593_600_000_000, "end_us": 1_778_198_400_000_000}  # 1-8 May 2026 UTC
    resp = httpx.post(f"{gateway}/jobs/backtest", json={"data": [str(klines)], "mode": "neutral", **first_week},
                      headers=admin, timeout=10)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]

    def ended() -> bool:
        return httpx.get(f"{gateway}/jobs/{job_id}", timeout=5).json()["state"] in ("succeeded", "failed")

    wait_for(ended, 300, "the backtest job to end", interval_s=1, context=lambda: diagnostics(handle))
    job = httpx.get(f"{gateway}/jobs/{job_id}", timeout=5).json()
    assert job["state"] == "succeeded", job["error"]
    assert httpx.get(f"{gateway}/reports/backtest/{job['result']['run_id']}", timeout=10).status_code == 200
    wait_for(lambda: any(r["method"] == "shap" for r in httpx.get(
        f"{gateway}/reports/attribution", params={"minutes": 60, "method": "shap"}, timeout=10).json()), 60,
        "SHAP rows from the infer stage", interval_s=1, context=lambda: diagnostics(handle))
    assert proc.poll() is None


def test_a_killed_stage_is_restarted_and_logged(surge_run: tuple[subprocess.Popen[bytes], StackProcesses]) -> None:
    proc, handle = surge_run
    assert proc.poll() is None
    match = re.search(r"started features \(pid (\d+)\)", run_log(handle))
    assert match, run_log(handle)[-3000:]
    psutil.Process(int(match.group(1))).kill()
    wait_for(lambda: "RESTART features" in run_log(handle), 30, "the supervisor's restart log line")
    port = handle.settings.stage_port("features")
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
             if _port_up(port) else False, 60, "restarted features healthy")


def test_a_lost_broker_is_recycled_with_the_stages_and_signals_resume(surge_run: RunHandle) -> None:
    """Tansu's memory store comes back empty: without restarting the stages their idempotent producers stay
    fenced (unknown producer id) and their topics are gone, and the pipeline stalls for good."""
    proc, handle = surge_run
    match = re.findall(r"started broker \(pid (\d+)\)", run_log(handle))
    assert match, run_log(handle)[-3000:]
    nth = len(re.findall(r"RECYCLE broker #\d+", run_log(handle))) + 1  # 1 unless something recycled it before
    killed_us = time.time_ns() // 1000
    psutil.Process(int(match[-1])).kill()
    wait_for(lambda: f"RECYCLE broker #{nth}: the broker exited with code -9" in run_log(handle), 30,
             "the supervisor's recycle log line", context=lambda: diagnostics(handle))

    def since_recycle() -> str:
        return run_log(handle).split(f"RECYCLE broker #{nth}", 1)[1]

    stages = ("broker", "ingest", "features", "infer", "decision", "sink")
    wait_for(lambda: all(f"started {stage} (pid" in since_recycle() for stage in stages), 90,
             "the broker and every stage started again", context=lambda: diagnostics(handle))
    # The new broker started empty, so every signal on it was made after the kill.
    wait_for(lambda: any(r.value and int(r.value["ts"]["decision_us"]) > killed_us for r in tail(
        handle.settings, Topic.SIGNALS, from_beginning=True, idle_timeout_s=1.0, max_messages=20)), 120,
        "signals after the broker was recycled", interval_s=1, context=lambda: diagnostics(handle))
    assert proc.poll() is None


def _port_up(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def test_sigint_stops_every_child_within_20s(surge_run: tuple[subprocess.Popen[bytes], StackProcesses]) -> None:
    proc, handle = surge_run
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 8  # broker, warehouse, redis, five stages, gateway
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(25)
    elapsed = time.monotonic() - started
    assert code == 0, run_log(handle)[-3000:]
    assert elapsed < 20, f"stopping took {elapsed:.1f}s"
    _, alive = psutil.wait_procs(children, timeout=1)
    assert alive == [], f"children left running: {alive}"




@pytest.mark.chaos
def test_kill9_of_the_supervisor_takes_no_orphans_along(tmp_path: Path) -> None:
    env = stack_env(tmp_path, SURGE_SOURCE="sim", SURGE_SIM_EVENTS_PER_S="200", SURGE_SYMBOLS="BTCUSDT")
    handle = StackProcesses(root=tmp_path, env=env)
    with (tmp_path / "surge-run.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "surge is running" in run_log(handle) or proc.poll() is not None, 120, "surge run ready")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 8
        proc.kill()
        proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], f"orphans: {[c.cmdline() for c in alive]}"
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            child.kill()
        if proc.poll() is None:
            proc.kill()
