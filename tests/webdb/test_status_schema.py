"""Unit tests of the WebDB client daemon's schema DDL (tools/webdb/schema.py), its database
wrapper for SQLite and MySQL (tools/webdb/db.py, MySQL through a fake connection) and its
status file (tools/webdb/status.py).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
import types
from typing import Any

import pytest

from tools.webdb.config import WebDbConfig
from tools.webdb.db import DbUnavailable, WebDb
from tools.webdb.schema import REQUESTS_TABLE, create_statements
from tools.webdb.status import StatusFile, daemon_alive, read_status, status_lines
from tests.support.webdb_fixtures import ZERO


# -- schema and db -------------------------------------------------------------------------

TABLES = {"emailcerts", "domaincerts", "orgemailcerts", "orgdomaincerts", "gpg", "email", "users", "notary",
          "domains", "org", "orginfo", "orgdomains", "domlink", "emaillink", "orgdomlink", "orgemaillink"}


def test_sqlite_schema_creates_the_tables_with_cacert_defaults():
    conn = sqlite3.connect(":memory:")
    statements = create_statements("sqlite")
    assert len([s for s in statements if s.startswith("CREATE TABLE")]) == len(TABLES)
    for statement in statements:
        assert "enum(" not in statement and "int(11)" not in statement
        conn.execute(statement)
    conn.execute(REQUESTS_TABLE)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES | {"signer_client_requests"} <= names
    columns = {r[1] for r in conn.execute("PRAGMA table_info(emailcerts)")}
    assert {"id", "memid", "codesign", "serial", "subject", "csr_name", "crt_name", "revoked", "expire",
            "warning", "md", "type", "rootcert"} <= columns
    assert "codesign" not in {r[1] for r in conn.execute("PRAGMA table_info(domaincerts)")}
    conn.execute("INSERT INTO emailcerts (subject) VALUES ('/CN=x')")
    row = conn.execute("SELECT id, crt_name, revoked, warning, md, type FROM emailcerts").fetchone()
    assert row == (1, "", ZERO, 0, "sha512", None)
    # What sql_mode='' gives the web application's INSERTs, emulated: coll_found and subject
    # (NOT NULL, no default) implicit, an md outside the enum stored as ''
    conn.execute("INSERT INTO emailcerts (keytype, md) VALUES ('NS', 'sha384')")
    assert conn.execute("SELECT coll_found, subject, md FROM emailcerts WHERE id=2").fetchone() == (0, "", "")
    conn.execute("UPDATE emailcerts SET md='sha384' WHERE id=1")
    assert conn.execute("SELECT md FROM emailcerts WHERE id=1").fetchone() == ("",)
    for table, column in (("emailcerts", "description"), ("orgemailcerts", "ou"), ("orgemailcerts", "orgadminid"),
                          ("orgdomaincerts", "revokeorgadminid"), ("notary", "deleted"), ("gpg", "description")):
        assert column in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    conn.execute("INSERT INTO gpg (email) VALUES ('a@example.org')")
    assert conn.execute("SELECT crt, csr, warning, issued FROM gpg").fetchone() == ("", "", 0, ZERO)
    # idempotent
    for statement in statements:
        conn.execute(statement)


def test_mysql_schema_keeps_cacert_types():
    statements = create_statements("mysql")
    assert len(statements) == len(TABLES)
    assert all("`coll_found` tinyint(1) NOT NULL," in s for s in statements if "coll_found" in s)
    email = next(s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS `emailcerts`"))
    assert "`id` int(11) NOT NULL AUTO_INCREMENT" in email
    assert "PRIMARY KEY (`id`)" in email
    assert "`md` enum('md5','sha1','sha256','sha512') NOT NULL DEFAULT 'sha512'" in email
    assert "`revoked` datetime NOT NULL DEFAULT '0000-00-00 00:00:00'" in email
    assert email.endswith(") DEFAULT CHARSET=latin1")
    assert all("AUTOINCREMENT" not in s for s in statements)


def test_webdb_sqlite_query_execute_and_bookkeeping_table(tmp_path):
    db = WebDb(WebDbConfig(driver="sqlite", path=str(tmp_path / "w.sqlite")))
    db.create_dev_tables()
    assert db.query("SELECT COUNT(*) AS n FROM signer_client_requests") == [{"n": 0}]
    db.execute("INSERT INTO gpg (email, csr) VALUES (?, ?)", ("a@example.org", "csr/gpg/0/gpg-1.csr"))
    assert db.execute("UPDATE gpg SET warning=1 WHERE warning=?", (0,)) == 1
    assert db.execute("UPDATE gpg SET warning=1 WHERE warning=?", (0,)) == 0
    assert db.query("SELECT email, warning FROM gpg WHERE id=?", (1,)) == [{"email": "a@example.org", "warning": 1}]
    db.close()
    assert db.connection is None


def test_webdb_statement_failure_is_db_unavailable_and_reconnects(tmp_path):
    db = WebDb(WebDbConfig(driver="sqlite", path=str(tmp_path / "w.sqlite")))
    db.connect()
    with pytest.raises(DbUnavailable, match="WebDB statement failed"):
        db.query("SELECT * FROM no_such_table")
    assert db.connection is None
    assert db.query("SELECT 1 AS one") == [{"one": 1}]
    db.close()


def test_webdb_cannot_connect(tmp_path):
    db = WebDb(WebDbConfig(driver="sqlite", path=str(tmp_path / "no" / "such" / "dir" / "w.sqlite")))
    with pytest.raises(DbUnavailable, match="cannot connect to the WebDB"):
        db.connect()
    assert db.connection is None


class FakeCursor:
    def __init__(self, conn: "FakeConnection") -> None:
        self.conn = conn
        self.description = [("a",), ("b",), ("c",)]
        self.rowcount = 1

    def execute(self, sql: str, params: tuple) -> None:
        if self.conn.fail:
            raise RuntimeError("server has gone away")
        self.conn.statements.append((sql, params))

    def fetchall(self):
        return [(dt.datetime(2026, 11, 27, 10, 0, 1), b"caf\xe9", 7)]


class FakeConnection:
    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple]] = []
        self.fail = False
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


def test_mysql_placeholders_and_plain_values():
    db = WebDb(WebDbConfig(driver="mysql", password_env="X"))
    assert db.dialect == "mysql"
    db.connection = fake = FakeConnection()
    rows = db.query("SELECT a, b, c FROM `gpg` WHERE id=? AND crt=?", (1, ""))
    assert fake.statements == [("SELECT a, b, c FROM `gpg` WHERE id=%s AND crt=%s", (1, ""))]
    assert rows == [{"a": "2026-11-27 10:00:01", "b": "café", "c": 7}]
    assert db.execute("UPDATE gpg SET warning=? WHERE id=?", (2, 1)) == 1
    assert fake.statements[-1][0] == "UPDATE gpg SET warning=%s WHERE id=%s"
    fake.fail = True
    with pytest.raises(DbUnavailable, match="RuntimeError: server has gone away"):
        db.execute("UPDATE gpg SET warning=? WHERE id=?", (2, 1))
    assert fake.closed and db.connection is None


def test_sqlite_keeps_question_marks():
    db = WebDb(WebDbConfig(driver="sqlite", path=":memory:"))
    db.connection = fake = FakeConnection()
    db.query("SELECT a FROM t WHERE x=?", (1,))
    assert fake.statements == [("SELECT a FROM t WHERE x=?", (1,))]


def test_mysql_connect_uses_the_password_from_env(monkeypatch):
    seen: dict[str, Any] = {}

    def connect(**kwargs: Any) -> FakeConnection:
        seen.update(kwargs)
        return FakeConnection()

    monkeypatch.setitem(sys.modules, "pymysql", types.SimpleNamespace(connect=connect))
    monkeypatch.setenv("WEBDB_UNIT_PW", "pw-from-env")
    db = WebDb(WebDbConfig(driver="mysql", host="db.example", port=3307, database="cacert",
                           user="signer", password_env="WEBDB_UNIT_PW"))
    db.connect()
    assert (seen["host"], seen["port"], seen["user"], seen["database"]) == ("db.example", 3307, "signer", "cacert")
    assert seen["password"] == "pw-from-env" and seen["autocommit"] is True
    assert db.connection.statements[0][0] == REQUESTS_TABLE  # the bookkeeping table is ensured


def test_mysql_connect_failure_is_db_unavailable(monkeypatch):
    def connect(**kwargs: Any):
        raise ConnectionRefusedError("refused")

    monkeypatch.setitem(sys.modules, "pymysql", types.SimpleNamespace(connect=connect))
    monkeypatch.setenv("WEBDB_UNIT_PW", "pw")
    db = WebDb(WebDbConfig(driver="mysql", password_env="WEBDB_UNIT_PW"))
    with pytest.raises(DbUnavailable, match="cannot connect to the WebDB: ConnectionRefusedError"):
        db.connect()
    assert db.connection is None


# -- status --------------------------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_file_round_trip(tmp_path):
    state = tmp_path / "state"
    status = StatusFile(state)
    status.update(queue={"emailcerts.sign": 2}, signer={"reachable": True, "since": "2026-11-27 10:00:00"})
    status.error("emailcerts 5: bad_csr: not a CSR")
    status.write()
    data = read_status(state)
    assert data["pid"] == os.getpid() and data["running"] is True
    assert data["queue"] == {"emailcerts.sign": 2}
    assert data["last_error"]["message"] == "emailcerts 5: bad_csr: not a CSR"
    assert isinstance(data["updated_unix"], float) and data["updated_at"]
    assert [p.name for p in state.iterdir()] == ["status.json"]
    assert daemon_alive(data, 60) is True
    lines = status_lines(data, daemon_alive(data, 60))
    assert lines[0].startswith(f"daemon: running (pid {os.getpid()}")
    assert lines[-1] == f"last error: {data['last_error']['at']} emailcerts 5: bad_csr: not a CSR"


def test_read_status_missing_or_garbage(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None


@pytest.mark.parametrize("status", [
    {"running": False, "pid": os.getpid()},
    {"running": True},
    {"running": True, "pid": "abc"},
])
def test_daemon_alive_false(status):
    assert daemon_alive(status, 60) is False


def test_daemon_alive_false_for_a_dead_pid():
    assert daemon_alive({"running": True, "pid": dead_pid(), "updated_unix": time.time()}, 60) is False
    assert daemon_alive({"running": True, "pid": os.getpid(), "updated_unix": time.time() - 120}, 60) is False  # stale


def test_status_lines_signer_away_queue_and_last_error():
    status = {"pid": 4242, "started_at": "2026-11-27 09:00:00", "updated_at": "2026-11-27 10:00:00",
              "signer": {"reachable": False, "since": "2026-11-27 09:59:00", "reason": "cannot open /dev/ttyS9"},
              "health": None,
              "queue": {"emailcerts.sign": 2, "domaincerts.sign": 0, "gpg.sign": 1},
              "counters": {"issued": 5, "failed": 1},
              "crl": {"root": {"number": 12, "at": "2026-11-27 09:30:00", "file": "/crl/revoke.crl"}},
              "last_error": {"at": "2026-11-27 09:59:00", "message": "signer away: cannot open /dev/ttyS9"}}
    lines = status_lines(status, alive=False)
    text = "\n".join(lines)
    assert lines[0].startswith("daemon: NOT running (pid 4242")
    assert lines[1] == "signer: AWAY since 2026-11-27 09:59:00 (cannot open /dev/ttyS9)"
    assert "last health: none yet" in lines
    assert "queue: 3 rows waiting\n  emailcerts.sign: 2\n  gpg.sign: 1" in lines
    assert "domaincerts.sign" not in text
    assert "done since start: failed 1, issued 5" in lines
    assert "crl root: number 12 at 2026-11-27 09:30:00 -> /crl/revoke.crl" in lines
    assert lines[-1] == "last error: 2026-11-27 09:59:00 signer away: cannot open /dev/ttyS9"


def test_status_lines_reachable_unhealthy_nothing_queued():
    status = {"pid": 1, "signer": {"reachable": True, "since": "2026-11-27 10:00:00", "reason": "old"},
              "health": {"at": "2026-11-27 10:00:00", "healthy": False, "version": "1.0", "node_id": "a",
                         "problems": ["hsm: token missing"]},
              "queue": {}, "counters": {}, "last_error": None}
    lines = status_lines(status, alive=True)
    assert lines[1] == "signer: reachable since 2026-11-27 10:00:00"
    assert "last health 2026-11-27 10:00:00: UNHEALTHY, version 1.0, node a" in lines
    assert "  problem: hsm: token missing" in lines
    assert "queue: 0 rows waiting" in lines
    assert "done since start: nothing" in lines
    assert lines[-1] == "last error: none"


def test_status_json_is_what_status_lines_reads(tmp_path):
    status = StatusFile(tmp_path)
    status.update(running=False)
    status.write()
    data = json.loads((tmp_path / "status.json").read_text())
    assert daemon_alive(data, 60) is False
    assert status_lines(data, daemon_alive(data, 60))[0].startswith("daemon: NOT running")
