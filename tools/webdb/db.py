"""One connection to the WebDB, SQLite or MariaDB/MySQL, behind the same two calls.

SQL is written once with `?` placeholders and backtick-quoted names (SQLite accepts both);
for PyMySQL the placeholders become `%s`. Connections are in autocommit mode: every write
the daemon makes is a single UPDATE or INSERT, guarded by a WHERE that makes it a no-op
when repeated.
"""
from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from tools.webdb.config import WebDbConfig, read_password
from tools.webdb.schema import META_TABLE, REQUESTS_TABLE, create_statements


class DbUnavailable(Exception):
    """The WebDB cannot be reached or refused a statement; the daemon backs off and retries."""


class WebDb:
    def __init__(self, config: WebDbConfig) -> None:
        self.config = config
        self.dialect = "sqlite" if config.driver == "sqlite" else "mysql"
        self.connection: Any = None

    def connect(self) -> None:
        if self.connection is not None:
            return
        try:
            if self.dialect == "sqlite":
                assert self.config.path is not None  # required for sqlite (load_client_config)
                self.connection = sqlite3.connect(self.config.path, isolation_level=None, timeout=30)
            else:
                import pymysql  # only needed for MariaDB/MySQL
                self.connection = pymysql.connect(
                    host=self.config.host, port=self.config.port, unix_socket=self.config.unix_socket,
                    user=self.config.user, password=read_password(self.config),
                    database=self.config.database, autocommit=True, charset="utf8mb4",
                    connect_timeout=10, read_timeout=60, write_timeout=60)
        except Exception as exc:  # sqlite3.Error, pymysql.err.*: all mean "not now"
            self.connection = None
            raise DbUnavailable(f"cannot connect to the WebDB: {type(exc).__name__}: {exc}") from None
        self.execute(REQUESTS_TABLE)
        self.execute(META_TABLE)

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None

    def query(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cursor = self._run(sql, params)
        names = [d[0] for d in cursor.description]
        return [{name: _plain(value) for name, value in zip(names, row)} for row in cursor.fetchall()]

    def execute(self, sql: str, params: tuple = ()) -> int:
        return self._run(sql, params).rowcount

    def _run(self, sql: str, params: tuple) -> Any:
        self.connect()
        if self.dialect == "mysql":
            sql = sql.replace("?", "%s")
        try:
            cursor = self.connection.cursor()
            cursor.execute(sql, params)
            return cursor
        except Exception as exc:
            # A lost server connection is only seen here; start afresh on the next call.
            self.close()
            raise DbUnavailable(f"WebDB statement failed: {type(exc).__name__}: {exc}") from None

    def create_dev_tables(self) -> None:
        for statement in create_statements(self.dialect):
            self.execute(statement)


def _plain(value: Any) -> Any:
    """MySQL gives datetime objects, SQLite strings: compare and store strings everywhere."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value
