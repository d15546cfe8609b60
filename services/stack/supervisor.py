"""`surge run`: start the embedded services and the five stages as child processes, restart what dies.

The embedded broker is special. Tansu's memory store keeps nothing across a restart, so the stages' idempotent
producers are fenced (unknown producer id) and their topics are gone: when the broker dies, the stages are
restarted with it. The same "recycle" is done on purpose when the pipeline falls behind, because the memory
store gets slower the more it holds (README, "Embedded broker caveats").

A planned recycle drains first: ingest is stopped (it publishes its pending micro-batches and exits, so
nothing new is accepted), the consumers keep running until every stage's consumed count has stood still
for ``DRAIN_QUIET_S`` (they have read, processed and produced everything the broker holds, and the sink has
stored it), and only then are they stopped (each commits) and the broker restarted. A broker that died
cannot be drained: what was in flight then is lost, and the log says so.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from pydantic import SecretStr

from services.stack.binaries import redis_command, tansu_command
from streams.runtime.settings import ENV_PREFIX, STAGES, Settings
from streams.venues.binance.spec import ping_url

log = logging.getLogger("surge.supervisor")

STOP_GRACE_S = 8.0  # for the stages, gateway and jobs, stopped together after the drain
INFRA_STOP_S = 3.0  # broker, warehouse and Redis, each, once nothing uses them
INFRASTRUCTURE = frozenset({"broker", "warehouse", "redis"})
RECYCLE_STOP_S = 5.0  # per stage; their broker is gone, so there is little left to drain
LAG_POLL_S = 1.0
LAG_METRIC = re.compile(r'^surge_event_time_lag_seconds\{stage="features"\} ([0-9.eE+-]+)$', re.M)
RESTART_BACKOFF_MAX_S = 8.0
INGEST_DRAIN_STOP_S = 15.0  # ingest publishes its pending micro-batches on SIGTERM (and gives up after 10 s)
DRAIN_QUIET_S = 2.0  # consumed counts unchanged this long: the consumers have caught up
DRAIN_TIMEOUT_S = 90.0
SHUTDOWN_DRAIN_S = 6.0  # after ingest stopped; a Ctrl-C ends everything in ~10 s, 40 s at worst
DRAIN_POLL_S = 0.25
CONSUMED_METRIC = re.compile(r'^surge_events_in_total\{[^}]*\} ([0-9.eE+-]+)$', re.M)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool] | None = None  # polled after start; the next child waits for it
    ready_timeout_s: float = 30.0


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start_at: float = 0.0
    log_path: Path | None = None
    started_at: float = field(default=0.0)


def die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM the child if the supervisor dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def surge_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def binance_reachable(settings: Settings) -> bool:
    try:
        return httpx.get(ping_url(settings), timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def resolve_source(settings: Settings) -> str:
    """`auto` means live Binance when reachable, else the simulator; either way it is said loudly."""
    if settings.source != "auto":
        return settings.source
    if binance_reachable(settings):
        log.warning("SOURCE: live Binance %s public streams (%s answered)", settings.venue,
                    ping_url(settings))
        return "live"
    log.warning("SOURCE: built-in market SIMULATOR (Binance %s not reachable); signals are NOT real",
                ping_url(settings))
    return "sim"


def child_settings(settings: Settings, source: str) -> Settings:
    """The settings every child of `surge run` gets: the run's own, with the resolved source."""
    update: dict[str, object] = {"source": source}
    if settings.warehouse_token is None:
        # The warehouse service and its clients share this secret; children get it by environment (never argv,
        # which every user can read with ps). One per run, so it also survives a warehouse restart.
        update["warehouse_token"] = SecretStr(secrets.token_urlsafe(32))
    if settings.embedded and "partitions" not in settings.model_fields_set:
        # One process per stage here, so partitions buy no parallelism; and Tansu's memory store walks every batch
        # a partition holds on each fetch, so each partition multiplies the stored batches a burst leaves behind.
        update["partitions"] = 1
    if source.startswith("replay:") and "features_backpressure_lag_s" not in settings.model_fields_set:
        # Recorded exchange times are old, so wall-clock lag would always look like backpressure.
        update["features_backpressure_lag_s"] = 0.0
    if source.startswith("replay:") and "decision_max_exchange_lag_s" not in settings.model_fields_set:
        update["decision_max_exchange_lag_s"] = 0.0  # likewise the decision stage's exchange-lag pause
    if source.startswith("replay:") and "stale_input_s" not in settings.model_fields_set:
        update["stale_input_s"] = 0.0  # and the STALE_INPUT flag, which every event of an old capture would carry
    return settings.model_copy(update=update)


