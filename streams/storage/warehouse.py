"""One ``Warehouse`` API for every process, whatever holds the data.

* ``http(s)://user:pass@host:8123/db``: a real ClickHouse server through clickhouse-connect's HTTP client.
* ``chdb:///abs/path``: embedded chdb; only ONE OS process may open a chdb folder, so only the warehouse
  service (``services.warehouse.server``) and single-process tests use this form.
* ``surge+http://host:port``: ``RemoteWarehouse``, an httpx client of the warehouse service that owns the folder.
  It sends the shared token (``SURGE_WAREHOUSE_TOKEN``) as ``Authorization: Bearer``; the service runs only
  what surge itself needs (its own DDL, inserts into its tables, read-only SELECTs on them).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import httpx
import orjson
from pydantic import SecretStr

if TYPE_CHECKING:
    from streams.runtime.settings import Settings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REMOTE_SCHEMES = ("surge+http", "surge+https")


class WarehouseError(RuntimeError):
    """A statement the warehouse rejected or could not run (bad SQL, unreachable server, ...)."""


class WarehouseUnavailable(WarehouseError):
    """The warehouse could not be reached or answered as down (connection refused, timeout, 5xx): the same
    statement may succeed later. Any other ``WarehouseError`` means the statement itself was refused."""


@runtime_checkable
class Warehouse(Protocol):
    """What the rest of surge needs from ClickHouse. Unqualified table names resolve to ``database``."""

    database: str

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (DDL, ALTER, INSERT ... SELECT)."""
        ...

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT; rows as column-name -> value dicts. Parameters bind ``{name:Type}`` placeholders."""
        ...

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        """Insert rows (one sequence per row, in ``column_names`` order); raises on failure."""
        ...

    def close(self) -> None: ...


def check_identifier(name: str) -> str:
    """Database/table names are interpolated into SQL, so only plain identifiers are allowed."""
    if not _IDENT.match(name):
        raise ValueError(f"not a plain ClickHouse identifier: {name!r}")
    return name


def split_table(table: str, database: str) -> tuple[str, str]:
    """``db.table`` or ``table`` (in ``database``) -> (database, table), both validated."""
    db, _, name = table.rpartition(".")
    return check_identifier(db or database), check_identifier(name)


class ClickHouseWarehouse:
    """A clickhouse-connect client (HTTP or chdb) behind the ``Warehouse`` API."""

    def __init__(self, client: Any, database: str, *, serialise: bool) -> None:
        self._client = client
        self.database = check_identifier(database)
        # chdb is a single connection: concurrent calls from gateway/server threads must take turns.
        self._lock: threading.Lock | None = threading.Lock() if serialise else None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

        try:
            if self._lock is None:
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)
        except OperationalError as exc:  # connection-level: the server is down or unreachable
            raise WarehouseUnavailable(str(exc)) from exc
        except ClickHouseError as exc:
            raise WarehouseError(str(exc)) from exc

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self._call(self._client.command, sql, parameters=parameters)

    def query(self, sql: str, parameters: dict[str, Any] | None = None, *,
              settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """``settings`` (not part of the protocol) are per-query ClickHouse settings, e.g. ``readonly``."""
        result = self._call(self._client.query, sql, parameters=parameters, settings=settings)
        return list(result.named_results())

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        if not rows:
            return
        db, name = split_table(table, self.database)
        # Columns transposed here by zip (C speed): clickhouse-connect's own row-to-column pass is a Python loop
        # per column that took a fifth of the sink's time.
        try:
            columns = [list(column) for column in zip(*rows, strict=True)]
        except ValueError as exc:  # a row of another width: refused like the server would (the sink bisects)
            raise WarehouseError(f"insert into {name}: rows of different widths ({exc})") from exc
        self._call(self._client.insert, name, columns, column_names=list(column_names), database=db,
                   column_oriented=True)

    def close(self) -> None:
        self._client.close()


class RemoteWarehouse:
    """httpx client of the warehouse service (``surge+http://host:port``); errors surface as WarehouseError.

    ``token`` is the service's shared secret, sent on every request. A refused token (401) is reported as
    ``WarehouseUnavailable``: it is a deployment problem, so a writer must wait (not drop or dead-letter rows)."""

    def __init__(self, base_url: str, database: str, *, token: str | SecretStr | None = None,
                 timeout_s: float = 30.0) -> None:
        self.database = check_identifier(database)
        self.base_url = base_url.rstrip("/")
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            resp = self._http.post(path, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise WarehouseUnavailable(f"warehouse service {self.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 500:
            raise WarehouseUnavailable(_error_text(resp))
        if resp.status_code == 401:
            raise WarehouseUnavailable(f"{_error_text(resp)} (is SURGE_WAREHOUSE_TOKEN the service's token?)")
        if resp.status_code != 200:
            raise WarehouseError(_error_text(resp))
        return orjson.loads(resp.content)

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self._post("/command", {"sql": sql, "parameters": parameters})

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._post("/query", {"sql": sql, "parameters": parameters})["rows"]
        return rows

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        if not rows:
            return
        db, name = split_table(table, self.database)
        self._post("/insert", {"table": f"{db}.{name}", "column_names": list(column_names), "rows": rows})

    def health(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()


def _error_text(resp: httpx.Response) -> str:
    try:
        detail = orjson.loads(resp.content).get("error", "")
    except (orjson.JSONDecodeError, AttributeError):
        detail = resp.text[:500]
    return f"warehouse service answered {resp.status_code}: {detail}"


def open_warehouse(url: str, database: str, *, token: str | SecretStr | None = None) -> Warehouse:
    """Pick the client for ``url`` (see the module docstring); a server that cannot be reached is a WarehouseError.

    ``token`` is the warehouse service's shared secret; only the ``surge+http(s)://`` client uses it."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    scheme = urlparse(url).scheme
    if scheme in REMOTE_SCHEMES:
        return RemoteWarehouse(url.replace("surge+", "", 1), database, token=token)
    try:
        if scheme == "chdb":
            parsed = urlparse(url)
            if parsed.netloc or not parsed.path.startswith("/"):
                raise ValueError(f"chdb warehouse needs an absolute path (chdb:///abs/path), got {url!r}")
            return ClickHouseWarehouse(clickhouse_connect.get_client(dsn=url), database, serialise=True)
        if scheme in ("http", "https"):
            # No session: queries from several threads would otherwise collide on a locked session.
            client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
            return ClickHouseWarehouse(client, database, serialise=False)
    except ClickHouseError as exc:
        raise WarehouseError(f"cannot open warehouse {_redacted(url)}: {exc}") from exc
    raise ValueError(f"unsupported warehouse url {_redacted(url)!r}: use http(s)://, chdb:///abs/path or surge+http://")


def open_warehouse_from(settings: Settings) -> Warehouse:
    """``open_warehouse`` with the URL, database and service token of ``settings``."""
    return open_warehouse(settings.warehouse_url(), settings.clickhouse_database, token=settings.warehouse_token)


def _redacted(url: str) -> str:
    # Error messages end up in logs and /health bodies: never echo a password.
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


# TTLs of the time-partitioned tables, in days: ``{ttl_days_<name>}`` placeholders of the DDL files, filled from
# the ``SURGE_TTL_DAYS_*`` settings (these are their defaults). A TTL applies when its table is created.
DEFAULT_TTL_DAYS: Mapping[str, int] = MappingProxyType({
    "ttl_days_ticks": 30,
    "ttl_days_features": 14,
    "ttl_days_predictions": 90,
    "ttl_days_rollup_1s": 7,
    "ttl_days_rollup_1m": 400,
})
MAX_TTL_DAYS = 36_500
_PLACEHOLDER = re.compile(r"\{(ttl_days_[a-z0-9_]+)\}")
_TTL_VALUE = "[1-9][0-9]{0,4}"  # what the warehouse service accepts in place of a TTL placeholder


def _ddl_files() -> list[tuple[str, str]]:
    folder = resources.files("schemas") / "clickhouse"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


def ttl_days_of(ttl_days: Mapping[str, int] | None) -> dict[str, int]:
    """``DEFAULT_TTL_DAYS`` overridden by ``ttl_days``; unknown names and values outside 1..36500 are refused."""
    merged = dict(DEFAULT_TTL_DAYS)
    for name, days in (ttl_days or {}).items():
        if name not in DEFAULT_TTL_DAYS:
            raise ValueError(f"unknown TTL {name!r}: one of {', '.join(DEFAULT_TTL_DAYS)}")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TTL_DAYS:
            raise ValueError(f"TTL {name} must be a whole number of days in 1..{MAX_TTL_DAYS}, not {days!r}")
        merged[name] = days
    return merged


def ddl_statements(database: str, ttl_days: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """(file name, statement) for every ``schemas/clickhouse/*.sql`` in name order, ``{db}`` and the
    ``{ttl_days_*}`` placeholders substituted (``ttl_days`` over ``DEFAULT_TTL_DAYS``)."""
    check_identifier(database)
    ttl = ttl_days_of(ttl_days)

    def fill(match: re.Match[str]) -> str:
        try:
            return str(ttl[match.group(1)])
        except KeyError:
            raise ValueError(f"DDL placeholder {{{match.group(1)}}} has no setting") from None

    return [(name, _PLACEHOLDER.sub(fill, text.replace("{db}", database))) for name, text in _ddl_files()]


def ddl_command_patterns(database: str) -> list[re.Pattern[str]]:
    """One pattern per DDL statement that matches it under ANY TTL settings (the warehouse service's allow-list:
    every process may apply the DDL with its own ``SURGE_TTL_DAYS_*``, and only the first one creates a table)."""
    check_identifier(database)
    patterns = []
    for _, text in _ddl_files():
        escaped = re.escape(text.replace("{db}", database))
        patterns.append(re.compile(re.sub(r"\\\{ttl_days_[a-z0-9_]+\\\}", _TTL_VALUE, escaped)))
    return patterns


def settings_ttl_days(settings: Settings) -> dict[str, int]:
    """The ``SURGE_TTL_DAYS_*`` settings as ``apply_ddl``'s ``ttl_days``."""
    return {name: int(getattr(settings, name)) for name in DEFAULT_TTL_DAYS}


def apply_ddl_from(warehouse: Warehouse, settings: Settings) -> list[str]:
    """``apply_ddl`` with the database and TTLs of ``settings``: whichever process creates a table first, it gets
    the configured TTLs."""
    return apply_ddl(warehouse, settings.clickhouse_database, settings_ttl_days(settings))


def create_database_statement(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {check_identifier(database)}"


_DDL_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS ([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")


def ddl_tables(database: str) -> frozenset[str]:
    """Names of the tables the DDL creates in ``database``: the only tables surge reads and writes."""
    found = (_DDL_TABLE.search(sql) for _, sql in ddl_statements(database))
    return frozenset(m.group(2) for m in found if m is not None and m.group(1) == database)


def ddl_commands(database: str, ttl_days: Mapping[str, int] | None = None) -> list[str]:
    """Exactly the statements ``apply_ddl`` sends, in order (the warehouse service accepts these, under any TTL
    settings, and no other)."""
    return [create_database_statement(database), *(sql for _, sql in ddl_statements(database, ttl_days))]


def apply_ddl(warehouse: Warehouse, database: str, ttl_days: Mapping[str, int] | None = None) -> list[str]:
    """Create the database, every table and rollup view; idempotent (``IF NOT EXISTS``). Returns the files
    applied. ``ttl_days`` (see ``DEFAULT_TTL_DAYS``) sets the TTLs of tables this call creates."""
    warehouse.command(create_database_statement(database))
    applied = []
    for name, sql in ddl_statements(database, ttl_days):
        warehouse.command(sql)
        applied.append(name)
    return applied
