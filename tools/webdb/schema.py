"""The WebDB tables the client daemon reads and writes, as DDL for SQLite and MariaDB/MySQL.

CAcert's real schema (CAcertOrg/cacert-devel scripts/db_migrations/version0.sh, with the
columns version1-3 add: `description`, `orgemailcerts.ou`, `orgadminid`, `revokeorgadminid`,
`notary.deleted`, `org`/`orginfo` `creator_id`/`created`/`deleted`) for the tables the daemon
reads and writes and the ones it reads for client.pl's rules (users, notary, email, domains,
org, orginfo and the link tables), so that a development or test WebDB can be created with
`signer-client init-webdb`. Indexes are left out. Production uses the web application's own
tables: the daemon only adds its bookkeeping tables (REQUESTS_TABLE, META_TABLE below).

The web application's INSERTs need MariaDB/MySQL with sql_mode='' (`coll_found` NOT NULL
with no default is never set, org server rows put '' into the tinyint `type`, SPKAC rows
leave out `subject`, and `md` gets values its enum lacks). SQLite has no such mode: there,
every NOT NULL column without a default gets the value MySQL's non-strict mode uses (0, '',
the zero date), and a trigger turns an `md` outside the enum into '' as MySQL does.
"""
from __future__ import annotations

ZERO = "'0000-00-00 00:00:00'"  # CAcert's "no date" value
MD_ENUM = ("md5", "sha1", "sha256", "sha512")  # emailcerts.md etc.: no sha384

_DATE = ("datetime", f"NOT NULL DEFAULT {ZERO}")


