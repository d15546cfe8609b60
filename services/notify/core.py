"""Notify core: signals, outcomes and job events in, webhook posts out. Pure: no Kafka, HTTP or Redis I/O.

Rules:

* **Signals**: LONG or SHORT only, at or above ``min_tier`` (A is above B); one post per signal id.
* **Risk**: the paper book's state rides on every outcome (``Outcome.risk_state``). The first state seen is only
  recorded, unless it is not NORMAL (then it is news); every change after that is one post.
* **Jobs**: a job that ends (succeeded or failed) is one post; queued/running changes are not news.
* **Rate limit**: one token bucket (``rate_per_min``, ``burst`` x rate tokens) on the clock passed in. Risk and
  job posts go first and wait in order for a token (never dropped); a signal that finds no token, or finds
  others waiting, is counted into one digest post ("N more signals: ...") sent as soon as a token is free.
* **Keys**: every post has a deterministic key (``signal:<id>``, ``risk:<from>-><to>:<outcome_id>``,
  ``job:<id>:<state>``, ``digest:<first key>:<n>``), which the runner claims in Redis before posting, so a
  redelivery, a restart or a second replica never posts twice. The state remembers recent keys (and outcome
  ids) too, so a duplicate costs no token and a redelivered outcome cannot fake a risk transition.

The state survives restarts as JSON (``to_json``/``from_json``): the runner saves it before committing offsets,
so a waiting risk post or a half-full digest is not lost with the input that produced it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from schemas import common_pb2, outcome_pb2, signal_pb2
from services.jobs.store import JobEvent, JobState
from streams.runtime.clock import Clock
from streams.runtime.settings import Settings

Event = signal_pb2.Signal | outcome_pb2.Outcome | JobEvent
Kind = Literal["signal", "risk", "job", "digest"]
Format = Literal["slack", "discord"]

SEEN_MEMORY: Final = 5_000         # recent keys and outcome ids, kept (and saved) against redelivery
MAX_TEXT_CHARS: Final = 1_900      # Discord refuses content over 2000 characters
DIGEST_SYMBOLS_SHOWN: Final = 8
US_PER_MIN: Final = 60_000_000
TIER_RANK: Final[Mapping[int, int]] = {signal_pb2.TIER_A: 2, signal_pb2.TIER_B: 1}
MIN_RANK: Final[Mapping[str, int]] = {"A": 2, "B": 1}
TIER_NAMES: Final[Mapping[int, str]] = {signal_pb2.TIER_A: "A", signal_pb2.TIER_B: "B"}
VENUE_SUFFIX: Final[Mapping[int, str]] = {common_pb2.BINANCE_SPOT: "", common_pb2.BINANCE_USDM: " perp",
                                          common_pb2.SIMULATOR: " (sim)"}


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    format: Format = "slack"
    min_tier: Literal["A", "B"] = "A"
    rate_per_min: float = 20.0
    burst: float = 1.0              # bucket size as a multiple of the per-minute rate

    @property
    def capacity(self) -> float:
        # At least one token, or a slow rate with a small burst could never post at all.
        return max(1.0, self.rate_per_min * self.burst)

    @classmethod
    def from_settings(cls, settings: Settings) -> NotifyConfig:
        return cls(format=settings.notify_format, min_tier=settings.notify_min_tier,
                   rate_per_min=settings.notify_rate_per_min, burst=settings.notify_burst)


@dataclass(frozen=True, slots=True)
class Post:
    key: str
    kind: Kind
    text: str
    payload: dict[str, Any]


def payload_of(text: str, fmt: Format) -> dict[str, Any]:
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1] + "…"
    if fmt == "discord":
        # A job's error text could say "@everyone"; the hook must never ping anyone.
        return {"content": text, "allowed_mentions": {"parse": []}}
    # Slack reads <...> as links and mentions (<!channel>), so the three control characters are escaped.
    return {"text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}


def make_post(key: str, kind: Kind, text: str, config: NotifyConfig) -> Post:
    return Post(key=key, kind=kind, text=text, payload=payload_of(text, config.format))


@dataclass(slots=True)
class Digest:
    """Signals the rate limit held back, summed up for one post."""

    first_key: str = ""
    count: int = 0
    by_decision: dict[str, int] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)   # in order of first appearance

    def add(self, key: str, decision: str, symbol: str) -> None:
        if self.count == 0:
            self.first_key = key
        self.count += 1
        self.by_decision[decision] = self.by_decision.get(decision, 0) + 1
        if symbol not in self.symbols:
            self.symbols.append(symbol)

    def post(self, config: NotifyConfig) -> Post:
        parts = ", ".join(f"{n} {d}" for d, n in sorted(self.by_decision.items()))
        shown = ", ".join(self.symbols[:DIGEST_SYMBOLS_SHOWN])
        if len(self.symbols) > DIGEST_SYMBOLS_SHOWN:
            shown += f" and {len(self.symbols) - DIGEST_SYMBOLS_SHOWN} more"
        noun = "signal" if self.count == 1 else "signals"
        return make_post(f"digest:{self.first_key}:{self.count}", "digest",
                         f"{self.count} more {noun}: {parts} on {shown}", config)

    def to_json(self) -> dict[str, Any]:
        return {"first_key": self.first_key, "count": self.count, "by_decision": dict(self.by_decision),
                "symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Digest:
        return cls(first_key=str(doc["first_key"]), count=int(doc["count"]),
                   by_decision={str(k): int(v) for k, v in doc["by_decision"].items()},
                   symbols=[str(s) for s in doc["symbols"]])


@dataclass(slots=True)
class NotifyState:
    config: NotifyConfig = field(default_factory=NotifyConfig)
    tokens: float | None = None     # None: the bucket starts full at the first call
    refilled_us: int = 0
    risk_state: str | None = None   # the paper book's state in the newest outcome seen
    # Exit time of the outcome that set risk_state: outcomes of other symbols arrive across partitions in no
    # global order, and an older one must not read as a transition back.
    risk_as_of_us: int = 0
    pending: deque[Post] = field(default_factory=deque)  # risk and job posts waiting for a token, oldest first
    digest: Digest = field(default_factory=Digest)
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is offered (and remembers it); False for a duplicate."""
        if key in self.seen:
            self.count("duplicates")
            return False
        self.seen[key] = None
        while len(self.seen) > SEEN_MEMORY:
            self.seen.popitem(last=False)
        return True

    def refill(self, now_us: int) -> None:
        cap = self.config.capacity
        if self.tokens is None:
            self.tokens, self.refilled_us = cap, now_us
            return
        elapsed = max(0, now_us - self.refilled_us)
        self.tokens = min(cap, self.tokens + elapsed * self.config.rate_per_min / US_PER_MIN)
        self.refilled_us = max(self.refilled_us, now_us)

    def take(self) -> bool:
        if self.tokens is not None and self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    @property
    def backlog(self) -> int:
        """Posts owed but not yet handed out: waiting risk/job posts, and the digest if it has signals."""
        return len(self.pending) + (1 if self.digest.count else 0)

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "refilled_us": self.refilled_us, "risk_state": self.risk_state,
                "risk_as_of_us": self.risk_as_of_us,
                "pending": [{"key": p.key, "kind": p.kind, "text": p.text} for p in self.pending],
                "digest": self.digest.to_json(), "seen": list(self.seen), "counts": dict(self.counts)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], config: NotifyConfig) -> NotifyState:
        # Payloads are rebuilt from the text, so a restart with another format posts in that format.
        pending = deque(make_post(str(p["key"]), p["kind"], str(p["text"]), config) for p in doc["pending"])
        tokens = doc["tokens"]
        return cls(config=config, tokens=None if tokens is None else min(float(tokens), config.capacity),
                   refilled_us=int(doc["refilled_us"]), risk_state=doc["risk_state"],
                   risk_as_of_us=int(doc.get("risk_as_of_us", 0)), pending=pending,
                   digest=Digest.from_json(doc["digest"]), seen=OrderedDict.fromkeys(str(k) for k in doc["seen"]),
                   counts={str(k): int(v) for k, v in doc["counts"].items()})


