"""The warehouse service: the one process that opens the chdb folder, serving it to every other process.

chdb allows a single OS process per data folder, so stages, the gateway and tools reach it over HTTP through
``RemoteWarehouse`` (``surge+http://host:port``). Endpoints, all JSON (orjson):

* ``POST /command``  ``{"sql", "parameters"}`` -> ``{"ok": true}``
* ``POST /query``    ``{"sql", "parameters"}`` -> ``{"rows": [{column: value}, ...]}``
* ``POST /insert``   ``{"table", "column_names", "rows"}`` -> ``{"ok": true, "rows": n}``
* ``GET /health``    -> ``{"status": "ok"}`` (503 ``{"status": "down"}`` when chdb does not answer)

Security (issue 16): chdb runs as this process's OS user with ClickHouse's full power (``file()``, ``url()``,
``INTO OUTFILE``, DDL...), so the service is not a SQL endpoint. Every endpoint but ``/health`` needs
``Authorization: Bearer <SURGE_WAREHOUSE_TOKEN>`` (401 otherwise; compared in constant time). ``/health``
stays open for the readiness probes of ``surge run`` and the tests, and tells up or down, nothing else. What
an authenticated caller may run is an allow-list (``Policy``), refused with 403 and a reason:

* ``/command``: exactly one of the statements ``apply_ddl`` sends (``ddl_commands``: ``CREATE DATABASE IF NOT
  EXISTS <db>`` and the files of ``schemas/clickhouse``), character for character, without parameters.
* ``/insert``: into a table the DDL creates in surge's database, with plain-identifier column names.
* ``/query``: one SELECT, checked by ClickHouse's own parser (``EXPLAIN AST``, which evaluates nothing) and
  then run with ``readonly=1``. See ``Policy.check_select`` for the rules.

Request bodies are limited (``MAX_BODY_BYTES``, 413). ClickHouse errors answer 400 with ``{"error": ...}`` so
the client can raise ``WarehouseError``.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from streams.storage.warehouse import (
    ClickHouseWarehouse,
    WarehouseError,
    apply_ddl,
    check_identifier,
    ddl_command_patterns,
    ddl_commands,
    ddl_tables,
    open_warehouse,
    settings_ttl_days,
    split_table,
)

log = logging.getLogger("surge.warehouse")

MAX_BODY_BYTES = 64 * 1024 * 1024  # a sink batch is far smaller; a bigger body is refused (413), not buffered
MAX_SQL_CHARS = 64 * 1024
MAX_PARAMETERS = 1000
MIN_TOKEN_CHARS = 16
READONLY = {"readonly": 1}  # ClickHouse: reads only, no setting may be changed, unsafe table functions refused


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Functions a SELECT may call (lower-cased; operators parse to functions too: a = b is equals, -x is negate,
# x[1] is arrayElement, {p:T} is _CAST). Pure computations only: nothing that reads files, URLs, other tables by
# name (joinGet, dictGet), settings, the host or the process, and no sleep. Add what a new query needs.
ALLOWED_FUNCTIONS = _words("""
    and or not xor equals notequals less greater lessorequals greaterorequals in notin globalin globalnotin
    like notlike ilike notilike isnull isnotnull isdistinctfrom isnotdistinctfrom
    if multiif casewithexpression coalesce ifnull nullif assumenotnull tonullable greatest least
    plus minus multiply divide intdiv intdivorzero modulo negate abs sign round floor ceil trunc sqrt exp log
    log2 log10 pow power isnan isfinite isinfinite
    tuple array arrayelement tupleelement lambda exists cast _cast accuratecastornull
    length lengthutf8 empty notempty lower upper concat substring startswith endswith position replaceall
    replaceone trimboth trimleft trimright splitbychar arraystringconcat base64encode base64decode
    trybase64decode hex tostring
    toint8 toint16 toint32 toint64 touint8 touint16 touint32 touint64 tofloat32 tofloat64 todecimal64
    toint64ornull tofloat64ornull todate todatetime todatetime64 tounixtimestamp tounixtimestamp64micro
    tounixtimestamp64milli fromunixtimestamp fromunixtimestamp64micro fromunixtimestamp64milli
    now now64 today tostartofsecond tostartofminute tostartoffiveminutes tostartoffifteenminutes tostartofhour
    tostartofday tostartofinterval toyyyymmdd tointervalmicrosecond tointervalmillisecond tointervalsecond
    tointervalminute tointervalhour tointervalday tointervalweek tointervalmonth
    has hasany hasall indexof arrayjoin arraymap arrayfilter arraysum arraycount arrayslice arraysort
    arraydistinct jsonextractstring jsonextractfloat jsonextractint jsonextractbool jsonextractraw jsonhas
    count countif countdistinct sum sumif avg avgif min minif max maxif any anyif anylast argmin argmax uniq
    uniqexact uniqif uniqexactif grouparray groupuniqarray quantile quantiles quantileexact quantilesexact
    quantileexactinclusive quantilesexactinclusive quantiletdigest quantilestdigest median stddevpop
    stddevsamp varpop varsamp corr row_number rank dense_rank laginframe leadinframe
    argminmerge argmaxmerge arrayzip arrayenumerate arraymax arraymin tupleelement
