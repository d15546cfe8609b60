"""A/B tests between two registered model versions (ClickHouse ``ab_tests``): list and read (read scope), start and
stop (admin, audited with the token as actor).

A test is a record of an experiment: which model is control (A), which is the challenger (B), the share of
traffic B gets and on which symbols, and its result once stopped. The table is a ReplacingMergeTree on
``updated_us``, so the newest row per ``test_id`` is its state; the routes read exactly that row.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS, ErrorOut
from services.gateway.routers.models import ADMIN_ERRORS
from services.gateway.security import AdminToken, ReadDep, audit
from streams.runtime.clock import LiveClock
from streams.storage.registry import ModelRegistry

router = APIRouter(prefix="/ab-tests", tags=["ab-tests"])
COLUMNS = ("test_id", "name", "model_a", "model_b", "traffic_b", "symbols", "status", "started_us", "ended_us",
           "created_by", "result", "updated_us")
TestIdP = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
VERSION_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
SYMBOL_PATTERN = r"^[A-Z0-9]{2,20}$"
Status = Literal["running", "stopped"]

AB_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ADMIN_ERRORS,
    404: {"model": ErrorOut, "description": "no such test"},
    409: {"model": ErrorOut, "description": "refused: unknown model, same model twice, or already stopped"}}


class AbTestIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    model_a: str = Field(min_length=1, max_length=128, pattern=VERSION_PATTERN, description="control")
    model_b: str = Field(min_length=1, max_length=128, pattern=VERSION_PATTERN, description="challenger")
    traffic_b: float = Field(gt=0.0, le=0.5, description="share of traffic model B gets")
    symbols: list[Annotated[str, Field(pattern=SYMBOL_PATTERN)]] = Field(
        default_factory=list, max_length=500, description="symbols in the test; empty: all")


class AbTestOut(BaseModel):
    test_id: str
    name: str
    model_a: str
    model_b: str
    traffic_b: float
    symbols: list[str]
    status: Status
    started_us: int
    ended_us: int
    created_by: str
    result: str
    updated_us: int


def _newest(warehouse: Any, where: str = "", parameters: dict[str, Any] | None = None,
            status: Status | None = None, limit: int = 1_000) -> list[AbTestOut]:
    # LIMIT 1 BY reads the newest row per test whether or not the ReplacingMergeTree has merged yet; the status
    # filter applies to that row only, so a stopped test's older "running" row never matches.
    columns = ", ".join(COLUMNS)
    rows = warehouse.query(
        f"SELECT {columns} FROM (SELECT {columns} FROM {warehouse.database}.ab_tests {where} "
        "ORDER BY updated_us DESC LIMIT 1 BY test_id) "
        "WHERE {status:String} = '' OR status = {status:String} ORDER BY updated_us DESC LIMIT {limit:UInt32}",
        {**(parameters or {}), "status": status or "", "limit": limit})
    return [AbTestOut.model_validate(r) for r in rows]


def _get(warehouse: Any, test_id: str) -> AbTestOut:
    found = _newest(warehouse, "WHERE test_id = {test_id:String}", {"test_id": test_id})
    if not found:
        raise HTTPException(404, f"no A/B test {test_id}")
    return found[0]


def _write(warehouse: Any, test: AbTestOut) -> None:
    warehouse.insert("ab_tests", [[getattr(test, c) for c in COLUMNS]], list(COLUMNS))


@router.get("", response_model=list[AbTestOut], responses=WAREHOUSE_ERRORS, dependencies=[ReadDep])
def list_tests(warehouse: WarehouseDep, status: Annotated[Status | None, Query()] = None,
               limit: Annotated[int, Query(ge=1, le=1_000)] = 100) -> list[AbTestOut]:
    """A/B tests, newest first, each in its current state."""
    return _newest(warehouse, status=status, limit=limit)


@router.get("/{test_id}", response_model=AbTestOut, dependencies=[ReadDep],
            responses={**WAREHOUSE_ERRORS, 404: {"model": ErrorOut, "description": "no such test"}})
def get_test(warehouse: WarehouseDep, test_id: TestIdP) -> AbTestOut:
    return _get(warehouse, test_id)


@router.post("", response_model=AbTestOut, status_code=201, responses=AB_ADMIN_ERRORS)
def start_test(warehouse: WarehouseDep, token: AdminToken, body: AbTestIn) -> AbTestOut:
    """Start a test between two registered versions (audited)."""
    if body.model_a == body.model_b:
        raise HTTPException(409, "model_a and model_b are the same version")
    known = {r.model_version for r in ModelRegistry(warehouse, LiveClock()).versions()}
    missing = [v for v in (body.model_a, body.model_b) if v not in known]
    if missing:
        raise HTTPException(409, f"not in the model registry: {', '.join(missing)}")
    now_us = LiveClock().now_us()
    test = AbTestOut(test_id=uuid.uuid4().hex, name=body.name, model_a=body.model_a, model_b=body.model_b,
                     traffic_b=body.traffic_b, symbols=sorted(set(body.symbols)), status="running",
                     started_us=now_us, ended_us=0, created_by=token.actor, result="", updated_us=now_us)
    _write(warehouse, test)
    audit(warehouse, "ab_test_start", token.actor, test.test_id,
          f"{test.name}: {test.model_a} vs {test.model_b} at {test.traffic_b:.0%}")
    return test


@router.post("/{test_id}/stop", response_model=AbTestOut, responses=AB_ADMIN_ERRORS)
def stop_test(warehouse: WarehouseDep, token: AdminToken, test_id: TestIdP,
              result: Annotated[str, Query(max_length=2_000, description="the conclusion, for the record")] = "",
              ) -> AbTestOut:
    """Stop a running test and record its result (audited)."""
    test = _get(warehouse, test_id)
    if test.status == "stopped":
        raise HTTPException(409, f"A/B test {test_id} is already stopped")
    now_us = max(LiveClock().now_us(), test.updated_us + 1)  # strictly newer, so it replaces the running row
    stopped = test.model_copy(update={"status": "stopped", "ended_us": now_us, "result": result,
                                      "updated_us": now_us})
    _write(warehouse, stopped)
    audit(warehouse, "ab_test_stop", token.actor, test_id, result)
    return stopped