def decision_name(decision: int) -> str:
    return str(signal_pb2.Decision.Name(decision))


def tier_name(tier: int) -> str:
    return TIER_NAMES.get(tier, "-")


def actionable(signal: signal_pb2.Signal, config: NotifyConfig) -> bool:
    if signal.decision not in (signal_pb2.LONG, signal_pb2.SHORT):
        return False
    return TIER_RANK.get(signal.tier, 0) >= MIN_RANK[config.min_tier]


def signal_key(signal: signal_pb2.Signal) -> str:
    return f"signal:{signal.signal_id}"


def signal_text(signal: signal_pb2.Signal) -> str:
    suffix = VENUE_SUFFIX.get(signal.venue, "")
    simulated = " [SIMULATED]" if common_pb2.SIMULATED in signal.quality_flags and not suffix else ""
    return (f"{decision_name(signal.decision)} {signal.symbol}{suffix} tier {tier_name(signal.tier)} "
            f"p_up={signal.p_up:.2f} net {signal.net_utility_bps:.1f} bps (cost {signal.estimated_cost_bps:.1f}) "
            f"{signal.horizon_min}m horizon{simulated} — signal {signal.signal_id}")


def risk_post(outcome: outcome_pb2.Outcome, state: NotifyState) -> Post | None:
    """The post for a change of the paper book's risk state, if this outcome brings one."""
    to = outcome.risk_state
    if not to or outcome.exit_us < state.risk_as_of_us:
        return None  # none stated, or older than the state already known
    before, state.risk_state, state.risk_as_of_us = state.risk_state, to, outcome.exit_us
    if before == to or (before is None and to == "NORMAL"):
        return None
    label = str(outcome_pb2.OutcomeLabel.Name(outcome.label))
    after = (f"after {decision_name(outcome.decision)} {outcome.symbol} {label} net {outcome.net_return_bps:+.1f} "
             f"bps, paper equity {outcome.paper_equity:.4f} — outcome {outcome.outcome_id}")
    if before is None:
        return make_post(f"risk:UNKNOWN->{to}:{outcome.outcome_id}", "risk", f"RISK {to} (first seen) {after}",
                         state.config)
    return make_post(f"risk:{before}->{to}:{outcome.outcome_id}", "risk", f"RISK {before} -> {to} {after}",
                     state.config)


