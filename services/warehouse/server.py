"""The warehouse service: the one process that opens the chdb folder, serving it to every other process.

chdb allows a single OS process per data folder, so stages, the gateway and tools reach it over HTTP through
``RemoteWarehouse`` (``surge+http://host:port``). Endpoints, all JSON (orjson):

* ``POST /command``  ``{"sql", "parameters"}`` -> ``{"ok": true}``
* ``POST /query``    ``{"sql", "parameters"}`` -> ``{"rows": [{column: value}, ...]}``
* ``POST /insert``   ``{"table", "column_names", "rows"}`` -> ``{"ok": true, "rows": n}``
* ``GET /health``    -> ``{"status": "ok"}`` (503 when chdb does not answer)

ClickHouse errors answer 400 with ``{"error": ...}`` so the client can raise ``WarehouseError``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from streams.storage.warehouse import Warehouse, WarehouseError, apply_ddl, open_warehouse

log = logging.getLogger("surge.warehouse")


def _json_default(value: Any) -> Any:
    # Values orjson does not know natively (Decimal, IPv4, bytes...) degrade to JSON-friendly forms.
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


class BadRequest(ValueError):
    pass


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}")
    return value


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def _sql_body(request: Request) -> tuple[str, dict[str, Any] | None]:
    """The {sql, parameters} body shared by /command and /query."""
    body = await _body(request)
    return _field(body, "sql", str), _field(body, "parameters", dict, optional=True)


def create_app(warehouse: Warehouse) -> FastAPI:
    """The HTTP app around an already opened (usually chdb) warehouse; the caller owns and closes it."""
    app = FastAPI(title="surge warehouse", docs_url=None, redoc_url=None)

    async def run(fn: Callable[[], Any]) -> Response:
        # chdb calls block; run them off the event loop (the warehouse serialises them with its lock).
        try:
            return _json(await run_in_threadpool(fn))
        except BadRequest as exc:
            return _json({"error": str(exc)}, 422)
        except (WarehouseError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)

    @app.post("/command")
    async def command(request: Request) -> Response:
        try:
            sql, params = await _sql_body(request)
        except BadRequest as exc:
            return _json({"error": str(exc)}, 422)

        def do() -> dict[str, Any]:
            warehouse.command(sql, params)
            return {"ok": True}

        return await run(do)

    @app.post("/query")
    async def query(request: Request) -> Response:
        try:
            sql, params = await _sql_body(request)
        except BadRequest as exc:
            return _json({"error": str(exc)}, 422)
        return await run(lambda: {"rows": warehouse.query(sql, params)})

    @app.post("/insert")
    async def insert(request: Request) -> Response:
        try:
            body = await _body(request)
            table = _field(body, "table", str)
            columns = _field(body, "column_names", list)
            rows = _field(body, "rows", list)
            if not all(isinstance(c, str) for c in columns):
                raise BadRequest("column_names must be strings")
            if not all(isinstance(r, list) and len(r) == len(columns) for r in rows):
                raise BadRequest("every row must be a list with one value per column")
        except BadRequest as exc:
            return _json({"error": str(exc)}, 422)

        def do() -> dict[str, Any]:
            warehouse.insert(table, rows, columns)
            return {"ok": True, "rows": len(rows)}

        return await run(do)

    @app.get("/health")
    async def health() -> Response:
        try:
            await run_in_threadpool(warehouse.query, "SELECT 1 AS ok")
        except Exception as exc:  # any failure means "not healthy"; the detail is for the operator
            return _json({"status": "down", "error": str(exc)}, 503)
        return _json({"status": "ok", "database": warehouse.database})

    return app


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    return


def serve(path: Path, host: str, port: int, database: str) -> None:
    """Own the chdb folder at ``path``, create the schema, and serve it until SIGTERM/SIGINT."""
    import uvicorn

    folder = path.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    warehouse = open_warehouse(f"chdb://{folder}", database)
    try:
        apply_ddl(warehouse, database)
        log.info("warehouse service: chdb %s, database %s, on http://%s:%d", folder, database, host, port)
        config = uvicorn.Config(create_app(warehouse), host=host, port=port, log_level="warning", access_log=False)
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, restoring the previous handlers
            # first; with the default handler that kills us before chdb is closed. A no-op handler lets the
            # re-raise fall through to close() below, and the service exits 0.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _ignore_signal)
        uvicorn.Server(config).run()
    finally:
        warehouse.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="surge warehouse service (owns the chdb folder)")
    parser.add_argument("--path", type=Path, required=True, help="chdb data folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--database", default="surge")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve(args.path, args.host, args.port, args.database)


if __name__ == "__main__":
    main()
