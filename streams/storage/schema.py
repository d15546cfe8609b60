"""The column types of surge's tables, read from the DDL (``schemas/clickhouse/*.sql``), the one definition.

Used to validate rows before they are inserted, so the check and the tables cannot disagree.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)\s*\((.*?)\n\)", re.S)
# Column-level clauses that end the type; MATERIALIZED and ALIAS columns are computed, never inserted.
_CLAUSE = re.compile(r"\s(MATERIALIZED|ALIAS|DEFAULT|EPHEMERAL|CODEC|TTL|COMMENT)\b")
_NOT_COLUMNS = ("INDEX ", "PROJECTION ", "CONSTRAINT ")


@cache
def table_columns() -> dict[str, dict[str, str]]:
    """table -> {column -> ClickHouse type} for the insertable columns of every table in the DDL."""
    folder = resources.files("schemas") / "clickhouse"
    tables: dict[str, dict[str, str]] = {}
    for file in sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name):
        for match in _CREATE.finditer(file.read_text(encoding="utf-8")):
            tables[match.group(1)] = _columns(match.group(2))
    return tables


def _columns(block: str) -> dict[str, str]:
    columns: dict[str, str] = {}
    for raw in block.splitlines():
        line = raw.split("--", 1)[0].strip().rstrip(",")
        if not line or line.startswith(_NOT_COLUMNS):
            continue
        name, _, rest = line.partition(" ")
        clause = _CLAUSE.search(" " + rest)
        if clause is not None and clause.group(1) in ("MATERIALIZED", "ALIAS"):
            continue
        columns[name] = (" " + rest)[: clause.start()].strip() if clause else rest.strip()
    return columns


def insertable_columns(table: str) -> dict[str, str]:
    try:
        return table_columns()[table]
    except KeyError:
        raise KeyError(f"no table {table!r} in schemas/clickhouse") from None