def job_post(event: JobEvent, config: NotifyConfig) -> Post | None:
    if not event.state.terminal:
        return None
    if event.state is JobState.FAILED:
        text = f"JOB {event.job_id} failed at {event.progress:.0%}: {event.message}"
    else:
        text = f"JOB {event.job_id} succeeded: {event.message}"
    return make_post(f"job:{event.job_id}:{event.state.value}", "job", text, config)


def process(events: Sequence[Event], state: NotifyState, clock: Clock) -> list[Post]:
    """The posts to send now, in order. Call it with no events too: a waiting post or digest goes out as soon as
    the bucket has a token again."""
    config = state.config
    state.refill(clock.now_us())
    signals: list[signal_pb2.Signal] = []
    for event in events:
        if isinstance(event, signal_pb2.Signal):
            if not actionable(event, config):
                state.count("signals_filtered")
            elif state.first_time(signal_key(event)):
                signals.append(event)
            continue
        if isinstance(event, outcome_pb2.Outcome):
            # A redelivered outcome is skipped whole: compared with the newer state it would fake a transition.
            post = risk_post(event, state) if state.first_time(f"outcome:{event.outcome_id}") else None
        else:
            post = job_post(event, config)
        if post is not None and state.first_time(post.key):
            state.pending.append(post)
    out: list[Post] = []
    while state.pending and state.take():
        post = state.pending.popleft()
        state.count(f"{post.kind}_posts")
        out.append(post)
    if state.digest.count and not state.pending and state.take():
        out.append(state.digest.post(config))
        state.count("digest_posts")
        state.digest = Digest()
    for signal in signals:
        # Behind a waiting digest or risk/job post a signal joins the digest, so posts keep their order.
        if not state.pending and not state.digest.count and state.take():
            out.append(make_post(signal_key(signal), "signal", signal_text(signal), config))
            state.count("signal_posts")
        else:
            state.digest.add(signal_key(signal), decision_name(signal.decision), signal.symbol)
            state.count("signals_digested")
    return out