def _cert_columns(owner: str, *extra: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    return [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
            (owner, "int(11)", "NOT NULL DEFAULT 0"),
            ("serial", "varchar(50)", "NOT NULL DEFAULT ''"),
            ("CN", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("subject", "text", "NOT NULL"),
            ("csr_name", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("crt_name", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("created", *_DATE), ("modified", *_DATE), ("revoked", *_DATE), ("expire", *_DATE),
            ("warning", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("renewed", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("rootcert", "int(2)", "NOT NULL DEFAULT 1"),
            ("md", "enum(" + ",".join(f"'{m}'" for m in MD_ENUM) + ")", "NOT NULL DEFAULT 'sha512'"),
            ("type", "tinyint(4)", "DEFAULT NULL"),
            ("pkhash", "char(40)", "DEFAULT NULL"),
            ("certhash", "char(40)", "DEFAULT NULL"),
            ("coll_found", "tinyint(1)", "NOT NULL"),  # no default: the web app never sets it
            ("description", "varchar(100)", "NOT NULL DEFAULT ''"),  # version1
            *extra]


_EMAIL_CERT = [("keytype", "char(2)", "NOT NULL DEFAULT 'NS'"), ("codesign", "tinyint(1)", "NOT NULL DEFAULT 0")]
_ORG_ADMINS = [("orgadminid", "int(11)", "DEFAULT NULL"), ("revokeorgadminid", "int(11)", "DEFAULT NULL")]  # version3
_DELETED = [("creator_id", "int(11)", "NOT NULL DEFAULT 0"), ("created", *_DATE), ("deleted", *_DATE)]  # version1

TABLE_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "emailcerts": _cert_columns("memid", *_EMAIL_CERT, ("disablelogin", "int(1)", "NOT NULL DEFAULT 0")),
    "domaincerts": _cert_columns("domid"),
    "orgemailcerts": _cert_columns("orgid", *_EMAIL_CERT, ("ou", "varchar(50)", "NOT NULL DEFAULT ''"),
                                   *_ORG_ADMINS),
    "orgdomaincerts": _cert_columns("orgid", *_ORG_ADMINS),
    "gpg": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
            ("memid", "int(11)", "NOT NULL DEFAULT 0"),
            ("email", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("level", "int(1)", "NOT NULL DEFAULT 0"),
            ("multiple", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("expires", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("csr", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("crt", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("issued", *_DATE), ("expire", *_DATE),
            ("keyid", "char(18)", "DEFAULT NULL"),
            ("warning", "tinyint(1)", "NOT NULL DEFAULT 0"),
            ("description", "varchar(100)", "NOT NULL DEFAULT ''")],
    "email": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
              ("memid", "int(11)", "NOT NULL DEFAULT 0"),
              ("email", "varchar(255)", "NOT NULL DEFAULT ''"),
              ("created", *_DATE), ("modified", *_DATE), ("deleted", *_DATE),
              ("hash", "varchar(50)", "NOT NULL DEFAULT ''"),
              ("attempts", "int(1)", "NOT NULL DEFAULT 0")],
    "domains": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
                ("memid", "int(11)", "NOT NULL DEFAULT 0"),
                ("domain", "varchar(255)", "NOT NULL DEFAULT ''"),
                ("created", *_DATE), ("modified", *_DATE), ("deleted", *_DATE),
                ("hash", "varchar(50)", "NOT NULL DEFAULT ''"),
                ("attempts", "int(1)", "NOT NULL DEFAULT 0")],
    "users": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
              *[(name, "varchar(255)", "NOT NULL DEFAULT ''") for name in ("email", "password", "fname", "mname", "lname")],
              ("suffix", "varchar(50)", "NOT NULL DEFAULT ''"),
              ("dob", "date", "NOT NULL DEFAULT '0000-00-00'"),
              ("verified", "int(1)", "NOT NULL DEFAULT 0"),
              ("ccid", "int(3)", "NOT NULL DEFAULT 0"),
              ("regid", "int(5)", "NOT NULL DEFAULT 0"),
              ("locid", "int(7)", "NOT NULL DEFAULT 0"),
              ("listme", "int(1)", "NOT NULL DEFAULT 0"),
              ("codesign", "int(1)", "NOT NULL DEFAULT 0"),
              ("1024bit", "tinyint(1)", "NOT NULL DEFAULT 0"),
              ("contactinfo", "varchar(255)", "NOT NULL DEFAULT ''"),
              *[(name, "tinyint(1)", "NOT NULL DEFAULT 0")
                for name in ("admin", "orgadmin", "ttpadmin", "adadmin", "board", "tverify", "locadmin")],
              ("language", "varchar(5)", "NOT NULL DEFAULT ''"),
              *[(f"{q}{i}", "varchar(255)", "NOT NULL DEFAULT ''") for q in "QA" for i in range(1, 6)],
              ("created", *_DATE), ("modified", *_DATE), ("deleted", *_DATE),
              ("locked", "tinyint(1)", "NOT NULL DEFAULT 0"),
              ("uniqueID", "varchar(255)", "NOT NULL"),
              ("otphash", "varchar(16)", "NOT NULL DEFAULT ''"),
              ("otppin", "smallint(4)", "NOT NULL DEFAULT 0"),
              ("assurer", "int(2)", "NOT NULL DEFAULT 0"),
              ("assurer_blocked", "tinyint(1)", "NOT NULL DEFAULT 0")],
    "notary": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
               ("from", "int(11)", "NOT NULL DEFAULT 0"),
               ("to", "int(11)", "NOT NULL DEFAULT 0"),
               ("awarded", "int(3)", "NOT NULL DEFAULT 0"),
               ("points", "int(3)", "NOT NULL DEFAULT 0"),
               ("method", "enum('Face to Face Meeting','Trusted Third Parties','Thawte Points Transfer',"
                          "'Administrative Increase','CT Magazine - Germany','Temporary Increase','Unknown',"
                          "'TOPUP')", "NOT NULL DEFAULT 'Face to Face Meeting'"),
               ("location", "varchar(255)", "NOT NULL DEFAULT ''"),
               ("date", "varchar(255)", "NOT NULL DEFAULT ''"),
               ("when", *_DATE), ("expire", *_DATE),
               ("sponsor", "int(11)", "NOT NULL DEFAULT 0"),
               ("deleted", *_DATE)],  # version1
    "org": [("orgid", "int(11)", "NOT NULL DEFAULT 0"),
            ("memid", "int(11)", "NOT NULL DEFAULT 0"),
            ("OU", "varchar(255)", "NOT NULL DEFAULT ''"),
            ("masteracc", "int(1)", "NOT NULL DEFAULT 0"),
            ("comments", "text", "NOT NULL"),
            *_DELETED],
    "orginfo": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
                ("contact", "varchar(255)", "NOT NULL DEFAULT ''"),
                ("O", "varchar(255)", "NOT NULL DEFAULT ''"),
                ("L", "varchar(255)", "NOT NULL DEFAULT ''"),
                ("ST", "varchar(255)", "NOT NULL DEFAULT ''"),
                ("C", "char(2)", "NOT NULL DEFAULT ''"),
                ("comments", "text", "NOT NULL"),
                *_DELETED],
    "orgdomains": [("id", "int(11)", "NOT NULL AUTO_INCREMENT"),
                   ("orgid", "int(11)", "NOT NULL DEFAULT 0"),
                   ("domain", "varchar(255)", "NOT NULL DEFAULT ''")],
    "domlink": [("certid", "int(11)", "NOT NULL DEFAULT 0"), ("domid", "int(11)", "NOT NULL DEFAULT 0")],
    "emaillink": [("emailcertsid", "int(11)", "NOT NULL DEFAULT 0"), ("emailid", "int(11)", "NOT NULL DEFAULT 0")],
    "orgdomlink": [("orgcertid", "int(11)", "NOT NULL DEFAULT 0"), ("orgdomid", "int(11)", "NOT NULL DEFAULT 0")],
    "orgemaillink": [("emailcertsid", "int(11)", "NOT NULL DEFAULT 0"), ("domid", "int(11)", "NOT NULL DEFAULT 0")],
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


def _implicit_default(kind: str) -> str:
    """The value MySQL without strict mode gives a NOT NULL column without a default."""
    base = kind.split("(")[0].lower()
    if base in ("datetime", "date"):
        return ZERO if base == "datetime" else "'0000-00-00'"
    return "0" if "int" in base else "''"


def create_statements(dialect: str) -> list[str]:
    """CREATE TABLE (and for SQLite, trigger) statements for a development/test WebDB
    ("sqlite" or "mysql")."""
    statements = []
    for table, columns in TABLE_COLUMNS.items():
        if dialect == "sqlite":
            lines = []
            for name, kind, rule in columns:
                if name == "id" and "AUTO_INCREMENT" in rule:
                    lines.append("`id` INTEGER PRIMARY KEY AUTOINCREMENT")
                    continue
                if rule == "NOT NULL":  # see the module doc: MySQL's non-strict implicit default
                    rule = f"NOT NULL DEFAULT {_implicit_default(kind)}"
                # SQLite has no enum and no display widths; the affinity of the base type is kept.
                lines.append(f"`{name}` {'text' if kind.startswith('enum') else kind.split('(')[0]} {rule}")
            statements.append(f"CREATE TABLE IF NOT EXISTS `{table}` (\n  " + ",\n  ".join(lines) + "\n)")
            if any(name == "md" for name, _, _ in columns):
                allowed = ", ".join(f"'{m}'" for m in MD_ENUM)
                for event in ("INSERT", "UPDATE OF md"):
                    statements.append(
                        f"CREATE TRIGGER IF NOT EXISTS `{table}_md_{event.split()[0].lower()}` AFTER {event} "
                        f"ON `{table}` WHEN NEW.md NOT IN ({allowed}, '') BEGIN "
                        f"UPDATE `{table}` SET md='' WHERE id=NEW.id; END")
        else:
            lines = [f"`{name}` {kind} {rule}" for name, kind, rule in columns]
            if any(name == "id" for name, _, _ in columns):
                lines.append("PRIMARY KEY (`id`)")
            statements.append(f"CREATE TABLE IF NOT EXISTS `{table}` (\n  " + ",\n  ".join(lines)
                              + "\n) DEFAULT CHARSET=latin1")
    return statements
