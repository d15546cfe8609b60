"""Keyset (cursor) pagination shared by the list routes.

A page is newest first by ``(time_us, id)``. Its response carries the cursor of the next page in the
``X-Next-Cursor`` header (and a ``Link: <...>; rel="next"``), absent on the last page; bodies stay plain JSON
lists. A cursor is opaque to clients (base64url of ``[time_us, id]``); one that does not decode is a 422.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import orjson
from fastapi import Query, Request, Response
from fastapi.exceptions import RequestValidationError

from streams.storage.warehouse import Warehouse

INT64_MAX: Final = 2**63 - 1
MAX_ID_CHARS: Final = 512
NEXT_CURSOR: Final = "X-Next-Cursor"

CursorQ = Annotated[str | None, Query(max_length=1024, pattern=r"^[A-Za-z0-9_\-]*={0,2}$",
                                      description="the X-Next-Cursor of the previous page")]
SinceQ = Annotated[int | None, Query(ge=0, le=INT64_MAX, description="from this time on (epoch µs, inclusive)")]
UntilQ = Annotated[int | None, Query(ge=0, le=INT64_MAX, description="before this time (epoch µs, exclusive)")]
LimitQ = Annotated[int, Query(ge=1, le=10_000, description="page size")]


def encode_cursor(time_us: int, row_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([time_us, row_id])).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        time_us, row_id = value
        if (isinstance(time_us, bool) or not isinstance(time_us, int) or not 0 <= time_us <= INT64_MAX
                or not isinstance(row_id, str) or len(row_id) > MAX_ID_CHARS):
            raise ValueError("bad cursor fields")
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "cursor"),
                                       "msg": "Value error, not a cursor this API issued", "input": cursor}]) from None
    return time_us, row_id


def keyset(time_col: str, id_col: str, cursor: tuple[int, str] | None, since: int | None, until: int | None,
           clauses: list[str], params: dict[str, Any]) -> None:
    """Append the time window and the cursor to ``clauses`` / ``params`` (columns are trusted names)."""
    if since is not None:
        clauses.append(f"{time_col} >= {{since:Int64}}")
        params["since"] = since
    if until is not None:
        clauses.append(f"{time_col} < {{until:Int64}}")
        params["until"] = until
    if cursor is not None:
        clauses.append(f"({time_col}, {id_col}) < ({{cursor_us:Int64}}, {{cursor_id:String}})")
        params["cursor_us"], params["cursor_id"] = cursor


def where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def equals(clauses: list[str], params: dict[str, Any], **values: str | None) -> None:
    """``column = value`` for every value given (column names are trusted; values are bound, never inlined)."""
    for column, value in values.items():
        if value:
            clauses.append(f"{column} = {{{column}:String}}")
            params[column] = str(value)


def page(warehouse: Warehouse, request: Request, response: Response, *, table: str, select: str, time_col: str,
         id_col: str, clauses: list[str], params: dict[str, Any], cursor: tuple[int, str] | None, since: int | None,
         until: int | None, limit: int) -> list[dict[str, Any]]:
    """One page of ``table`` (FINAL), newest ``time_col`` first, keyset-paged by (time, id), with the next-page
    headers set when the page is full."""
    keyset(time_col, id_col, cursor, since, until, clauses, params)
    rows = warehouse.query(
        f"SELECT {select} FROM {warehouse.database}.{table} FINAL{where(clauses)} "
        f"ORDER BY {time_col} DESC, {id_col} DESC LIMIT {{limit:UInt32}}", {**params, "limit": limit})
    set_next(request, response, rows, limit, time_col, id_col)
    return rows


def set_next(request: Request, response: Response, rows: list[dict[str, Any]], limit: int, time_col: str,
             id_col: str) -> None:
    """Headers for the next page when this one is full."""
    if len(rows) < limit or not rows:
        return
    last = rows[-1]
    cursor = encode_cursor(int(last[time_col]), str(last[id_col]))
    response.headers[NEXT_CURSOR] = cursor
    query = dict(request.query_params)
    query["cursor"] = cursor
    response.headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