def child_env(settings: Settings) -> dict[str, str]:
    """A child's environment: this process's (PATH, HOME, ...) with its SURGE_* variables replaced by the
    settings object's, so CLI flags reach the children without the supervisor ever writing os.environ."""
    inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    return inherited | settings.to_env()


FEATURES_READY_TIMEOUT_S = 300.0  # a cold numba compile took 100 s beside a running stack


def stage_child(settings: Settings, stage: str, env: dict[str, str]) -> ChildSpec:
    """A stage child. Features is waited for on /readyz, which holds until its kernel is compiled, so ingest
    starts only when ticks can be folded at once; the others on /healthz (serving, not yet joined)."""
    base = f"http://127.0.0.1:{settings.stage_port(stage)}"
    if stage == "features":
        return ChildSpec(stage, surge_cli("stage", stage), env, ready=http_ok(f"{base}/readyz"),
                         ready_timeout_s=FEATURES_READY_TIMEOUT_S)
    return ChildSpec(stage, surge_cli("stage", stage), env, ready=http_ok(f"{base}/healthz"))


def plan_children(settings: Settings, source: str) -> list[ChildSpec]:
    env = child_env(child_settings(settings, source))
    data_dir = settings.data_dir.resolve()
    children: list[ChildSpec] = []
    if settings.embedded:
        children.append(ChildSpec("broker", tansu_command(settings.broker_port), env,
                                  ready=lambda: port_open(settings.broker_port)))
    if settings.clickhouse_url is None:
        children.append(ChildSpec(
            "warehouse",
            surge_cli("warehouse", "--path", str(data_dir / "clickhouse"), "--port", str(settings.warehouse_port)),
            env, ready=http_ok(f"http://127.0.0.1:{settings.warehouse_port}/health"), ready_timeout_s=60))
    if settings.redis_url is None:
        children.append(ChildSpec("redis", redis_command(settings.redis_port, data_dir / "redis"), env,
                                  ready=lambda: port_open(settings.redis_port)))
    # Topics first, so the stages' own idempotent creation finds them and the consumers join at once.
    children.extend(stage_child(settings, stage, env)
                    for stage in reversed(STAGES))  # consumers before the producer, so no tick waits for a join
    # Jobs queued through the gateway (POST /jobs/...) are run by this worker; its state is in Redis.
    children.append(ChildSpec("jobs", surge_cli("jobs", "worker"), env,
                              ready=http_ok(f"http://127.0.0.1:{settings.service_port('jobs')}/healthz")))
    children.append(ChildSpec("gateway", surge_cli("gateway"), env,
                              ready=http_ok(f"http://{settings.gateway_host}:{settings.gateway_port}/health")))
    return children


@dataclass(frozen=True, slots=True)
class RecyclePolicy:
    """When to recycle the embedded broker: the worst event-time lag of the signal path above ``lag_s`` for
    ``sustained_s``, and not within ``grace_s`` of the stages' last (re)start; or, ahead of any lag, once the
    broker has served ``every_s`` (0: never), because its fetches slow down with every batch it stores."""

    lag_s: float
    sustained_s: float
    grace_s: float
    every_s: float = 0.0

    @classmethod
    def for_run(cls, settings: Settings, source: str) -> RecyclePolicy | None:
        # Replayed captures carry old exchange times, so their lag says nothing about the broker; and a replay
        # must not be cut by a recycle (its source cannot resume mid-file).
        if not settings.embedded or source.startswith("replay:"):
            return None
        if settings.broker_recycle_lag_s <= 0 and settings.broker_recycle_every_s <= 0:
            return None
        return cls(settings.broker_recycle_lag_s if settings.broker_recycle_lag_s > 0 else float("inf"),
                   settings.broker_recycle_sustained_s, settings.broker_recycle_grace_s,
                   settings.broker_recycle_every_s)


