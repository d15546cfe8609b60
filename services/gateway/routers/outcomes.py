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
    params: dict[str, Any] = {"limit": limit}
    if norm_symbol(symbol):
        clauses.append("symbol = {symbol:String}")
        params["symbol"] = norm_symbol(symbol)
    if label:
        clauses.append("label = {label:String}")
        params["label"] = label
    pagination.keyset("exit_us", "outcome_id", pagination.decode_cursor(cursor), since, until, clauses, params)
    rows = warehouse.query(
        f"SELECT {_SELECT} FROM {warehouse.database}.outcomes FINAL{pagination.where(clauses)} "
        "ORDER BY exit_us DESC, outcome_id DESC LIMIT {limit:UInt32}", params)
    pagination.set_next(request, response, rows, limit, "exit_us", "outcome_id")
    return [OutcomeOut.model_validate({k: _finite(v) for k, v in r.items()}) for r in rows]
