"""Jobs (services/jobs/): start training, walk-forward evaluation and backtests (admin, audited), read their state
and follow their progress (read scope). A worker process (``surge jobs worker``) runs them; their state lives in
Redis, so it survives a gateway restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from services.gateway.deps import RedisDep, SettingsDep, WarehouseDep
from services.gateway.errors import REDIS_ERRORS, ErrorOut
from services.gateway.routers.models import ADMIN_ERRORS
from services.gateway.security import AdminToken, ReadDep, audit
from services.jobs import kinds
from services.jobs.store import Job, JobError, JobState, JobStore
from streams.runtime.clock import LiveClock

router = APIRouter(prefix="/jobs", tags=["jobs"])
JobIdP = Annotated[str, Path(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$", description="job id")]
EVENT_ID = r"^[0-9]{1,20}-[0-9]{1,20}$"
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such job (or it expired)"}}
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in ADMIN_ERRORS.items() if k != 409}, **REDIS_ERRORS,
    422: {"model": ErrorOut, "description": "invalid parameters, or a path outside the allowed folders"}}


def _store(client: Any, settings: Any) -> JobStore:
    return JobStore(client, LiveClock(), settings.jobs_ttl_days)


def _submit(kind: str, body: BaseModel, client: Any, settings: Any, warehouse: Any, token: Any) -> Job:
    try:
        params = kinds.validate(kind, body.model_dump(mode="json"), kinds.JobPaths(settings, "-"))
    except (kinds.JobInputError, ValidationError) as exc:
        raise HTTPException(422, str(exc)) from None
    doc = params.model_dump(mode="json")
    job_id = JobStore.new_id()
    # Audited before it is queued: a warehouse that is down refuses the job (503) instead of a retry queueing
    # a second, unaudited one.
    audit(warehouse, f"job_submit_{kind}", token.actor, job_id, orjson.dumps(doc).decode()[:2_000])
    return _store(client, settings).submit(kind, doc, token.actor, job_id)


@router.post("/train", response_model=Job, status_code=202, responses=SUBMIT_ERRORS)
def submit_train(body: kinds.TrainParams, client: RedisDep, settings: SettingsDep, warehouse: WarehouseDep,
                 token: AdminToken) -> Job:
    """Queue ``surge train`` (audited); follow it at ``/jobs/{id}`` and ``/jobs/{id}/events``."""
    return _submit("train", body, client, settings, warehouse, token)


@router.post("/evaluate", response_model=Job, status_code=202, responses=SUBMIT_ERRORS)
def submit_evaluate(body: kinds.EvaluateParams, client: RedisDep, settings: SettingsDep, warehouse: WarehouseDep,
                    token: AdminToken) -> Job:
    """Queue ``surge evaluate --walk-forward`` (audited)."""
    return _submit("evaluate", body, client, settings, warehouse, token)


@router.post("/backtest", response_model=Job, status_code=202, responses=SUBMIT_ERRORS)
def submit_backtest(body: kinds.BacktestParams, client: RedisDep, settings: SettingsDep, warehouse: WarehouseDep,
                    token: AdminToken) -> Job:
    """Queue ``surge backtest`` (audited); the run is stored in ``backtest_runs`` (``/reports/backtest``)."""
    return _submit("backtest", body, client, settings, warehouse, token)


@router.get("", response_model=list[Job], responses=REDIS_ERRORS, dependencies=[ReadDep])
def list_jobs(client: RedisDep, settings: SettingsDep,
              state: Annotated[JobState | None, Query()] = None,
              kind: Annotated[Literal["train", "evaluate", "backtest"] | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=1_000)] = 100) -> list[Job]:
    """Jobs, newest first."""
    return _store(client, settings).recent(limit, state, kind)


@router.get("/{job_id}", response_model=Job, responses={**REDIS_ERRORS, **NOT_FOUND}, dependencies=[ReadDep])
def get_job(client: RedisDep, settings: SettingsDep, job_id: JobIdP) -> Job:
    try:
        return _store(client, settings).get(job_id)
    except JobError as exc:
        raise HTTPException(404, str(exc)) from None


def _sse(event: Any) -> bytes:
    doc = dataclasses.asdict(event)  # orjson writes the JobState as its value
    return f"id: {event.event_id}\nevent: progress\ndata: ".encode() + orjson.dumps(doc) + b"\n\n"


@router.get("/{job_id}/events", dependencies=[ReadDep],
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events: one `progress` event per report, with its id"},
                       204: {"description": "the job has ended and nothing follows the given event id"},
                       **REDIS_ERRORS, **NOT_FOUND})
async def job_events(
    request: Request, client: RedisDep, settings: SettingsDep, job_id: JobIdP,
    after: Annotated[str | None, Query(max_length=41, pattern=EVENT_ID, description="resume after this event id")]
    = None,
    last_event_id: Annotated[str | None, Header(pattern=EVENT_ID, description="as `after`; sent by "
                                                                              "EventSource on reconnect")] = None,
    timeout_s: Annotated[float | None, Query(gt=0, le=86_400, description="close after this long")] = None,
    access_token: Annotated[str | None, Query(max_length=200, description=(
        "the bearer token, for clients that cannot send an Authorization header (a browser's EventSource); "
        "read by the auth dependency, and only on the streaming routes"))] = None,
) -> Response:
    """The job's progress events from the first (or after ``after`` / ``Last-Event-ID``), live until the job
    ends: the stream closes after the succeeded or failed event."""
    store = _store(client, settings)
    try:
        await asyncio.to_thread(store.get, job_id)
    except JobError as exc:
        raise HTTPException(404, str(exc)) from None
    cursor = after or last_event_id or "0"
    pending = await asyncio.to_thread(store.events, job_id, cursor, None)
    state = await asyncio.to_thread(store.state_of, job_id)
    if not pending and (state is None or state.terminal):
        # Nothing after the cursor of an ended job (an EventSource reconnecting after the last event): 204 is
        # what makes EventSource stop reconnecting.
        return Response(status_code=204)
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None

    async def events() -> AsyncIterator[bytes]:
        position = cursor
        batch = pending
        last_beat = time.monotonic()
        while True:
            for event in batch:
                position = event.event_id
                yield _sse(event)
                if event.state.terminal:
                    return
            if (deadline is not None and time.monotonic() >= deadline) or await request.is_disconnected():
                return
            if not batch:
                ended = await asyncio.to_thread(store.state_of, job_id)
                if ended is None or ended.terminal:  # expired, or ended since the read: send what is left
                    for event in await asyncio.to_thread(store.events, job_id, position, None):
                        yield _sse(event)
                    return
                if time.monotonic() - last_beat > 15:
                    last_beat = time.monotonic()
                    yield b": keep-alive\n\n"
            batch = await asyncio.to_thread(store.events, job_id, position, 500)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
