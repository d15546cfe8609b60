"""The notifier's runner: signals.v1 + outcomes.v1 (consumer group ``surge-notify``) and the jobs' announcement
stream in, the core's posts out to the webhook.

Per batch: decode (bad records to dlq.v1, as every stage does), read new job announcements, run the core, then
for each post claim its key in Redis (``SET NX PX dedup_ttl``; a key already there means another process or an
earlier life already posted it) and post it. A 429 waits for its Retry-After, a 5xx or a connection error is
retried with backoff, up to ``notify_max_attempts``; a post that still fails (or gets a permanent 4xx) goes to
dlq.v1 with the reason and its claim is released. Only then the core's state (waiting posts, the digest, recent
keys) and the job stream position are saved to Redis, and then the Kafka offsets are committed (at once after a
batch that posted, else at most once a second): a crash re-reads what was not committed, and the saved keys and
the claims keep it from posting twice. A stop in the middle of a batch saves and commits nothing of it.

The claim is taken before the post, so a process killed between the claim and the webhook's answer loses that
one post (at most once); everything else is at least once and de-duplicated by key.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar

import httpx
import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.jobs.store import EVENTS as JOB_EVENTS
from services.jobs.store import JobStore
from services.notify import core
from streams.runtime.clock import Clock, LiveClock
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import KafkaRecord, consumer_config, ensure_topics, produce_all, producer_config
from streams.runtime.observability import HealthState, serve_health
from streams.runtime.runner import StopFlag
from streams.runtime.settings import Settings
from streams.runtime.topics import InvalidMessage, Topic, decode
from streams.storage.cache import open_redis

log = logging.getLogger("surge.notify")

NAME: Final = "notify"
GROUP_ID: Final = "surge-notify"
INPUT_TOPICS: Final = (Topic.SIGNALS, Topic.OUTCOMES)
SENT_PREFIX: Final = "surge:notify:sent:"          # + a post's key: claimed before posting
STATE_KEY: Final = "surge:notify:state"            # the core's state (JSON), saved before each commit
JOBS_LAST_ID_KEY: Final = "surge:notify:jobs:last_id"
# Off the stages' base+index ports, so the default never collides with one of them.
POLL_S: Final = 0.25        # idle poll: also how soon a digest goes out once the bucket has a token
JOBS_PER_READ: Final = 100
CHECKPOINT_EVERY_S: Final = 1.0
REDIS_BACKOFF_MAX_S: Final = 5.0
RETRY_AFTER_MAX_S: Final = 60.0
# All waits of one post together stay well under librdkafka's max.poll.interval.ms (300 s), during which the
# consumer is not polled; a post that needs longer goes to dlq.v1 with the reason.
POST_WAIT_MAX_S: Final = 120.0

T = TypeVar("T")


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while a post or Redis was being waited for: the batch is left uncommitted."""


def as_text(value: object) -> str:
    """A sync redis client answers bytes (typed as a union with str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def default_metrics_port(settings: Settings) -> int:
    return settings.service_port("notify")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_start_s: float = 0.5
    backoff_max_s: float = 30.0

    def backoff_s(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_start_s * 2 ** (attempt - 1)))


def retry_after_s(response: httpx.Response, now_us: int) -> float | None:
    """Seconds a 429 asks to wait: Retry-After as seconds or an HTTP date, else Discord's JSON retry_after."""
    raw = response.headers.get("retry-after")
    wait: float | None = None
    if raw:
        try:
            wait = float(raw)
        except ValueError:
            try:
                wait = parsedate_to_datetime(raw).timestamp() - now_us / 1e6
            except (TypeError, ValueError):
                wait = None
    if wait is None:
        try:
            body = response.json()
            wait = float(body["retry_after"]) if isinstance(body, dict) and "retry_after" in body else None
        except (ValueError, TypeError, KeyError):
            wait = None
    if wait is None or not math.isfinite(wait):
        return None
    return min(RETRY_AFTER_MAX_S, max(0.0, wait))