""")

# EXPLAIN AST node kinds a SELECT may contain. Anything else (INTERSECT, APPLY/EXCEPT column transformers,
# which name functions outside a Function node, ...) is refused rather than understood.
ALLOWED_NODES = _words("""
    SelectWithUnionQuery SelectQuery ExpressionList Literal Function Identifier Asterisk QualifiedAsterisk
    TablesInSelectQuery TablesInSelectQueryElement TableExpression TableIdentifier TableJoin ArrayJoin
    Subquery Set OrderByElement WindowDefinition WindowListElement SampleRatio WithElement QueryParameter
""")
IN_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin"})

# Checked on the raw text before anything is parsed, regardless of context (even inside string literals: values
# belong in parameters). ';' would chain statements (chdb runs every one); quoted identifiers are the only way
# to put spaces, dots or newlines in a name, which would blur the parse tree; INTO OUTFILE writes files even
# in readonly mode; SETTINGS could fight readonly; an Identifier-typed parameter would name a table at bind time.
_BANNED_CHARS = {";": "';' (one statement only)", "`": "quoted identifiers", '"': "quoted identifiers"}
_BANNED_WORDS = re.compile(r"\b(INTO|OUTFILE|INFILE|FORMAT|SETTINGS|IDENTIFIER)\b", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AST_LINE = re.compile(r"^( *)([A-Za-z_]+)(?: (.*))?$")
_ROOT = re.compile(r"^SelectWithUnionQuery( |$)")
_ALIAS = re.compile(r"\(alias ([A-Za-z_][A-Za-z0-9_]*)\)")


class Problem(Exception):
    """An HTTP answer other than 200: ``{"error": message}`` with ``status``."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(Problem):
    status = 422


class Refused(Problem):
    """Well-formed, authenticated, and not something surge needs: the allow-list says no."""

    status = 403


class Unauthorized(Problem):
    status = 401


class TooLarge(Problem):
    status = 413


