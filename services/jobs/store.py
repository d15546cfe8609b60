"""Jobs in Redis: each job's state, its progress events, the queue a worker claims from, and the global event
stream the notifier follows.

Keys (all under ``surge:jobs:``):

* ``job:{id}`` - a hash: kind, params (JSON), state, progress (0..1), message, actor, created/started/finished
  times (µs), result (JSON), error, attempts. It outlives the gateway and the worker (no TTL until it ends, then
  ``SURGE_JOBS_TTL_DAYS``).
* ``job:{id}:events`` - a stream of progress events (``progress``, ``state``, ``message``), capped at
  ``EVENTS_PER_JOB``; its entry ids are the SSE event ids, so a client resumes with ``Last-Event-ID``.
* ``queue`` - job ids waiting; a worker moves one atomically (``BLMOVE``) onto ``running:{worker}``, so a job a
  worker was running when it died is still listed there, and that worker puts it back on start (``recover``).
* ``index`` - a sorted set of job ids by creation time (listing, newest first).
* ``events`` - every job's state changes, for ``surge notify``.

Times come from the injected clock; nothing here reads the wall clock itself.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson
import redis

from streams.runtime.clock import Clock

PREFIX: Final = "surge:jobs:"
QUEUE: Final = PREFIX + "queue"
INDEX: Final = PREFIX + "index"
EVENTS: Final = PREFIX + "events"
EVENTS_PER_JOB: Final = 1_000
GLOBAL_EVENTS: Final = 10_000


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    kind: str
    params: dict[str, Any]
    state: JobState
    progress: float
    message: str
    actor: str
    created_us: int
    started_us: int
    finished_us: int
    result: dict[str, Any]
    error: str
    attempts: int

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes, bytes]) -> Job:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(job_id=job_id, kind=f["kind"], params=orjson.loads(f.get("params", "{}")),
                   state=JobState(f["state"]), progress=float(f.get("progress", 0)), message=f.get("message", ""),
                   actor=f.get("actor", ""), created_us=int(f.get("created_us", 0)),
                   started_us=int(f.get("started_us", 0)), finished_us=int(f.get("finished_us", 0)),
                   result=orjson.loads(f.get("result", "{}")), error=f.get("error", ""),
                   attempts=int(f.get("attempts", 0)))


@dataclass(frozen=True, slots=True)
class JobEvent:
    event_id: str       # the stream entry id: "<ms>-<seq>"
    job_id: str
    state: JobState
    progress: float
    message: str
    ts_us: int


_Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: (id, fields)


class JobError(ValueError):
    """A job that does not exist, or a transition that is not allowed."""


def _key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _events_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:events"


def _running_key(worker: str) -> str:
    return f"{PREFIX}running:{worker}"


class JobStore:
    def __init__(self, client: redis.Redis, clock: Clock, ttl_days: float = 7.0) -> None:
        self.redis = client
        self.clock = clock
        self.ttl_s = max(1, round(ttl_days * 86_400))

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def submit(self, kind: str, params: Mapping[str, Any], actor: str, job_id: str | None = None) -> Job:
        job_id = job_id or self.new_id()
        now = self.clock.now_us()
        fields = {"kind": kind, "params": orjson.dumps(dict(params)), "state": JobState.QUEUED.value,
                  "progress": 0.0, "message": "queued", "actor": actor, "created_us": now, "started_us": 0,
                  "finished_us": 0, "result": b"{}", "error": "", "attempts": 0}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(_key(job_id), mapping=fields)  # type: ignore[arg-type]  # redis-py's mapping type is too narrow
        pipe.zadd(INDEX, {job_id: now})
        self._event(pipe, job_id, JobState.QUEUED, 0.0, "queued", now)
        pipe.lpush(QUEUE, job_id)
        pipe.execute()
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        raw = self.redis.hgetall(_key(job_id))
        if not raw:
            raise JobError(f"no job {job_id}")
        return Job.from_hash(job_id, raw)  # type: ignore[arg-type]  # a sync client returns a dict

    def recent(self, limit: int = 100, state: JobState | None = None, kind: str | None = None) -> list[Job]:
        out: list[Job] = []
        start = 0
        while len(out) < limit:
            ids = cast(list[bytes], self.redis.zrevrange(INDEX, start, start + 199))
            if not ids:
                break
            start += len(ids)
            for raw_id in ids:
                try:
                    job = self.get(raw_id.decode())
                except JobError:  # expired after it ended: drop it from the index too
                    self.redis.zrem(INDEX, raw_id)
                    continue
                if (state is None or job.state == state) and (kind is None or job.kind == kind):
                    out.append(job)
                    if len(out) == limit:
                        break
        return out

    def claim(self, worker: str, timeout_s: float) -> Job | None:
        """The oldest queued job, moved onto this worker's running list and marked running; None on timeout."""
        # redis-py types the timeout as int; the server takes fractional seconds.
        raw = self.redis.blmove(QUEUE, _running_key(worker), timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        if raw is None:
            return None
        job_id = raw.decode()  # type: ignore[union-attr]  # a sync client returns bytes
        now = self.clock.now_us()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(_key(job_id), mapping={"state": JobState.RUNNING.value, "started_us": now,
                                         "message": f"running on {worker}"})
        pipe.hincrby(_key(job_id), "attempts", 1)
        self._event(pipe, job_id, JobState.RUNNING, 0.0, f"running on {worker}", now)
        pipe.execute()
        return self.get(job_id)

    def recover(self, worker: str, max_attempts: int) -> list[str]:
        """Put back on the queue what this worker was running when it stopped (it starts again from the
        beginning), unless it has already been tried ``max_attempts`` times: then it fails, so a job that kills
        its worker cannot do so forever. Returns the ids requeued."""
        moved: list[str] = []
        while (raw := self.redis.lindex(_running_key(worker), -1)) is not None:
            job_id = raw.decode()  # type: ignore[union-attr]  # a sync client returns bytes
            try:
                attempts = self.get(job_id).attempts
            except JobError:  # its record expired: nothing to resume
                self.redis.lrem(_running_key(worker), 1, job_id)
                continue
            if attempts >= max_attempts:
                self.finish(job_id, worker, error=f"{worker} stopped while running it {max_attempts} time(s); "
                                                  "not retried")
                continue
            self.redis.lmove(_running_key(worker), QUEUE, "RIGHT", "RIGHT")
            moved.append(job_id)
            now = self.clock.now_us()
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(_key(job_id), mapping={"state": JobState.QUEUED.value, "progress": 0.0,
                                             "message": f"requeued: {worker} stopped while running it"})
            self._event(pipe, job_id, JobState.QUEUED, 0.0, f"requeued: {worker} stopped while running it", now)
            pipe.execute()
        return moved

    def state_of(self, job_id: str) -> JobState | None:
        """The job's state, or None once its record is gone (expired)."""
        raw = self.redis.hget(_key(job_id), "state")
        return JobState(raw.decode()) if isinstance(raw, bytes) else None

    def progress(self, job_id: str, fraction: float, message: str) -> None:
        fraction = min(1.0, max(0.0, fraction))
        now = self.clock.now_us()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(_key(job_id), mapping={"progress": fraction, "message": message})
        self._event(pipe, job_id, JobState.RUNNING, fraction, message, now, announce=False)
        pipe.execute()

    def finish(self, job_id: str, worker: str, *, result: Mapping[str, Any] | None = None, error: str = "") -> Job:
        state = JobState.FAILED if error else JobState.SUCCEEDED
        now = self.clock.now_us()
        message = error.splitlines()[0][:500] if error else "done"
        fields: dict[str, Any] = {"state": state.value, "finished_us": now, "message": message,
                                  "result": orjson.dumps(dict(result or {})), "error": error}
        if not error:
            fields["progress"] = 1.0  # a failed job keeps the progress it reached
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(_key(job_id), mapping=fields)  # type: ignore[arg-type]  # redis-py's mapping type is too narrow
        self._event(pipe, job_id, state, 1.0 if not error else self.get(job_id).progress, message, now)
        pipe.lrem(_running_key(worker), 1, job_id)
        pipe.expire(_key(job_id), self.ttl_s)
        pipe.expire(_events_key(job_id), self.ttl_s)
        pipe.execute()
        return self.get(job_id)

    def events(self, job_id: str, after: str = "0", block_ms: int | None = None,
               count: int = 100) -> list[JobEvent]:
        """Progress events after the entry id ``after`` ("0": from the start); waits up to ``block_ms``."""
        return [_event_of(job_id, entry_id, fields)
                for entry_id, fields in self._xread(_events_key(job_id), after, block_ms, count)]

    def announcements(self, after: str = "0", block_ms: int | None = None, count: int = 100) -> list[JobEvent]:
        """State changes of every job (the global stream), after the entry id ``after``."""
        return [_event_of(fields[b"job_id"].decode(), entry_id, fields)
                for entry_id, fields in self._xread(EVENTS, after, block_ms, count)]

    def _xread(self, key: str, after: str, block_ms: int | None, count: int) -> list[_Entry]:
        found = cast(list[tuple[bytes, list[_Entry]]] | None,
                     self.redis.xread({key: after}, count=count, block=block_ms))
        return [entry for _, entries in found or [] for entry in entries]

    def _event(self, pipe: Any, job_id: str, state: JobState, fraction: float, message: str, now_us: int,
               *, announce: bool = True) -> None:
        fields = {"state": state.value, "progress": fraction, "message": message, "ts_us": now_us}
        pipe.xadd(_events_key(job_id), fields, maxlen=EVENTS_PER_JOB, approximate=True)
        if announce:
            pipe.xadd(EVENTS, {**fields, "job_id": job_id}, maxlen=GLOBAL_EVENTS, approximate=True)


def _event_of(job_id: str, entry_id: bytes, fields: Mapping[bytes, bytes]) -> JobEvent:
    return JobEvent(event_id=entry_id.decode(), job_id=job_id, state=JobState(fields[b"state"].decode()),
                    progress=float(fields[b"progress"]), message=fields[b"message"].decode(),
                    ts_us=int(fields[b"ts_us"]))