class WebhookSender:
    """Posts one JSON payload with retries. ``wait(seconds)`` returns True when the process is stopping."""

    def __init__(self, client: httpx.Client, url: str, policy: RetryPolicy, clock: Clock,
                 wait: Callable[[float], bool]) -> None:
        self.client = client
        self.url = url  # a secret (the hook's token is in it): never logged, never in a reason
        self.policy = policy
        self.clock = clock
        self.wait = wait

    def send(self, payload: dict[str, Any]) -> str | None:
        """None once the webhook accepted it; the reason when it finally did not. Raises Stopped."""
        reason = "no attempt made"
        waited = 0.0
        for attempt in range(1, self.policy.max_attempts + 1):
            delay = self.policy.backoff_s(attempt)
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.HTTPError as exc:  # connection refused, timeout, protocol error: worth another try
                reason = f"{type(exc).__name__}: {exc}"[:300]
            else:
                code = response.status_code
                if 200 <= code < 300:
                    return None
                body = response.text[:200]
                if code == 429:
                    reason = f"HTTP 429 (rate limited): {body}"
                    asked = retry_after_s(response, self.clock.now_us())
                    delay = delay if asked is None else asked
                elif code < 500:
                    return f"HTTP {code}: {body}"  # refused for good (bad payload, hook deleted): no retry
                else:
                    reason = f"HTTP {code}: {body}"
            if attempt < self.policy.max_attempts:
                if waited + delay > POST_WAIT_MAX_S:
                    return f"{reason} (gave up after {attempt} attempts: waiting {delay:.0f}s more would pass " \
                           f"{POST_WAIT_MAX_S:.0f}s for one post)"
                log.warning("webhook attempt %d/%d failed (%s); retrying in %.1fs", attempt,
                            self.policy.max_attempts, reason, delay)
                waited += delay
                if self.wait(delay):
                    raise Stopped
        return f"{reason} (after {self.policy.max_attempts} attempts)"


