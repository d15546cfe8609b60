"""The job worker (``surge jobs worker``, one of ``surge run``'s children): claims queued jobs from Redis and runs
them one at a time in this process, reporting progress into the job's record and event stream.

On start it puts back on the queue whatever it was running when it last stopped (``JobStore.recover``), so a job
survives a worker or gateway restart; one that has already killed its worker ``SURGE_JOBS_MAX_ATTEMPTS`` times
fails instead. Progress reports are thinned (a step of at least 1 %, a new message, or a log line) so a backtest's
per-decision callback does not flood Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.jobs import kinds
from services.jobs.store import Job, JobStore
from streams.runtime.settings import Settings

log = logging.getLogger("surge.jobs")
Execute = Callable[[str, dict[str, Any], kinds.JobPaths, kinds.Reporter], dict[str, Any]]


@dataclass
class ThinnedReporter:
    """Writes a job's progress when it moved by ``min_step`` or a new phase began (the message's first word
    changed); log lines (fraction < 0) always, keeping the last fraction."""

    store: JobStore
    job_id: str
    min_step: float = 0.01
    fraction: float = 0.0
    message: str = ""
    _written_step: int = field(default=-1)

    def __call__(self, fraction: float, message: str) -> None:
        if fraction < 0:
            self._write(message)
            return
        step = int(fraction / self.min_step + 1e-9)
        self.fraction = max(self.fraction, fraction)
        if step <= self._written_step and _phase(message) == _phase(self.message):
            return
        self.message, self._written_step = message, max(self._written_step, step)
        self._write(message)

    def _write(self, message: str) -> None:
        # Best effort: a Redis hiccup costs a progress line, never the job (its end is retried: Worker.finish).
        try:
            self.store.progress(self.job_id, self.fraction, message)
        except redis.RedisError as exc:
            log.warning("progress of job %s not written: %s", self.job_id, exc)


def _phase(message: str) -> str:
    return message.split(" ", 1)[0]


class Worker:
    def __init__(self, store: JobStore, settings: Settings, *, execute: Execute = kinds.execute,
                 registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.settings = settings
        self.name = settings.jobs_worker_name
        self.execute = execute
        registry = registry or CollectorRegistry()
        self.registry = registry
        self.finished = Counter("surge_jobs_finished_total", "Jobs this worker finished", ["kind", "state"],
                                registry=registry)
        self.running = Gauge("surge_jobs_running", "Jobs this worker is running now", registry=registry)
        self.seconds = Counter("surge_jobs_seconds_total", "Wall seconds spent running jobs", ["kind"],
                               registry=registry)

    def run(self, stop: threading.Event, poll_s: float = 1.0, beat: Callable[[], None] = lambda: None) -> None:
        requeued = self.store.recover(self.name, self.settings.jobs_max_attempts)
        if requeued:
            log.warning("requeued %d job(s) %s was running when it stopped: %s", len(requeued), self.name,
                        ", ".join(requeued))
        while not stop.is_set():
            beat()
            job = self.store.claim(self.name, poll_s)
            if job is not None:
                self.run_one(job)

    def run_one(self, job: Job) -> Job:
        log.info("job %s (%s) started by %s", job.job_id, job.kind, job.actor)
        started = time.perf_counter()
        self.running.inc()
        try:
            result = self.execute(job.kind, job.params, kinds.JobPaths(self.settings, job.job_id),
                                  ThinnedReporter(self.store, job.job_id))
        except Exception as exc:  # any failure of the job is its result; the worker goes on with the next one
            log.error("job %s (%s) failed: %s", job.job_id, job.kind, exc)
            done = self.finish(job, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        else:
            done = self.finish(job, result=result)
            log.info("job %s (%s) succeeded", job.job_id, job.kind)
        finally:
            self.running.dec()
            self.seconds.labels(job.kind).inc(time.perf_counter() - started)
        self.finished.labels(job.kind, done.state.value).inc()
        return done

    def finish(self, job: Job, *, result: dict[str, Any] | None = None, error: str = "",
               attempts: int = 8, sleep: Callable[[float], None] = time.sleep) -> Job:
        """Record the end, retrying a Redis outage with backoff (0.5 s doubling, 8 tries): the result of a long
        job is worth waiting for. Still down after that: the error propagates and the job stays on this worker's
        running list, so the next start requeues it."""
        for attempt in range(attempts):
            try:
                return self.store.finish(job.job_id, self.name, result=result, error=error)
            except redis.RedisError as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("end of job %s not recorded (%s); retrying", job.job_id, exc)
                sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")
