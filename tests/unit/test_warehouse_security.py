"""The warehouse service against a hostile local caller (issue 16, item 1): token, allow-list, body limit, and
the registry's audit actor. Everything runs on the real service (a subprocess owning a real chdb folder) or on
a real in-process chdb; nothing is mocked. Each test's docstring says what was tried."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.stack.supervisor import plan_children
from services.warehouse.server import MAX_BODY_BYTES, READONLY, create_app
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings
from streams.storage.registry import ModelRegistry
from streams.storage.warehouse import (
    ClickHouseWarehouse,
    RemoteWarehouse,
    WarehouseError,
    WarehouseUnavailable,
    apply_ddl,
    ddl_commands,
    open_warehouse,
    open_warehouse_from,
)
from tests.conftest import REPO_ROOT
from tests.unit.test_registry import artifact
from tests.unit.test_warehouse import DLQ_COLUMNS, TOKEN, dlq_row, start_service

pytestmark = pytest.mark.unit

OS_ACTOR = f"uid:{os.geteuid()}({pwd.getpwuid(os.geteuid()).pw_name})"


class Service:
    """The running service: its port, its data folder, and an authorized and an anonymous HTTP client."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"})
        self.anon = httpx.Client(base_url=self.url, timeout=10)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)

    def tables(self) -> list[str]:
        """surge's tables, asked of chdb the only way the service allows: reading each one."""
        present = []
        for name in ("signals", "outcomes", "dead_letters", "model_versions", "audit_logs"):
            if self.post("/query", {"sql": f"SELECT count() AS n FROM surge.{name}"}).status_code == 200:
                present.append(name)
        return present


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("warehouse-security")
    for proc, port, folder in start_service(root):
        svc = Service(port, folder)
        yield svc
        svc.http.close()
        svc.anon.close()
        assert proc.poll() is None, "the service died during the hostile probes"


def refused(resp: httpx.Response, *words: str) -> str:
    """Assert a 403 refusal with a reason containing ``words`` and no rows; returns the reason."""
    assert resp.status_code == 403, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and body["error"].startswith("refused:"), body
    for word in words:
        assert word.lower() in body["error"].lower(), body
    return str(body["error"])