class NotifyStateMetrics(Collector):
    """What the core counted (signals filtered, digested, duplicates, posts handed out) and its backlog."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = self.notifier.state
        counts = CounterMetricFamily("surge_notify_core_events", "Core decisions: signal_posts, risk_posts, "
                                     "job_posts, digest_posts, signals_digested, signals_filtered, duplicates",
                                     labels=["event"])
        for event, n in sorted(state.counts.items()):
            counts.add_metric([event], float(n))
        yield counts
        backlog = GaugeMetricFamily("surge_notify_backlog", "Risk/job posts waiting for a token, plus 1 for a "
                                    "pending digest")
        backlog.add_metric([], float(state.backlog))
        yield backlog


class Notifier:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, metrics_port: int | None = None,
                 stop: StopFlag | None = None, retry: RetryPolicy | None = None) -> None:
        if settings.notify_webhook_url is None:
            raise ValueError("no webhook URL: set SURGE_NOTIFY_WEBHOOK_URL or pass --webhook")
        self.settings = settings
        self.clock: Clock = clock or LiveClock()
        self.metrics_port = default_metrics_port(settings) if metrics_port is None else metrics_port
        self.own_stop = stop is None  # signal handlers only in the process's own notifier (main thread)
        self.stop = stop or StopFlag()
        self.config = core.NotifyConfig.from_settings(settings)
        self.state = core.NotifyState(config=self.config)
        self.retry = retry or RetryPolicy(max_attempts=settings.notify_max_attempts)
        self.dedup_ttl_ms = max(1, round(settings.notify_dedup_ttl_s * 1000))
        self.health = HealthState(stall_after_s=settings.stall_readiness_s)
        self.registry = CollectorRegistry()
        self.posts = Counter("surge_notify_posts", "Posts by kind and result: sent (acknowledged), failed "
                             "(dead-lettered), deduplicated (already claimed in Redis)", ["kind", "result"],
                             registry=self.registry)
        self.dlq = Counter("surge_notify_dlq", "Records sent to dlq.v1", ["error_type"], registry=self.registry)
        self.registry.register(NotifyStateMetrics(self))
        self.jobs_after = "0"
        self.uncommitted: dict[tuple[str, int], int] = {}   # consumed offsets, all their posts done
        self.dirty = False                                  # state or offsets not yet saved/committed
        self.checkpointed_at = time.monotonic()

    # --- Redis -----------------------------------------------------------------------------------------------

    def _redis(self, what: str, fn: Callable[[], T]) -> T:
        """Run a Redis call, retrying with capped backoff while Redis is down (nothing proceeds without it)."""
        delay = 0.1
        while True:
            try:
                result = fn()
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s: %s); retrying in %.1fs", what, exc, delay)
                self.health.set_live(False, redis="unavailable")
                if self.stop.event.wait(delay):
                    raise Stopped from exc
                delay = min(delay * 2, REDIS_BACKOFF_MAX_S)
                continue
            self.health.set_live(True, redis="ok")
            return result

    def _load(self, client: redis.Redis) -> None:
        raw = self._redis("load state", lambda: client.get(STATE_KEY))
        if raw is not None:
            try:
                self.state = core.NotifyState.from_json(orjson.loads(raw), self.config)
                log.info("resumed: %d post(s) waiting, %d signal(s) in the digest, risk %s",
                         len(self.state.pending), self.state.digest.count, self.state.risk_state)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("ignoring an unreadable saved state: %s", exc)
        last = self._redis("jobs position", lambda: client.get(JOBS_LAST_ID_KEY))
        if last is not None:
            self.jobs_after = as_text(last)
        else:
            # A first start announces jobs that end from now on, not the stream's whole history.
            newest: Any = self._redis("jobs position", lambda: client.xrevrange(JOB_EVENTS, count=1))
            self.jobs_after = as_text(newest[0][0]) if newest else "0"
        log.info("following job announcements after %s", self.jobs_after)

    def _save(self, client: redis.Redis) -> None:
        doc = orjson.dumps(self.state.to_json())

        def write() -> None:
            pipe = client.pipeline(transaction=True)
            pipe.set(STATE_KEY, doc)
            pipe.set(JOBS_LAST_ID_KEY, self.jobs_after)
            pipe.execute()

        self._redis("save state", write)

    # --- posting ---------------------------------------------------------------------------------------------

    def _deliver(self, client: redis.Redis, sender: WebhookSender, post: core.Post) -> KafkaRecord | None:
        """Claim, post, and on final failure release the claim and return the dead letter."""
        key = SENT_PREFIX + post.key
        claimed = self._redis("claim", lambda: client.set(key, b"1", nx=True, px=self.dedup_ttl_ms))
        if not claimed:
            self.posts.labels(post.kind, "deduplicated").inc()
            log.info("already posted: %s", post.key)
            return None
        try:
            reason = sender.send(post.payload)
        except Stopped:
            self._release(client, key)
            raise
        if reason is None:
            self.posts.labels(post.kind, "sent").inc()
            return None
        self._release(client, key)
        self.posts.labels(post.kind, "failed").inc()
        self.dlq.labels("webhook_failed").inc()
        log.error("post %s dead-lettered: %s", post.key, reason)
        source = {"signal": Topic.SIGNALS.value, "digest": Topic.SIGNALS.value, "risk": Topic.OUTCOMES.value,
                  "job": JOB_EVENTS}[post.kind]
        return dead_letter(stage=NAME, source_topic=source, source_partition=-1, source_offset=-1,
                           key=post.key.encode(), payload=orjson.dumps({"key": post.key, "kind": post.kind,
                                                                        "payload": post.payload}),
                           error_type="webhook_failed", reason=reason, now_us=self.clock.now_us())

    def _release(self, client: redis.Redis, key: str) -> None:
        """Best effort: a claim left behind only suppresses this post until the dedup TTL."""
        try:
            client.delete(key)
        except redis.RedisError as exc:
            log.error("could not release the claim %s (%s); it expires with the dedup TTL", key, exc)

    # --- the loop --------------------------------------------------------------------------------------------

    def _decode(self, msgs: list[KafkaMessage]) -> tuple[list[core.Event], dict[tuple[str, int], int],
                                                         list[KafkaRecord]]:
        events: list[core.Event] = []
        offsets: dict[tuple[str, int], int] = {}
        dead: list[KafkaRecord] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            offsets[(topic, partition)] = max(offsets.get((topic, partition), -1), offset)
            try:
                value = decode(topic, msg.key(), msg.value())
            except InvalidMessage as exc:
                dead.append(dead_letter(stage=NAME, source_topic=topic, source_partition=partition,
                                        source_offset=offset, key=msg.key(), payload=msg.value(),
                                        error_type=exc.error_type, reason=exc.reason, now_us=self.clock.now_us()))
                self.dlq.labels(exc.error_type).inc()
                continue
            events.append(value)  # type: ignore[arg-type]  # decode of these two topics: Signal or Outcome
        return events, offsets, dead

    def _next_batch(self, consumer: Consumer) -> list[KafkaMessage]:
        first = consumer.poll(POLL_S)
        if first is None:
            return []
        return [first, *consumer.consume(num_messages=max(0, self.settings.batch_max - 1), timeout=0)]

    def _step(self, consumer: Consumer, producer: Producer, client: redis.Redis, store: JobStore,
              sender: WebhookSender) -> None:
        events, offsets, dead = self._decode(self._next_batch(consumer))
        for tp, offset in offsets.items():
            self.uncommitted[tp] = max(self.uncommitted.get(tp, -1), offset)
        jobs = self._redis("job announcements", lambda: store.announcements(after=self.jobs_after,
                                                                            count=JOBS_PER_READ))
        events.extend(jobs)
        before = self.state.backlog
        posts = core.process(events, self.state, self.clock)
        for post in posts:
            record = self._deliver(client, sender, post)
            if record is not None:
                dead.append(record)
        if dead:
            produce_all(producer, dead)  # blocks until acknowledged: a dead letter is the post's last copy
        if jobs:
            self.jobs_after = jobs[-1].event_id
        self.dirty = self.dirty or bool(offsets or jobs or posts) or self.state.backlog != before
        # After posts, at once; otherwise at most every CHECKPOINT_EVERY_S: saving the state for every batch of a
        # busy topic costs more than re-reading a second of it after a crash (the claims de-duplicate it).
        if self.dirty and (posts or jobs or dead or time.monotonic() - self.checkpointed_at >= CHECKPOINT_EVERY_S):
            self._checkpoint(consumer, client)
        self.health.beat()

    def _checkpoint(self, consumer: Consumer, client: redis.Redis) -> None:
        """Save the core's state and the job position, then commit what was consumed: in this order, so a crash
        between the two re-reads input the saved state already reflects (and skips it as seen)."""
        self._save(client)
        if self.uncommitted:
            parts = [TopicPartition(t, p, o + 1) for (t, p), o in self.uncommitted.items()]
            try:
                consumer.commit(offsets=parts, asynchronous=False)
            except KafkaException as exc:  # a rebalance, usually: re-read and de-duplicated
                log.warning("offset commit failed (%s); records will be redelivered", exc)
            self.uncommitted = {}
        self.dirty = False
        self.checkpointed_at = time.monotonic()

    def run(self) -> int:
        settings = self.settings
        assert settings.notify_webhook_url is not None
        stop_health = (serve_health(self.metrics_port, self.registry, self.health, host=settings.metrics_host)
                       if self.metrics_port else None)
        if self.own_stop:
            self.stop.install()
        client = open_redis(settings.redis_connection_url())
        http = httpx.Client(timeout=settings.notify_timeout_s, follow_redirects=False)
        def wait(seconds: float) -> bool:
            # A post waiting out a 429 or a backoff is progress, not a hang: /readyz stays green meanwhile.
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                self.health.beat()
                if self.stop.event.wait(min(left, 5.0)):
                    return True
            return self.stop.event.is_set()

        sender = WebhookSender(http, settings.notify_webhook_url.get_secret_value(), self.retry, self.clock, wait)
        consumer: Consumer | None = None
        try:
            created = ensure_topics(settings)
            if created:
                log.info("created topics %s", created)
            self._load(client)
            store = JobStore(client, self.clock, ttl_days=settings.jobs_ttl_days)
            producer = Producer(producer_config(settings, f"{GROUP_ID}-producer"))
            consumer = Consumer(consumer_config(settings, GROUP_ID))
            consumer.subscribe([t.value for t in INPUT_TOPICS], on_assign=self._on_assign,
                               on_revoke=lambda c, parts: self._on_revoke(c, client, parts))
            self.health.set_live(True)
            log.info("notify consuming %s and job announcements; posting as %s, tier >= %s, %.0f/min",
                     [t.value for t in INPUT_TOPICS], self.config.format, self.config.min_tier,
                     self.config.rate_per_min)
            try:
                while not self.stop.stopped:
                    self._step(consumer, producer, client, store, sender)
                if self.dirty:
                    self._checkpoint(consumer, client)
            except Stopped:
                # Nothing of the interrupted batch may be saved or committed, not even by the revoke on close.
                self.dirty, self.uncommitted = False, {}
                log.warning("stopped while waiting for the webhook or Redis: what was read since the last commit "
                            "is not committed and will be read again")
            producer.flush(10)
        finally:
            self.health.set_ready(False, phase="draining")
            if consumer is not None:
                consumer.close()  # leaves the group at once, so a replacement takes over quickly
            http.close()
            client.close()
            if stop_health is not None:
                stop_health()
        log.info("notify stopped cleanly")
        return 0

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.health.set_ready(True, phase="consuming")
        log.info("assigned %d partition(s)", len(partitions))

    def _on_revoke(self, consumer: Consumer, client: redis.Redis, partitions: list[TopicPartition]) -> None:
        # Called between batches (inside poll): every post is done, so commit while the partitions are ours.
        try:
            if self.dirty:
                self._checkpoint(consumer, client)
        except Stopped:  # Redis down while stopping: the uncommitted input is read again, de-duplicated
            log.warning("not committed before the revoke: Redis unavailable while stopping")
        log.info("revoked %d partition(s)", len(partitions))
