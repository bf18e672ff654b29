"""The WebDB tables the client daemon reads and writes, as DDL for SQLite and MariaDB/MySQL.

The column names and types follow CAcert's public cacert-devel schema (the tables
emailcerts, domaincerts, orgemailcerts, orgdomaincerts, gpg and email); only what the web
application and this daemon use is here, so a development or test WebDB can be created
with `signer-client init-webdb`. Production uses the web application's own tables: the
daemon only adds its bookkeeping table, signer_client_requests (REQUESTS_TABLE below).
"""
from __future__ import annotations

ZERO = "'0000-00-00 00:00:00'"  # CAcert's "no date" value

_CERT_COMMON = [
    ("serial", "varchar(50)", "NOT NULL DEFAULT ''"),
    ("CN", "varchar(255)", "NOT NULL DEFAULT ''"),
    ("subject", "text", "NOT NULL"),
    ("csr_name", "varchar(255)", "NOT NULL DEFAULT ''"),
    ("crt_name", "varchar(255)", "NOT NULL DEFAULT ''"),
    ("created", "datetime", f"NOT NULL DEFAULT {ZERO}"),
    ("modified", "datetime", f"NOT NULL DEFAULT {ZERO}"),
    ("revoked", "datetime", f"NOT NULL DEFAULT {ZERO}"),
    ("expire", "datetime", f"NOT NULL DEFAULT {ZERO}"),
    ("warning", "tinyint(1)", "NOT NULL DEFAULT 0"),
    ("renewed", "tinyint(1)", "NOT NULL DEFAULT 0"),
    ("rootcert", "int(2)", "NOT NULL DEFAULT 1"),
    ("md", "enum('md5','sha1','sha256','sha512')", "NOT NULL DEFAULT 'sha512'"),
    ("type", "tinyint(4)", "DEFAULT NULL"),
    ("pkhash", "char(40)", "DEFAULT NULL"),
    ("certhash", "char(40)", "DEFAULT NULL"),
    ("coll_found", "tinyint(1)", "NOT NULL DEFAULT 0"),
]
_EMAIL_CERT = [("keytype", "char(2)", "NOT NULL DEFAULT 'NS'"), ("codesign", "tinyint(1)", "NOT NULL DEFAULT 0")]

TABLE_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "emailcerts": [("memid", "int(11)", "NOT NULL DEFAULT 0"), *_EMAIL_CERT, *_CERT_COMMON,
                   ("disablelogin", "int(1)", "NOT NULL DEFAULT 0")],
    "domaincerts": [("domid", "int(11)", "NOT NULL DEFAULT 0"), *_CERT_COMMON],
    "orgemailcerts": [("orgid", "int(11)", "NOT NULL DEFAULT 0"), *_EMAIL_CERT, *_CERT_COMMON],
    "orgdomaincerts": [("orgid", "int(11)", "NOT NULL DEFAULT 0"), *_CERT_COMMON],
    "gpg": [("memid", "int(11)", "NOT NULL DEFAULT 0"),
            ("email", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("level", "int(1)", "NOT NULL DEFAULT 0"),
            ("multiple", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("expires", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("csr", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("crt", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("issued", "datetime", f"NOT NULL DEFAULT {ZERO}"),
            ("expire", "datetime", f"NOT NULL DEFAULT {ZERO}"),
            ("keyid", "char(18)", "DEFAULT NULL"),
            ("warning", "tinyint(1)", "NOT NULL DEFAULT 0")],
    "email": [("memid", "int(11)", "NOT NULL DEFAULT 0"),
              ("email", "varchar(255)", "NOT NULL DEFAULT ''"),
              ("created", "datetime", f"NOT NULL DEFAULT {ZERO}"),
              ("modified", "datetime", f"NOT NULL DEFAULT {ZERO}"),
              ("deleted", "datetime", f"NOT NULL DEFAULT {ZERO}"),
              ("hash", "varchar(50)", "NOT NULL DEFAULT ''"),
              ("attempts", "int(1)", "NOT NULL DEFAULT 0")],
}

# The daemon's own bookkeeping: one row per request it sent (the id is the signer's
# idempotency key), with the attempts and the last failure. The same DDL works on both.
REQUESTS_TABLE = """CREATE TABLE IF NOT EXISTS signer_client_requests (
    request_id varchar(190) NOT NULL PRIMARY KEY,
    tbl varchar(32) NOT NULL,
    row_id int NOT NULL,
    action varchar(16) NOT NULL,
    state varchar(16) NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    last_error text,
    first_attempt varchar(32),
    last_attempt varchar(32),
    done_at varchar(32),
    retry_after varchar(32)
)"""

# Settings the daemon keeps in the WebDB itself, because they must not change under it:
# request_id_prefix (a new prefix would ask again for rows whose answers were lost).
META_TABLE = """CREATE TABLE IF NOT EXISTS signer_client_meta (
    name varchar(64) NOT NULL PRIMARY KEY,
    value varchar(255) NOT NULL
)"""


def create_statements(dialect: str) -> list[str]:
    """CREATE TABLE statements for a development/test WebDB ("sqlite" or "mysql")."""
    statements = []
    for table, columns in TABLE_COLUMNS.items():
        if dialect == "sqlite":
            # SQLite has no enum and no display widths; the affinity of the base type is kept.
            lines = ["`id` INTEGER PRIMARY KEY AUTOINCREMENT"] + [
                f"`{name}` {'text' if kind.startswith('enum') else kind.split('(')[0]} {rule}"
                for name, kind, rule in columns]
            tail = ""
        else:
            lines = ["`id` int(11) NOT NULL AUTO_INCREMENT"] + [
                f"`{name}` {kind} {rule}" for name, kind, rule in columns] + ["PRIMARY KEY (`id`)"]
            tail = " DEFAULT CHARSET=latin1"
        statements.append(f"CREATE TABLE IF NOT EXISTS `{table}` (\n  " + ",\n  ".join(lines) + f"\n){tail}")
    return statements