@dataclass(slots=True)
class LagWatch:
    """Decides from lag samples (monotonic seconds) whether the policy calls for a recycle."""

    policy: RecyclePolicy
    stages_started_at: float
    above_since: float | None = None

    def due(self, now: float) -> bool:
        """The broker has served its ``every_s``."""
        return self.policy.every_s > 0 and now - self.stages_started_at >= self.policy.every_s

    def observe(self, now: float, lag_s: float | None) -> bool:
        if lag_s is None or lag_s <= self.policy.lag_s or now - self.stages_started_at < self.policy.grace_s:
            self.above_since = None
            return False
        if self.above_since is None:
            self.above_since = now
        return now - self.above_since >= self.policy.sustained_s

    def restarted(self, now: float) -> None:
        self.stages_started_at, self.above_since = now, None


@dataclass(slots=True)
class DrainWatch:
    """Decides from samples of the consumers' total consumed count whether a drain is done, or has timed out.

    ``None`` (a stage did not answer) restarts the quiet clock: a stage that cannot be read has not been seen
    to stand still."""

    started_at: float
    quiet_s: float = DRAIN_QUIET_S
    timeout_s: float = DRAIN_TIMEOUT_S
    last: float | None = None
    quiet_since: float | None = None

    def observe(self, now: float, consumed: float | None) -> str:
        if consumed is None or consumed != self.last or self.quiet_since is None:
            self.last, self.quiet_since = consumed, now
        elif now - self.quiet_since >= self.quiet_s:
            return "drained"
        return "timeout" if now - self.started_at >= self.timeout_s else "waiting"


def consumed_total(settings: Settings, stages: list[str]) -> float | None:
    """Records consumed so far by ``stages`` together, from their /metrics; None if one does not answer."""
    total = 0.0
    for stage in stages:
        try:
            text = httpx.get(f"http://127.0.0.1:{settings.stage_port(stage)}/metrics", timeout=1.0).text
        except httpx.HTTPError:
            return None
        total += sum(float(v) for v in CONSUMED_METRIC.findall(text))
    return total


STAGE_LAG_METRIC = re.compile(r'^surge_event_time_lag_seconds\{stage="(\w+)"\} ([0-9.eE+-]+)$', re.M)
LAG_WATCHED = ("features", "infer", "decision")  # the signal path behind the broker
LAG_SCRAPE_TIMEOUT_S = 2.0  # a busy stage answers slowly, and a missed sample restarts the LagWatch clock


def worst_lag(expositions: dict[str, str]) -> tuple[str, float] | None:
    """The stage furthest behind and its event-time lag, from each watched stage's /metrics text."""
    lags = [(stage, float(value)) for text in expositions.values() for stage, value in STAGE_LAG_METRIC.findall(text)
            if stage in LAG_WATCHED]
    return max(lags, key=lambda item: item[1]) if lags else None


def pipeline_lag(settings: Settings) -> tuple[str, float] | None:
    """The worst event-time lag of features, infer and decision; None if none of them answered.

    Watching features alone missed the backlog that builds behind it: in a 10-minute soak (README,
    Operations) infer and decision fell 15-27 s behind while features stayed under the threshold or was not
    read in time, and no recycle came."""
    texts = {}
    for stage in LAG_WATCHED:
        try:
            texts[stage] = httpx.get(f"http://127.0.0.1:{settings.stage_port(stage)}/metrics",
                                     timeout=LAG_SCRAPE_TIMEOUT_S).text
        except httpx.HTTPError:
            continue
    return worst_lag(texts)


