"""`surge notify` as a real process against the embedded broker and Redis, posting to a real local HTTP receiver:
one post per idea, duplicates and restarts never re-post, a 500 is retried, a 429's Retry-After is honoured,
risk transitions and finished jobs are announced once."""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from schemas import SCHEMA_VERSION, common_pb2, outcome_pb2, signal_pb2
from services.jobs.store import JobStore
from services.notify.runner import STATE_KEY
from streams.runtime.clock import LiveClock
from tests.conftest import free_port
from tests.integration.factories import signal
from tests.integration.stack import StackProcesses, http_ok, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """A webhook: records every request; answers the scripted (status, headers) first, then 204."""

    server: ThreadingHTTPServer
    script: collections.deque[tuple[int, dict[str, str]]] = field(default_factory=collections.deque)
    requests: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)  # (monotonic, status, body)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/123/secret-token"

    def answer_next(self, status: int, n: int = 1, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.script.extend([(status, headers or {})] * n)

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, status, body in self.requests if status < 300]

    def texts(self) -> list[str]:
        return [str(body.get("text", body.get("content", ""))) for body in self.accepted()]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = holder[0]
            body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            with rec.lock:
                status, headers = rec.script.popleft() if rec.script else (204, {})
                rec.requests.append((time.monotonic(), status, body))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


def start_notifier(infra: StackProcesses, receiver: Receiver, *flags: str) -> int:
    """``surge notify`` as its own process; returns its metrics port once it has its partitions."""
    port = free_port()
    saved = infra.env
    infra.env = {**saved, "SURGE_NOTIFY_WEBHOOK_URL": receiver.url, "SURGE_NOTIFY_RATE_PER_MIN": "600",
                 "SURGE_NOTIFY_MAX_ATTEMPTS": "3"}
    try:
        proc = infra.start("notify", [sys.executable, "-m", "services.cli", "notify", "--metrics-port", str(port),
                                      *flags])
    finally:
        infra.env = saved
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz") or proc.poll() is not None, 60, "notify ready")
    assert proc.poll() is None, f"notify died:\n{infra.log_path('notify').read_text()[-3000:]}"
    return port


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def signal_ids(receiver: Receiver) -> collections.Counter[str]:
    return collections.Counter(t.rsplit(" signal ", 1)[1] for t in receiver.texts() if " signal " in t)


def test_one_post_per_signal_across_duplicates_retries_and_restarts(infra: StackProcesses,
                                                                    receiver: Receiver) -> None:
    client = redis.Redis.from_url(infra.settings.redis_connection_url())
    now_us = time.time_ns() // 1000
    s1, s2, s5 = signal(101, now_us, symbol="BTCUSDT"), signal(102, now_us, symbol="ETHUSDT"), \
        signal(105, now_us, symbol="BTCUSDT")
    tier_b, wait = signal(103, now_us, symbol="SOLUSDT"), signal(104, now_us, symbol="BTCUSDT")
    tier_b.tier, wait.decision = signal_pb2.TIER_B, signal_pb2.WAIT
    s2.decision = signal_pb2.SHORT
    receiver.answer_next(500)  # the very first post fails once
    # One key, one partition: the duplicate is read before s5, so s5's arrival means the duplicate was handled.
    infra.send("signals.v1", [s1, s2, tier_b, wait, s1, s5])
    port = start_notifier(infra, receiver)
    wait_for(lambda: set(signal_ids(receiver)) == {s1.signal_id, s2.signal_id, s5.signal_id}, 60, "three posts")
    assert signal_ids(receiver) == {s1.signal_id: 1, s2.signal_id: 1, s5.signal_id: 1}
    assert f"SHORT ETHUSDT (sim) tier A p_up=0.90 net 15.0 bps (cost 5.0) 5m horizon — signal {s2.signal_id}" \
        in receiver.texts()
    assert [status for _, status, _ in receiver.requests].count(500) == 1
    assert len(receiver.requests) == 4  # three posts, the failed one retried
    assert receiver.requests[0][2] in receiver.accepted()  # the body that got the 500 came again
    assert metric(port, "surge_notify_posts_total", kind="signal", result="sent") == 3
    assert metric(port, "surge_notify_core_events_total", event="duplicates") == 1
    assert metric(port, "surge_notify_core_events_total", event="signals_filtered") == 2
    assert infra.stop("notify") == 0

    # A restart without the saved state: only the Redis claims stand between a redelivery and a second post.
    client.delete(STATE_KEY)
    s6 = signal(106, now_us, symbol="BTCUSDT")
    infra.send("signals.v1", [s1, s6])
    port = start_notifier(infra, receiver)
    wait_for(lambda: s6.signal_id in signal_ids(receiver), 60, "the post after the restart")
    assert signal_ids(receiver) == {s1.signal_id: 1, s2.signal_id: 1, s5.signal_id: 1, s6.signal_id: 1}
    assert metric(port, "surge_notify_posts_total", kind="signal", result="deduplicated") == 1

    # A 429 is waited out for its Retry-After, then the same post goes through.
    receiver.answer_next(429, headers={"Retry-After": "1"})
    s7 = signal(107, now_us, symbol="ETHUSDT")
    infra.send("signals.v1", [s7])
    wait_for(lambda: s7.signal_id in signal_ids(receiver), 60, "the post after a 429")
    (limited_at, _, limited), = [(t, s, b) for t, s, b in receiver.requests if s == 429]
    (accepted_at, _, _), = [(t, s, b) for t, s, b in receiver.requests if s < 300 and b == limited]
    assert accepted_at - limited_at >= 0.9
    assert signal_ids(receiver)[s7.signal_id] == 1
    assert infra.stop("notify") == 0