@dataclass(frozen=True)
class Policy:
    """What an authenticated caller may run against surge's database (see the module docstring)."""

    database: str
    tables: frozenset[str]  # the tables the DDL creates in ``database``
    commands: frozenset[str]  # the exact statements apply_ddl sends
    foreign_databases: frozenset[str]  # lower-cased names of every other database (system, default, ...)
    # The same statements under any TTL settings (``{ttl_days_*}`` filled with any day count), matched in full.
    command_patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def for_warehouse(cls, warehouse: ClickHouseWarehouse) -> Policy:
        db = warehouse.database
        existing = {str(r["name"]).lower() for r in warehouse.query("SELECT name FROM system.databases")}
        foreign = (existing | {"system", "information_schema", "default"}) - {db.lower()}
        return cls(db, ddl_tables(db), frozenset(ddl_commands(db)), frozenset(foreign),
                   tuple(ddl_command_patterns(db)))

    def check_command(self, sql: str, parameters: dict[str, Any] | None) -> None:
        if parameters:
            raise Refused("refused: /command takes no parameters")
        if sql not in self.commands and not any(p.fullmatch(sql) for p in self.command_patterns):
            raise Refused("refused: /command runs only surge's own DDL (the statements of apply_ddl, verbatim)")

    def check_insert(self, table: str, column_names: list[str]) -> str:
        """The qualified table to insert into."""
        try:
            db, name = split_table(table, self.database)
            for column in column_names:
                check_identifier(column)
        except ValueError as exc:
            raise Refused(f"refused: {exc}") from exc
        if db != self.database or name not in self.tables:
            raise Refused(f"refused: inserts go only into surge's tables ({', '.join(sorted(self.tables))} "
                          f"in database {self.database}), not {table!r}")
        if not column_names or len(set(column_names)) != len(column_names):
            raise Refused("refused: column_names must be distinct and not empty")
        return f"{db}.{name}"

    def check_select_text(self, sql: str, parameters: dict[str, Any] | None) -> None:
        """The context-free checks on the raw text and the parameters, before ClickHouse parses anything."""
        if len(sql) > MAX_SQL_CHARS:
            raise Refused(f"refused: statement longer than {MAX_SQL_CHARS} characters")
        for char, what in _BANNED_CHARS.items():
            if char in sql:
                raise Refused(f"refused: {what} not allowed in /query ({char!r} found)")
        if _CONTROL.search(sql):
            raise Refused("refused: control characters in the statement")
        word = _BANNED_WORDS.search(sql)
        if word:
            raise Refused(f"refused: {word.group(1).upper()} is not allowed in /query (pass values as parameters)")
        if parameters:
            if len(parameters) > MAX_PARAMETERS:
                raise Refused(f"refused: more than {MAX_PARAMETERS} parameters")
            bad = [name for name in parameters if not _PARAM_NAME.match(name)]
            if bad:
                raise Refused(f"refused: parameter names must be plain identifiers, not {bad[0]!r}")

    def check_select_tree(self, lines: list[str]) -> None:
        """The rules on ClickHouse's parse tree (``EXPLAIN AST``), one node per line, indented by depth.

        * the root is one ``SelectWithUnionQuery`` whose direct children are the selects (and the ``SETTINGS
          readonly`` / ``FORMAT Native`` the driver appends): no ``INTO OUTFILE`` target, no other ``FORMAT``;
        * node kinds come from ``ALLOWED_NODES``; function names from ``ALLOWED_FUNCTIONS``;
        * a FROM/JOIN source is a subquery or ``<db>.<table>`` for one of surge's tables, never a table
          function (``file``, ``url``, ``numbers``...) nor an unqualified name (a CTE, or the default database);
        * no identifier or alias starts with another database's name (``system.one.dummy`` reads system.one);
        * the right side of IN is a subquery or a list, not a bare name (``x IN system.users``).
        """
        if not lines or not _ROOT.match(lines[0]):
            raise Refused("refused: /query runs a single SELECT only")
        # (depth, kind, name, children seen) of the open ancestors
        stack: list[list[Any]] = []
        for index, line in enumerate(lines):
            match = _AST_LINE.match(line)
            if match is None:
                raise Refused(f"refused: unexpected parse tree line {line[:80]!r}")
            depth, kind, rest = len(match.group(1)), match.group(2), match.group(3) or ""
            while stack and stack[-1][0] >= depth:
                stack.pop()
            parent = stack[-1] if stack else None
            if parent is not None:
                parent[3] += 1
            name = rest.split(" ", 1)[0]
            if depth == 0 and index > 0:
                raise Refused("refused: /query runs a single statement only")
            if depth == 1 and not (kind in ("ExpressionList", "Set") or (kind == "Identifier" and name == "Native")):
                raise Refused("refused: INTO OUTFILE and FORMAT are not allowed in /query")
            if kind not in ALLOWED_NODES:
                raise Refused(f"refused: {kind} is not allowed in /query")
            for alias in _ALIAS.findall(rest):
                if alias.lower() in self.foreign_databases:
                    raise Refused(f"refused: alias {alias!r} is the name of another database")
            if kind == "TableIdentifier":
                self._check_table(name)
            elif kind == "Function":
                if parent is not None and parent[1] == "TableExpression":
                    raise Refused(f"refused: table function {name!r}: read surge's tables by name instead")
                if name.lower() not in ALLOWED_FUNCTIONS:
                    raise Refused(f"refused: function {name!r} is not on the warehouse service's allow-list")
            elif kind == "Identifier":
                self._check_identifier(name)
                grandparent = stack[-2] if len(stack) >= 2 else None
                if (parent is not None and parent[1] == "ExpressionList" and parent[3] == 2
                        and grandparent is not None and grandparent[1] == "Function"
                        and grandparent[2].lower() in IN_FUNCTIONS):
                    raise Refused(f"refused: IN {name}: use IN (SELECT ...) or a list")
            stack.append([depth, kind, name, 0])

    def _check_table(self, name: str) -> None:
        db, _, table = name.partition(".")
        if not table:
            raise Refused(f"refused: table {name!r} must be qualified as {self.database}.<table>")
        if db != self.database or table not in self.tables:
            raise Refused(f"refused: /query reads only surge's tables ({', '.join(sorted(self.tables))} in "
                          f"database {self.database}), not {name!r}")

    def _check_identifier(self, name: str) -> None:
        parts = name.split(".")
        if len(parts) < 2:
            return
        if parts[0].lower() in self.foreign_databases:
            raise Refused(f"refused: {name!r} names another database")
        if parts[0] == self.database and parts[1] not in self.tables:
            raise Refused(f"refused: {name!r} is not a column of one of surge's tables")


def _json_default(value: Any) -> Any:
    # Values orjson does not know natively (Decimal, IPv4, bytes...) degrade to JSON-friendly forms.
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}")
    return value


