"""Outcomes: every resolved signal's triple-barrier result, from the warehouse."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Request, Response

from services.gateway import pagination
from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS
from services.gateway.routers.signals import OutcomeOut, SymbolQ, _finite, norm_symbol
from streams.sink.core import OUTCOME_COLUMNS

router = APIRouter(prefix="/outcomes", tags=["outcomes"])

_SELECT: Final = ", ".join(OUTCOME_COLUMNS)
LabelQ = Annotated[Literal["HIT_TARGET", "HIT_STOP", "TIMEOUT"] | None, Query(description="outcome label")]


@router.get("", response_model=list[OutcomeOut], responses=WAREHOUSE_ERRORS)
def list_outcomes(
    request: Request,
    response: Response,
    warehouse: WarehouseDep,
    symbol: SymbolQ = None,
    label: LabelQ = None,
    since: pagination.SinceQ = None,
    until: pagination.UntilQ = None,
    cursor: pagination.CursorQ = None,
    limit: pagination.LimitQ = 100,
) -> list[OutcomeOut]:
    """Outcomes newest exit first (``since``/``until`` on exit_us), paged by ``cursor`` (``X-Next-Cursor``)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    pagination.equals(clauses, params, symbol=norm_symbol(symbol), label=label)
    rows = pagination.page(warehouse, request, response, table="outcomes", select=_SELECT, time_col="exit_us",
                           id_col="outcome_id", clauses=clauses, params=params,
                           cursor=pagination.decode_cursor(cursor), since=since, until=until, limit=limit)
    return [OutcomeOut.model_validate({k: _finite(v) for k, v in r.items()}) for r in rows]
