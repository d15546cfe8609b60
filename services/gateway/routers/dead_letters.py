"""Dead letters: what the stages refused and why, from the warehouse (the sink stores every one)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS

router = APIRouter(prefix="/dead-letters", tags=["dead-letters"])


class DeadLetterOut(BaseModel):
    dlq_id: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    error_type: str
    reason: str
    payload_bytes: int
    failed_us: int


class DeadLetterCount(BaseModel):
    stage: str
    error_type: str
    count: int
    last_failed_us: int
    example_reason: str


@router.get("", response_model=list[DeadLetterOut], responses=WAREHOUSE_ERRORS)
def list_dead_letters(
    warehouse: WarehouseDep,
    stage: Annotated[str | None, Query(max_length=32)] = None,
    error_type: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[DeadLetterOut]:
    """Newest first; the original payload stays in ClickHouse (payload_b64) for replay."""
    rows = warehouse.query(
        f"SELECT dlq_id, stage, source_topic, source_partition, source_offset, error_type, reason, "
        f"length(base64Decode(payload_b64)) AS payload_bytes, failed_us FROM {warehouse.database}.dead_letters FINAL "
        "WHERE ({stage:Nullable(String)} IS NULL OR stage = {stage:Nullable(String)}) "
        "AND ({error_type:Nullable(String)} IS NULL OR error_type = {error_type:Nullable(String)}) "
        "ORDER BY failed_us DESC LIMIT {limit:UInt32}",
        {"stage": stage, "error_type": error_type, "limit": limit},
    )
    return [DeadLetterOut.model_validate(r) for r in rows]


@router.get("/stats", response_model=list[DeadLetterCount], responses=WAREHOUSE_ERRORS)
def dead_letter_stats(warehouse: WarehouseDep) -> list[DeadLetterCount]:
    """Counts per stage and reason class, most frequent first."""
    rows = warehouse.query(
        f"SELECT stage, error_type, count() AS count, max(failed_us) AS last_failed_us, "
        f"any(reason) AS example_reason FROM {warehouse.database}.dead_letters FINAL "
        "GROUP BY stage, error_type ORDER BY count DESC, stage, error_type"
    )
    return [DeadLetterCount.model_validate(r) for r in rows]