# --- the token --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/query", {"sql": "SELECT 1 AS ok"}),
    ("/command", {"sql": "CREATE DATABASE IF NOT EXISTS surge"}),
    ("/insert", {"table": "surge.dead_letters", "column_names": DLQ_COLUMNS, "rows": [dlq_row("anon", 1)]}),
])
def test_no_token_is_401(service: Service, path: str, body: dict[str, Any]) -> None:
    """Each endpoint called without Authorization, with an empty bearer, and with a Basic credential: 401."""
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        resp = service.anon.post(path, json=body, headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert "bearer token" in resp.json()["error"] and resp.headers["www-authenticate"] == "Bearer"
    assert not service.post("/query", {"sql": "SELECT dlq_id FROM surge.dead_letters WHERE dlq_id = 'anon'"}
                            ).json()["rows"]


@pytest.mark.parametrize("wrong", ["wrong-token-0123456789abcdef", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
def test_wrong_token_is_401(service: Service, wrong: str) -> None:
    """A wrong token, the right one minus or plus a character, and the right one upper-cased: 401 on /query
    and /command; RemoteWarehouse reports it as unavailable (a deployment problem, not a refused row)."""
    headers = {"Authorization": f"Bearer {wrong}"}
    for path in ("/query", "/command"):
        resp = service.anon.post(path, json={"sql": "SELECT 1 AS ok"}, headers=headers)
        assert (resp.status_code, resp.json()) == (401, {"error": "invalid token"})
    wh = RemoteWarehouse(service.url, "surge", token=wrong)
    try:
        with pytest.raises(WarehouseUnavailable, match=r"401.*SURGE_WAREHOUSE_TOKEN"):
            wh.query("SELECT 1 AS ok")
    finally:
        wh.close()


def test_health_is_open_and_reveals_nothing(service: Service) -> None:
    """GET /health without a token: 200 and exactly {"status": "ok"} (no database name, no version, no error
    text), so readiness probes need no secret and an anonymous caller learns only that the service is up."""
    resp = service.anon.get("/health")
    assert (resp.status_code, resp.json()) == (200, {"status": "ok"})
    assert service.anon.get("/docs").status_code == 404 and service.anon.get("/openapi.json").status_code == 404


# --- /query -----------------------------------------------------------------------------------------------


def test_file_table_function_is_refused(service: Service) -> None:
    """The probe's SELECT * FROM file('/etc/passwd','LineAsString'), and the same file read through the scalar
    file() function, url(), numbers() and a file() hidden in a subquery: 403, the reason names the function,
    and nothing of the file comes back."""
    probes = {
        "SELECT * FROM file('/etc/passwd','LineAsString')": "table function 'file'",
        "SELECT file('/etc/passwd') AS f": "function 'file'",
        "SELECT count() AS n FROM (SELECT * FROM file('/etc/passwd','LineAsString'))": "table function 'file'",
        "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')": "table function 'url'",
        "SELECT * FROM numbers(3)": "table function 'numbers'",
        "SELECT * FROM surge.signals WHERE symbol IN (SELECT line FROM file('/etc/passwd', 'LineAsString'))":
            "table function 'file'",
    }
    for sql, reason in probes.items():
        resp = service.post("/query", {"sql": sql})
        refused(resp, reason)
        assert "root:" not in resp.text


def test_readonly_alone_refuses_table_functions_but_not_scalar_file_or_outfile(tmp_path: Path) -> None:
    """Why the service parses every SELECT instead of trusting ClickHouse's readonly=1 (on in-process chdb):
    readonly=1 does refuse the file() and url() table functions ("Cannot execute query in readonly mode"), but
    chdb 4.4 / ClickHouse 26.9 still lets the scalar file() read a file and INTO OUTFILE write one. (If this
    test starts failing, readonly got stricter: good news, the parse-tree rules stay.)"""
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    assert isinstance(wh, ClickHouseWarehouse)
    try:
        for sql in ("SELECT * FROM file('/etc/passwd','LineAsString')",
                    "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')"):
            with pytest.raises(WarehouseError, match="readonly"):
                wh.query(sql, settings=READONLY)
        secret = tmp_path / "secret.txt"
        secret.write_text("s3cr3t")
        assert wh.query(f"SELECT file('{secret}') AS f", settings=READONLY) == [{"f": "s3cr3t"}]
        target = tmp_path / "written.txt"
        wh.query(f"SELECT 1 AS x INTO OUTFILE '{target}'", settings=READONLY)
        assert target.exists()
    finally:
        wh.close()


def test_outfile_and_insert_into_function_are_refused(service: Service, tmp_path: Path) -> None:
    """The probe's INSERT INTO FUNCTION file('/tmp/x', ...) via /command and via /query, and SELECT ... INTO
    OUTFILE via /query: 403, and the files do not exist afterwards."""
    via_command = Path(f"/tmp/surge-probe-{uuid.uuid4().hex}")
    via_query = Path(f"/tmp/surge-probe-{uuid.uuid4().hex}")
    outfile = Path(f"/tmp/surge-probe-{uuid.uuid4().hex}")
    try:
        insert_fn = "INSERT INTO FUNCTION file('{}', 'LineAsString') SELECT 'pwned'"
        refused(service.post("/command", {"sql": insert_fn.format(via_command)}), "/command runs only")
        refused(service.post("/query", {"sql": insert_fn.format(via_query)}), "INTO")
        refused(service.post("/query", {"sql": f"SELECT 1 AS x INTO OUTFILE '{outfile}'"}), "INTO")
        assert not via_command.exists() and not via_query.exists() and not outfile.exists()
    finally:
        for path in (via_command, via_query, outfile):
            path.unlink(missing_ok=True)


def test_drop_table_is_refused_and_the_table_survives(service: Service) -> None:
    """DROP TABLE surge.signals via /command and via /query, TRUNCATE, DROP DATABASE: 403 each, and every surge
    table is still there and readable afterwards."""
    for sql in ("DROP TABLE surge.signals", "TRUNCATE TABLE surge.signals", "DROP DATABASE surge"):
        refused(service.post("/command", {"sql": sql}), "/command runs only surge's own DDL")
        refused(service.post("/query", {"sql": sql}), "single SELECT")
    assert service.tables() == ["signals", "outcomes", "dead_letters", "model_versions", "audit_logs"]


def test_model_versions_cannot_be_rewritten_through_command(service: Service) -> None:
    """ALTER TABLE surge.model_versions UPDATE/DELETE, INSERT INTO surge.model_versions SELECT ..., a DDL
    statement with one character changed, a genuine DDL statement with parameters, and CREATE TABLE under a
    new name: 403 each; the registry's rows are untouched."""
    wh = open_warehouse(service.url.replace("http", "surge+http", 1), "surge", token=TOKEN)
    try:
        ModelRegistry(wh, ManualClock(5_000)).register(artifact(service.folder.parent / "arts", "mv1", 0.02),
                                                       "bootstrap")
    finally:
        wh.close()
    before = service.post("/query", {"sql": "SELECT * FROM surge.model_versions FINAL"}).json()["rows"]
    ddl = ddl_commands("surge")
    model_ddl = next(sql for sql in ddl if "surge.model_versions" in sql)
    assert "ReplacingMergeTree(updated_us)" in model_ddl
    statements = [
        "ALTER TABLE surge.model_versions UPDATE is_active = 1 WHERE 1",
        "ALTER TABLE surge.model_versions DELETE WHERE 1",
        "INSERT INTO surge.model_versions SELECT * FROM surge.model_versions",
        "INSERT INTO surge.model_versions (model_version, is_active) VALUES ('evil', 1)",
        model_ddl.replace("ReplacingMergeTree(updated_us)", "Memory"),
        model_ddl + " ",
        "CREATE TABLE IF NOT EXISTS surge.evil (x String) ENGINE = Memory",
    ]
    for sql in statements:
        refused(service.post("/command", {"sql": sql}), "/command runs only")
    refused(service.post("/command", {"sql": ddl[0], "parameters": {"x": 1}}), "no parameters")
    assert service.post("/query", {"sql": "SELECT * FROM surge.model_versions FINAL"}).json()["rows"] == before
    assert "mv1" in [r["model_version"] for r in before]


def test_chained_statements_are_refused(service: Service) -> None:
    """SELECT ...; DROP ... via /query (chdb would run both), and a genuine DDL statement followed by
    '; DROP TABLE ...' via /command: 403, and surge.signals still exists."""
    refused(service.post("/query", {"sql": "SELECT 1 AS ok; DROP TABLE surge.signals"}), "';'")
    refused(service.post("/query", {"sql": "SELECT 1 AS ok;"}), "';'")
    refused(service.post("/command", {"sql": ddl_commands("surge")[1] + "; DROP TABLE surge.signals"}),
            "/command runs only")
    assert "signals" in service.tables()


@pytest.mark.parametrize(("sql", "parameters", "reason"), [
    ("SELECT name FROM system.tables", None, "not 'system.tables'"),
    ("SELECT * FROM information_schema.tables", None, "not 'information_schema.tables'"),
    ("SELECT system.one.dummy AS d", None, "names another database"),
    ("SELECT 1 IN system.one AS x", None, "names another database"),
    ("SELECT symbol FROM surge.signals WHERE symbol IN surge.outcomes", None, "IN (SELECT"),
    ("SELECT dummy FROM one", None, "must be qualified"),
    ("WITH t AS (SELECT 1 AS a) SELECT a FROM t", None, "must be qualified"),
    ("SELECT x.signal_id FROM surge.signals AS system", None, "alias 'system'"),
    ("SELECT * FROM {t:Identifier}", {"t": "system.users"}, "IDENTIFIER"),
    ("SELECT 1 AS ok SETTINGS readonly = 0", None, "SETTINGS"),
    ("SELECT 1 AS ok FORMAT JSON", None, "FORMAT"),
    ("SELECT * FROM `system`.`users`", None, "quoted identifiers"),
    ('SELECT * FROM "system"."users"', None, "quoted identifiers"),
    ("SELECT getSetting('readonly') AS s", None, "function 'getSetting'"),
    ("SELECT joinGet('system.one', 'dummy', 0) AS j", None, "function 'joinGet'"),
    ("SELECT dictGet('d', 'a', 1) AS d", None, "function 'dictGet'"),
    ("SELECT sleep(3) AS s", None, "function 'sleep'"),
    ("SELECT * APPLY toString FROM surge.signals", None, "not allowed"),
    ("SELECT 1 AS a INTERSECT SELECT 1 AS a", None, "not allowed"),
    ("SHOW TABLES FROM system", None, "single SELECT"),
    ("EXPLAIN SELECT 1", None, "single SELECT"),
    ("SELECT {s:String} AS s", {"$s$": "x"}, "parameter names"),
])
def test_queries_beyond_surges_tables_are_refused(
    service: Service, sql: str, parameters: dict[str, Any] | None, reason: str,
) -> None:
    """Other databases (system, information_schema, default) by table, by db.table.column, by IN, by an
    alias named like a database, by an Identifier parameter; unqualified names (the default database, CTEs);
    SETTINGS/FORMAT clauses; quoted identifiers; functions that read settings, tables by name, dictionaries,
    or just sleep; column transformers; other statement kinds; odd parameter names: each a 403 with a reason."""
    refused(service.post("/query", {"sql": sql, "parameters": parameters}), reason)


def test_insert_only_into_surges_tables(service: Service) -> None:
    """/insert into system.xxx, system.one, default.t, information_schema.tables, surge.unknown, a name with
    SQL in it, and with SQL in a column name: 403 each, and nothing was written."""
    row = dlq_row("sneaky", 1)
    for table in ("system.xxx", "system.one", "default.t", "information_schema.tables", "surge.unknown",
                  "unknown", "surge.dead_letters; DROP TABLE surge.signals", "surge.dead_letters FINAL"):
        refused(service.post("/insert", {"table": table, "column_names": DLQ_COLUMNS, "rows": [row]}))
    for columns in ([*DLQ_COLUMNS[:-1], "stored_us) SELECT * FROM file('/etc/passwd')"],
                    [*DLQ_COLUMNS[:-1], "dlq_id"]):
        refused(service.post("/insert", {"table": "surge.dead_letters", "column_names": columns, "rows": [row]}))
    rows = service.post("/query", {"sql": "SELECT count() AS n FROM surge.dead_letters WHERE dlq_id = {i:String}",
                                   "parameters": {"i": "sneaky"}}).json()["rows"]
    assert rows == [{"n": 0}]


def test_declared_body_beyond_the_limit_is_413_before_it_is_read(service: Service) -> None:
    """A POST /insert declaring a 1 GB body (and sending none of it): 413 at once, no buffering, no OOM; the
    service stays healthy. Without the token the same request is a 401 (authorization comes first)."""
    def raw(headers: str) -> bytes:
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(f"POST /insert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
                         f"Content-Length: {1 << 30}\r\n\r\n{{".encode())
            return sock.recv(4096)

    assert raw(f"Authorization: Bearer {TOKEN}\r\n").startswith(b"HTTP/1.1 413")
    assert raw("").startswith(b"HTTP/1.1 401")
    assert service.anon.get("/health").status_code == 200


def test_streamed_body_beyond_the_limit_is_413(tmp_path: Path) -> None:
    """A chunked body (no Content-Length) that grows past the limit, on the real app in-process over real chdb
    with a 1 KiB limit: 413 once the limit is crossed; a body under the limit still works."""
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    assert isinstance(wh, ClickHouseWarehouse)
    try:
        apply_ddl(wh, "surge")
        client = TestClient(create_app(wh, TOKEN, max_body_bytes=1024),
                            headers={"Authorization": f"Bearer {TOKEN}"})

        def chunks() -> Iterator[bytes]:
            yield b'{"sql": "SELECT 1 AS ok", "pad": "'
            for _ in range(64):
                yield b"x" * 64
            yield b'"}'

        resp = client.post("/query", content=chunks())
        assert resp.status_code == 413 and "larger than 1024 bytes" in resp.json()["error"]
        assert client.post("/query", json={"sql": "SELECT 1 AS ok"}).json() == {"rows": [{"ok": 1}]}
    finally:
        wh.close()
    assert MAX_BODY_BYTES == 64 * 1024 * 1024


# --- what surge itself does still works ---------------------------------------------------------------------


def test_the_paths_surge_uses_still_work(service: Service) -> None:
    """Over RemoteWarehouse with the token: apply_ddl, the sink's inserts, the registry (register, deploy,
    audit trail: inserts plus SELECT ... FINAL), the gateway's parameterized queries (dead letters with
    Nullable parameters, signal stats with quantiles) and the health probe's SELECT 1 AS ok."""
    settings = Settings(clickhouse_url=f"surge+{service.url}", warehouse_token=SecretStr(TOKEN))
    wh = open_warehouse_from(settings)
    try:
        assert isinstance(wh, RemoteWarehouse)
        apply_ddl(wh, "surge")
        wh.insert("dead_letters", [dlq_row("ok:0:1", 10), dlq_row("ok:0:1", 20, "newer")], DLQ_COLUMNS)
        rows = wh.query(
            "SELECT dlq_id, stage, source_topic, source_partition, source_offset, error_type, reason, "
            "length(base64Decode(payload_b64)) AS payload_bytes, failed_us FROM surge.dead_letters FINAL "
            "WHERE ({stage:Nullable(String)} IS NULL OR stage = {stage:Nullable(String)}) "
            "AND ({error_type:Nullable(String)} IS NULL OR error_type = {error_type:Nullable(String)}) "
            "AND dlq_id = {id:String} ORDER BY failed_us DESC LIMIT {limit:UInt32}",
            {"stage": None, "error_type": "decode_error", "limit": 10, "id": "ok:0:1"},
        )
        assert [(r["dlq_id"], r["reason"], r["payload_bytes"]) for r in rows] == [("ok:0:1", "newer", 3)]
        stats = wh.query("SELECT stage, error_type, count() AS count, max(failed_us) AS last_failed_us, "
                         "any(reason) AS example_reason FROM surge.dead_letters FINAL "
                         "GROUP BY stage, error_type ORDER BY count DESC, stage, error_type")
        assert stats and stats[0]["stage"] == "decision"
        latency = wh.query("SELECT count() AS n, quantilesExactInclusive(0.5, 0.95, 0.99)(latency_ms) AS q "
                           "FROM surge.signals FINAL WHERE symbol = {symbol:String} AND decision_us >= {s:Int64}",
                           {"symbol": "BTCUSDT", "s": 0})
        assert latency[0]["n"] == 0
        assert wh.query("SELECT 1 AS ok") == [{"ok": 1}]

        registry = ModelRegistry(wh, ManualClock(10_000))
        registry.register(artifact(service.folder.parent / "arts2", "ok1", 0.01), "bootstrap")
        registry.deploy("ok1", OS_ACTOR, reason="paths still work")
        active = registry.active()
        assert active is not None and active.model_version == "ok1"
        assert [r["action"] for r in registry.audit_log() if r["model_version"] == "ok1"] == ["register", "deploy"]
    finally:
        wh.close()


def test_audit_actor_is_the_os_identity_not_USER(service: Service, tmp_path: Path) -> None:
    """`surge models register` and `deploy` run with USER=mallory LOGNAME=mallory USERNAME=mallory in their
    environment (which getpass.getuser() believes): the audit log and deployed_by say uid:<euid>(<name>)."""
    folder = artifact(tmp_path, "audited1", 0.01)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env.update({"USER": "mallory", "LOGNAME": "mallory", "USERNAME": "mallory", "LNAME": "mallory",
                "SURGE_CLICKHOUSE_URL": f"surge+{service.url}", "SURGE_WAREHOUSE_TOKEN": TOKEN})
    for args in (["register", str(folder)], ["deploy", "audited1", "--reason", "audit test"]):
        done = subprocess.run([sys.executable, "-m", "services.cli", "models", *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    audit = service.post("/query", {"sql": "SELECT action, actor FROM surge.audit_logs WHERE model_version = "
                                           "{v:String} ORDER BY at_us", "parameters": {"v": "audited1"}})
    assert audit.json()["rows"] == [{"action": "register", "actor": OS_ACTOR}, {"action": "deploy", "actor": OS_ACTOR}]
    deployed = service.post("/query", {"sql": "SELECT deployed_by FROM surge.model_versions FINAL WHERE "
                                              "model_version = {v:String}", "parameters": {"v": "audited1"}})
    assert deployed.json()["rows"] == [{"deployed_by": OS_ACTOR}]
    assert "mallory" not in OS_ACTOR


# --- who gets the token --------------------------------------------------------------------------------------


def test_surge_run_generates_one_token_for_every_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """plan_children (what `surge run` starts) without SURGE_WAREHOUSE_TOKEN: one fresh random token in every
    child's environment, none on any command line; a new one per run; an operator's own token is kept."""
    for key in [k for k in os.environ if k.startswith("SURGE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SURGE_BROKERS", "127.0.0.1:9")  # external broker and redis: no binaries needed
    monkeypatch.setenv("SURGE_REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("SURGE_DATA_DIR", str(tmp_path))
    children = plan_children(Settings(), "sim")
    assert "warehouse" in [c.name for c in children]
    tokens = {c.env.get("SURGE_WAREHOUSE_TOKEN") for c in children}
    assert len(tokens) == 1
    token = tokens.pop()
    assert token is not None and len(token) >= 43  # secrets.token_urlsafe(32)
    assert all(token not in " ".join(c.argv) for c in children)
    assert {c.env["SURGE_WAREHOUSE_TOKEN"] for c in plan_children(Settings(), "sim")} != {token}

    monkeypatch.setenv("SURGE_WAREHOUSE_TOKEN", TOKEN)
    assert {c.env["SURGE_WAREHOUSE_TOKEN"] for c in plan_children(Settings(), "sim")} == {TOKEN}


@pytest.mark.parametrize("argv", [
    ["-m", "services.cli", "warehouse", "--port", "9"],
    ["-m", "services.warehouse.server", "--port", "9"],
])
@pytest.mark.parametrize("token", [None, "short"])
def test_the_service_refuses_to_start_without_a_token(tmp_path: Path, argv: list[str], token: str | None) -> None:
    """`surge warehouse` and `python -m services.warehouse.server` with no SURGE_WAREHOUSE_TOKEN, or one of
    5 characters: they exit non-zero naming the variable, and never open the chdb folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    if token is not None:
        env["SURGE_WAREHOUSE_TOKEN"] = token
    folder = tmp_path / "never"
    done = subprocess.run([sys.executable, *argv, "--path", str(folder)], env=env, cwd=REPO_ROOT,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode != 0
    assert b"SURGE_WAREHOUSE_TOKEN" in done.stdout + done.stderr
    assert not folder.exists()


def test_tokens_are_not_printed() -> None:
    """The token is a SecretStr: repr/str of the settings (what a log line or a traceback would show) hide it."""
    settings = Settings(warehouse_token=SecretStr(TOKEN))
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    assert orjson.dumps(settings.model_dump(mode="json")).decode().count(TOKEN) == 0
