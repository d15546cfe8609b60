"""The model registry over HTTP: list (read), deploy and rollback (admin, audited with the token as actor)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS, ErrorOut
from services.gateway.security import AdminToken, ReadDep
from streams.runtime.clock import LiveClock
from streams.storage.registry import ModelRecord, ModelRegistry, RegistryError

router = APIRouter(prefix="/models", tags=["models"])
VersionP = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
ReasonQ = Annotated[str, Query(max_length=500, description="why, for the audit log")]


class ModelOut(BaseModel):
    model_version: str
    feature_version: str
    horizons: list[int]
    calibration_ece: float | None
    is_active: bool
    is_canary: bool
    deployed_at_us: int
    deployed_by: str
    rollback_target: str
    metrics: Any


def _out(rec: ModelRecord) -> ModelOut:
    return ModelOut(model_version=rec.model_version, feature_version=rec.feature_version,
                    horizons=list(rec.horizons),
                    calibration_ece=rec.calibration_ece if math.isfinite(rec.calibration_ece) else None,
                    is_active=rec.is_active,
                    is_canary=rec.is_canary, deployed_at_us=rec.deployed_at_us, deployed_by=rec.deployed_by,
                    rollback_target=rec.rollback_target,
                    metrics=orjson.loads(orjson.dumps(rec.metrics)))  # NaN -> null


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no or invalid token"},
    403: {"model": ErrorOut, "description": "the token lacks scope admin"},
    409: {"model": ErrorOut, "description": "the registry refused the change"}, **WAREHOUSE_ERRORS}


@router.get("", response_model=list[ModelOut], responses=WAREHOUSE_ERRORS, dependencies=[ReadDep])
def list_models(warehouse: WarehouseDep) -> list[ModelOut]:
    return [_out(r) for r in ModelRegistry(warehouse, LiveClock()).versions()]


@router.post("/{version}/deploy", response_model=ModelOut, responses=ADMIN_ERRORS)
def deploy(warehouse: WarehouseDep, token: AdminToken, version: VersionP,
           canary: Annotated[bool, Query()] = False, reason: ReasonQ = "") -> ModelOut:
    """Activate ``version`` (the infer stage hot-reloads it) or make it the canary."""
    try:
        return _out(ModelRegistry(warehouse, LiveClock()).deploy(version, token.actor, canary=canary, reason=reason))
    except RegistryError as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/{version}/rollback", response_model=ModelOut, responses=ADMIN_ERRORS)
def rollback(warehouse: WarehouseDep, token: AdminToken, version: VersionP, reason: ReasonQ = "") -> ModelOut:
    """Roll the active ``version`` back to its rollback target (409 when ``version`` is not the active one)."""
    registry = ModelRegistry(warehouse, LiveClock())
    active = registry.active()
    if active is None or active.model_version != version:
        raise HTTPException(409, f"{version} is not the active model")
    try:
        return _out(registry.rollback(token.actor, reason))
    except RegistryError as exc:
        raise HTTPException(409, str(exc)) from None
