"""The contract between a stage's pure core and the runner. No Kafka imports here or in any core."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from streams.runtime.clock import Clock, LiveClock
from streams.runtime.observability import HealthState
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

M = TypeVar("M", bound=Message)
S = TypeVar("S")


class FatalStageError(Exception):
    """A failure that is not the input's fault (e.g. the warehouse is down): the runner must not dead-letter
    the batch or commit its offsets; the stage exits and is restarted, and the batch is read again."""


class DownstreamUnavailable(Exception):
    """Raised by a stage's ``flush`` when the store it writes is down (not the data's fault). The runner pauses
    the consumer, reports unhealthy, and retries the same flush with backoff, without limit; nothing is
    committed, dropped or dead-lettered meanwhile. ``flush`` must keep what it has not yet written."""


@dataclass(frozen=True, slots=True)
class InRecord(Generic[M]):
    """One decoded input message and where it came from."""

    value: M
    key: str
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Emit:
    """One output message; ``exchange_us`` is the event time behind it, for latency metrics."""

    topic: Topic
    key: str
    value: Message
    exchange_us: int


@dataclass(frozen=True, slots=True)
class Reject:
    """An input the core refuses: it goes to dlq.v1 with this reason."""

    record: InRecord[Any]
    error_type: str
    reason: str


@dataclass(slots=True)
class Outputs:
    emits: list[Emit] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.emits.extend(other.emits)
        self.rejects.extend(other.rejects)


ProcessFn = Callable[[Sequence[InRecord[Any]], Any, Clock], Outputs]


@dataclass(frozen=True)
class StageContext:
    """What a stage's state factory gets from the process that runs it: its settings, the clock every core
    reads, the registry behind the stage's own /metrics, its health (for detail on /healthz), and hooks run once
    the consumer is subscribed (e.g. a background poller that should not start before the stage can serve)."""

    name: str
    settings: Settings
    clock: Clock
    registry: CollectorRegistry
    health: HealthState = field(default_factory=HealthState)  # the stage's /healthz and /readyz
    start_hooks: list[Callable[[], None]] = field(default_factory=list)

    def on_start(self, hook: Callable[[], None]) -> None:
        self.start_hooks.append(hook)

    @classmethod
    def standalone(cls, name: str, settings: Settings, clock: Clock | None = None) -> StageContext:
        """A context outside a runner (tests, batch tools): its own registry, the live clock unless given."""
        return cls(name, settings, clock or LiveClock(), CollectorRegistry())


@dataclass(frozen=True, slots=True)
class StageSpec(Generic[S]):
    """What the runner needs to know about a consumer-driven stage."""

    name: str
    input_topics: tuple[Topic, ...]
    make_state: Callable[[StageContext], S]
    process: Callable[[Sequence[InRecord[Any]], S, Clock], Outputs]
    batch_max: int | None = None        # overrides Settings.batch_max
    batch_timeout_ms: int | None = None  # fill window after the first record; overrides Settings.batch_timeout_ms
    fetch_wait_max_ms: int | None = None  # overrides Settings.fetch_wait_max_ms for stages off the latency path
    on_close: Callable[[S], None] | None = None
    # A batching sink: called after ``process`` and before the batch's offsets can be committed, so the core
    # stays pure and the I/O happens at commit time. Returns the records the store refused (dead-lettered);
    # raises DownstreamUnavailable while the store is down.
    flush: Callable[[S], list[Reject]] | None = None
    # Captures the state before a batch and returns the function that puts it back, so that after a failed batch
    # the record-by-record retry starts from the state the batch found, not one the batch half changed.
    checkpoint: Callable[[S], Callable[[], None]] | None = None