def create_app(warehouse: ClickHouseWarehouse, token: str, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The HTTP app around an already opened (usually chdb) warehouse whose schema is applied; the caller owns
    and closes it. ``token`` is the shared secret every endpoint but /health requires."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the warehouse token must have at least {MIN_TOKEN_CHARS} characters")
    expected = token.encode()
    policy = Policy.for_warehouse(warehouse)
    app = FastAPI(title="surge warehouse", docs_url=None, redoc_url=None, openapi_url=None)

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("missing bearer token (Authorization: Bearer <SURGE_WAREHOUSE_TOKEN>)")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthorized("invalid token")

    async def body_of(request: Request) -> dict[str, Any]:
        """Authorize, then read at most ``max_body_bytes`` (the declared length is checked before reading)."""
        authorize(request)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body_bytes):
            raise TooLarge(f"request body larger than {max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise TooLarge(f"request body larger than {max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    async def sql_body(request: Request) -> tuple[str, dict[str, Any] | None]:
        """The {sql, parameters} body shared by /command and /query."""
        body = await body_of(request)
        return _field(body, "sql", str), _field(body, "parameters", dict, optional=True)

    async def run(fn: Callable[[], Any]) -> Response:
        # chdb calls block; run them off the event loop (the warehouse serialises them with its lock).
        try:
            return _json(await run_in_threadpool(fn))
        except Problem:
            raise
        except (WarehouseError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> Response:
        if isinstance(exc, Refused | Unauthorized):
            log.warning("%s %s: %s", request.url.path, exc.status, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return _json({"error": exc.message}, exc.status, headers)

    @app.post("/command")
    async def command(request: Request) -> Response:
        sql, params = await sql_body(request)
        policy.check_command(sql, params)

        def do() -> dict[str, Any]:
            warehouse.command(sql)
            return {"ok": True}

        return await run(do)

    @app.post("/query")
    async def query(request: Request) -> Response:
        sql, params = await sql_body(request)
        policy.check_select_text(sql, params)

        def do() -> dict[str, Any]:
            tree = warehouse.query(f"EXPLAIN AST {sql}", params, settings=READONLY)
            policy.check_select_tree([str(row["explain"]) for row in tree])
            return {"rows": warehouse.query(sql, params, settings=READONLY)}

        return await run(do)

    @app.post("/insert")
    async def insert(request: Request) -> Response:
        body = await body_of(request)
        table = _field(body, "table", str)
        columns = _field(body, "column_names", list)
        rows = _field(body, "rows", list)
        if not all(isinstance(c, str) for c in columns):
            raise BadRequest("column_names must be strings")
        if not all(isinstance(r, list) and len(r) == len(columns) for r in rows):
            raise BadRequest("every row must be a list with one value per column")
        target = policy.check_insert(table, columns)

        def do() -> dict[str, Any]:
            warehouse.insert(target, rows, columns)
            return {"ok": True, "rows": len(rows)}

        return await run(do)

    @app.get("/health")
    async def health() -> Response:
        # Unauthenticated for readiness probes, so it says up or down and nothing else (the detail is logged).
        try:
            await run_in_threadpool(warehouse.query, "SELECT 1 AS ok")
        except Exception as exc:  # any failure means "not healthy"
            log.warning("health check failed: %s", exc)
            return _json({"status": "down"}, 503)
        return _json({"status": "ok"})

    return app


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    return


def serve(path: Path, host: str, port: int, database: str, token: str,
          ttl_days: Mapping[str, int] | None = None) -> None:
    """Own the chdb folder at ``path``, create the schema (tables it creates get ``ttl_days``, the
    ``SURGE_TTL_DAYS_*`` settings), and serve it until SIGTERM/SIGINT."""
    import uvicorn

    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the warehouse token must have at least {MIN_TOKEN_CHARS} characters")
    folder = path.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    warehouse = open_warehouse(f"chdb://{folder}", database)
    assert isinstance(warehouse, ClickHouseWarehouse)
    try:
        apply_ddl(warehouse, database, ttl_days)
        log.info("warehouse service: chdb %s, database %s, on http://%s:%d", folder, database, host, port)
        app = create_app(warehouse, token)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
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
    """``python -m services.warehouse.server``; the token comes from SURGE_WAREHOUSE_TOKEN (never argv: ps shows
    every process's arguments to every user)."""
    from streams.runtime.settings import Settings

    parser = argparse.ArgumentParser(description="surge warehouse service (owns the chdb folder); "
                                                 "requires SURGE_WAREHOUSE_TOKEN in the environment")
    parser.add_argument("--path", type=Path, required=True, help="chdb data folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--database", default="surge")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = Settings()
    token = settings.warehouse_token
    if token is None or len(token.get_secret_value()) < MIN_TOKEN_CHARS:
        sys.exit(f"refusing to start: set SURGE_WAREHOUSE_TOKEN (at least {MIN_TOKEN_CHARS} characters)")
    serve(args.path, args.host, args.port, args.database, token.get_secret_value(), settings_ttl_days(settings))


if __name__ == "__main__":
    main()