def outcome(n: int, risk_state: str) -> outcome_pb2.Outcome:
    return outcome_pb2.Outcome(schema_version=SCHEMA_VERSION, outcome_id=f"notify-o{n}", signal_id=f"notify-o{n}",
                               venue=common_pb2.SIMULATOR, symbol="XRPUSDT", decision=signal_pb2.LONG,
                               tier=signal_pb2.TIER_A, label=outcome_pb2.HIT_STOP, net_return_bps=-20.0,
                               paper_equity=0.95, risk_state=risk_state)


def test_risk_transitions_and_finished_jobs_are_announced_once(infra: StackProcesses, receiver: Receiver) -> None:
    client = redis.Redis.from_url(infra.settings.redis_connection_url())
    store = JobStore(client, LiveClock())
    port = start_notifier(infra, receiver, "--format", "discord")
    infra.send("outcomes.v1", [outcome(1, "NORMAL"), outcome(2, "CAUTIOUS"), outcome(3, "CAUTIOUS"),
                               outcome(4, "NORMAL")])
    ok = store.submit("backtest", {}, "test")
    assert store.claim("notify-test", 1) is not None
    store.finish(ok.job_id, "notify-test", result={"trades": 3})
    bad = store.submit("backtest", {}, "test")
    assert store.claim("notify-test", 1) is not None
    store.finish(bad.job_id, "notify-test", error="boom @everyone")
    expected = {
        "RISK NORMAL -> CAUTIOUS after LONG XRPUSDT HIT_STOP net -20.0 bps, paper equity 0.9500 — outcome notify-o2",
        "RISK CAUTIOUS -> NORMAL after LONG XRPUSDT HIT_STOP net -20.0 bps, paper equity 0.9500 — outcome notify-o4",
        f"JOB {ok.job_id} succeeded: done",
        f"JOB {bad.job_id} failed at 0%: boom @everyone",
    }

    def news() -> list[str]:
        return [t for t in receiver.texts() if t.startswith(("RISK", "JOB"))]

    wait_for(lambda: set(news()) == expected, 60, "two risk and two job posts")
    assert sorted(news()) == sorted(expected)
    assert all(body["allowed_mentions"] == {"parse": []} and "text" not in body for body in receiver.accepted())
    assert infra.stop("notify") == 0

    # The job stream position survives the restart: nothing is announced again (not even refused by a claim).
    port = start_notifier(infra, receiver, "--format", "discord")
    later = store.submit("backtest", {}, "test")
    assert store.claim("notify-test", 1) is not None
    store.finish(later.job_id, "notify-test")
    wait_for(lambda: f"JOB {later.job_id} succeeded: done" in news(), 60, "the job after the restart")
    assert sorted(news()) == sorted([*expected, f"JOB {later.job_id} succeeded: done"])
    assert metric(port, "surge_notify_posts_total", kind="job", result="deduplicated") == 0
    assert metric(port, "surge_notify_posts_total", kind="job", result="sent") == 1
    assert infra.stop("notify") == 0