def features_lag_s(settings: Settings) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{settings.stage_port('features')}/metrics", timeout=1.0).text
    except httpx.HTTPError:
        return None
    match = LAG_METRIC.search(text)
    return float(match.group(1)) if match else None


class Supervisor:
    def __init__(self, settings: Settings, children: list[ChildSpec], log_dir: Path,
                 recycle: RecyclePolicy | None = None) -> None:
        self.settings = settings
        self.children = [Child(spec) for spec in children]
        self.log_dir = log_dir
        self.stopping = False
        self.lag_watch = LagWatch(recycle, time.monotonic()) if recycle is not None else None
        self.next_lag_poll = 0.0
        self.recycles = 0

    def _start(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child.log_path = self.log_dir / f"{child.spec.name}.log"
        out = child.log_path.open("ab")
        # Own process group: Ctrl-C in the terminal reaches only the supervisor, which stops children in order.
        child.proc = subprocess.Popen(child.spec.argv, env=child.spec.env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=die_with_parent)  # noqa: PLW1509 - the supervisor runs no threads
        out.close()
        child.started_at = time.monotonic()
        log.info("started %s (pid %d), log %s", child.spec.name, child.proc.pid, child.log_path)

    def _wait_ready(self, child: Child) -> None:
        if child.spec.ready is None:
            return
        deadline = time.monotonic() + child.spec.ready_timeout_s
        while not self.stopping and time.monotonic() < deadline:
            if child.spec.ready():
                log.info("%s is ready", child.spec.name)
                return
            if child.proc is not None and child.proc.poll() is not None:
                raise RuntimeError(f"{child.spec.name} exited with {child.proc.returncode} during start; "
                                   f"see {child.log_path}")
            time.sleep(0.1)
        if not self.stopping:
            raise RuntimeError(f"{child.spec.name} not ready after {child.spec.ready_timeout_s}s; "
                               f"see {child.log_path}")

    def install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        self.install_signals()
        try:
            for child in self.children:
                if self.stopping:
                    break
                self._start(child)
                self._wait_ready(child)
            if not self.stopping and on_ready is not None:
                on_ready()
            if self.lag_watch is not None:
                self.lag_watch.restarted(time.monotonic())
            while not self.stopping:
                self._watch()
                self._watch_lag()
                time.sleep(0.2)
        finally:
            self.stop_all()
        return 0

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None:
                if now >= child.next_start_at:
                    self._start(child)
                continue
            code = proc.poll()
            if code is None:
                continue
            if child.spec.name == "broker":  # planned only for the embedded broker
                self.recycle_broker(f"the broker exited with code {code}")
                return
            child.restarts += 1
            # Backoff grows for a child that keeps dying quickly, and resets after it ran a while.
            ran_s = now - child.started_at
            delay = 0.0 if ran_s > 30 else min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** min(child.restarts, 5))
            log.warning("RESTART %s: exited with code %s after %.1fs; restart #%d in %.1fs (log %s)",
                        child.spec.name, code, ran_s, child.restarts, delay, child.log_path)
            child.proc = None
            child.next_start_at = now + delay

    def _watch_lag(self) -> None:
        now = time.monotonic()
        if self.lag_watch is None or now < self.next_lag_poll:
            return
        self.next_lag_poll = now + LAG_POLL_S
        if self.lag_watch.due(now):
            self.recycle_broker(f"the broker has served {self.lag_watch.policy.every_s:.0f}s "
                                "(SURGE_BROKER_RECYCLE_EVERY_S)", drain=True)
            return
        worst = pipeline_lag(self.settings)
        if self.lag_watch.observe(now, None if worst is None else worst[1]) and worst is not None:
            self.recycle_broker(f"the {worst[0]} stage has lagged {worst[1]:.1f}s behind the market and the "
                                f"pipeline has for {self.lag_watch.policy.sustained_s:.0f}s", drain=True)

    def drain(self, stages: list[Child], *, timeout_s: float = DRAIN_TIMEOUT_S, on_shutdown: bool = False) -> bool:
        """Stop ingest, then wait until the consumers have caught up (module docstring). True if drained."""
        started = time.monotonic()
        for child in stages:
            if child.spec.name == "ingest":
                self._stop(child, INGEST_DRAIN_STOP_S)
        consumers = [c.spec.name for c in stages if c.spec.name != "ingest" and c.proc is not None
                     and c.proc.poll() is None]
        watch = DrainWatch(started, timeout_s=timeout_s)
        while on_shutdown or not self.stopping:
            verdict = watch.observe(time.monotonic(), consumed_total(self.settings, consumers))
            if verdict == "drained":
                log.warning("DRAINED in %.1fs: ingest stopped and %s caught up", time.monotonic() - started,
                            ", ".join(consumers))
                return True
            if verdict == "timeout":
                log.warning("DRAIN timed out after %.0fs: records still in flight are lost", watch.timeout_s)
                return False
            time.sleep(DRAIN_POLL_S)
        return False

    def recycle_broker(self, reason: str, *, drain: bool = False) -> None:
        """Restart the embedded broker empty, and the stages with it (see the module docstring)."""
        self.recycles += 1
        stages = [c for c in self.children if c.spec.name in STAGES]
        broker = next(c for c in self.children if c.spec.name == "broker")
        log.warning("RECYCLE broker #%d: %s. Tansu's memory store loses everything on restart, so the stages are "
                    "restarted too%s (README, embedded broker caveats).", self.recycles, reason,
                    ", after a drain" if drain else " and records in flight are lost")
        started = time.monotonic()
        if drain:
            self.drain(stages)
        source = [c for c in stages if c.spec.name == "ingest"]
        consumers = [c for c in stages if c.spec.name != "ingest"]
        self._stop_together(source, RECYCLE_STOP_S)  # the source first, so nothing new is in flight
        self._stop_together(consumers, RECYCLE_STOP_S)  # each commits and leaves its group; in parallel
        self._stop(broker, RECYCLE_STOP_S)
        for group in ([broker], consumers, source):  # consumers joined before the source produces again
            if self.stopping:
                return
            for child in group:
                self._start(child)
            for child in group:
                self._wait_ready(child)
        log.warning("RECYCLED broker #%d: intake was stopped for %.1fs", self.recycles, time.monotonic() - started)
        if self.lag_watch is not None:
            self.lag_watch.restarted(time.monotonic())

    def _stop_together(self, children: list[Child], timeout_s: float) -> None:
        """Signal every child, then wait for each: stops that overlap instead of queueing."""
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            self._stop(child, timeout_s)

    def _stop(self, child: Child, timeout_s: float) -> None:
        proc = child.proc
        if proc is None:
            return
        if proc.poll() is None:  # else it already exited, e.g. on the SIGTERM of _stop_together
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(0.1, timeout_s))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.spec.name)
                proc.kill()
                proc.wait(timeout=2)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean stop too.
        clean = proc.returncode in (0, -signal.SIGTERM)
        log.info("stopped %s (%s)", child.spec.name, "cleanly" if clean else f"exit code {proc.returncode}")
        child.proc = None  # stopped on purpose: the next _start (a recycle) brings it back

    def stop_all(self) -> None:
        """Stop in tiers: on the embedded broker, whose memory store keeps nothing, intake stops first and the
        consumers catch up (for at most ``SHUTDOWN_DRAIN_S``), so what ingest accepted is in the warehouse when
        `surge run` returns; then the stages, gateway and jobs together (each commits), and only then the broker
        and the stores they commit to. Each tier has its own budget, so a slow ingest cannot use up the time the
        consumers need to commit."""
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        stages = [c for c in running if c.spec.name in STAGES]
        if self.settings.embedded and any(c.spec.name == "ingest" for c in stages):
            self.drain(stages, timeout_s=SHUTDOWN_DRAIN_S, on_shutdown=True)
        services = [c for c in reversed(self.children) if c.spec.name not in INFRASTRUCTURE]
        self._stop_together(services, STOP_GRACE_S)
        for child in reversed(self.children):
            if child.spec.name in INFRASTRUCTURE:
                self._stop(child, INFRA_STOP_S)
