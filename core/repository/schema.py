"""The repository's SQLite schema: the ordered migrations, and how values are stored.

PRAGMA user_version counts the migrations a database has had. The list is append-only:
a released migration is never edited and a schema change is a new entry, so every
database reaches the same schema whatever version it started from. core/repository/store.py
applies each pending migration in its own transaction when it opens the file.

Times are ISO 8601 UTC text ("2024-05-01T12:00:00Z"): fixed width, so comparing the
text compares the instants. Serials are lowercase hex without leading zeros, so (same
length, then text) is numeric order. to_db_time/from_db_time/normalise_serial below are
the one place those representations are made.

The typed errors live here too, at the bottom of the repository modules, so that
core/repository/store.py and core/repository/peer_apply.py both raise them without importing each
other; core/repository/store.py re-exports them.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from core.wire.protocol import SignerError, pack, unpack

DB_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# Statements run in one transaction, in order; a callable step gets the connection (a
# migration that must rewrite values SQL cannot decode, such as msgpack).
Migration = tuple[str | Callable[[sqlite3.Connection], None], ...]

_INITIAL_SCHEMA: Migration = (
    # `der` is the last column on purpose: queries reading the small columns then stop
    # before the blob's bytes and overflow pages.
    """
    CREATE TABLE certificates (
        issuer      TEXT NOT NULL,
        serial      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        profile     TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('reserved', 'issued')),
        subject     TEXT NOT NULL,
        not_before  TEXT NOT NULL,
        not_after   TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        origin_node TEXT NOT NULL,
        der         BLOB,
        PRIMARY KEY (issuer, serial)
    )
    """,
    "CREATE INDEX certificates_by_issuer_not_after ON certificates (issuer, not_after)",
    "CREATE INDEX certificates_by_request ON certificates (request_id)",
    # Covers the CRL query's probe (issuer, serial) -> not_after, so the probe never
    # reads a table row with its DER.
    "CREATE INDEX certificates_expiry_by_serial ON certificates (issuer, serial, not_after)",
    # Reservations are few (only while a signature is in flight); this partial index
    # lets health() count them without scanning a million issued rows.
    "CREATE INDEX certificates_reserved ON certificates (issuer, serial)"
    " WHERE status = 'reserved'",
    # WITHOUT ROWID clusters revocations on (issuer, serial): the CRL query's range scan
    # "all revocations of an issuer" is the table itself, no separate index needed.
    """
    CREATE TABLE revocations (
        issuer      TEXT NOT NULL,
        serial      TEXT NOT NULL,
        reason      INTEGER CHECK (reason IS NULL OR reason IN (0, 1, 2, 3, 4, 5, 6, 8, 9, 10)),
        revoked_at  TEXT NOT NULL,
        request_id  TEXT,
        origin_node TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (issuer, serial),
        FOREIGN KEY (issuer, serial) REFERENCES certificates (issuer, serial)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE crls (
        issuer            TEXT NOT NULL,
        number            INTEGER NOT NULL,
        this_update       TEXT NOT NULL,
        next_update       TEXT NOT NULL,
        revocation_digest TEXT NOT NULL,
        created_at        TEXT NOT NULL,
        der               BLOB NOT NULL,
        PRIMARY KEY (issuer, number)
    )
    """,
    """
    CREATE TABLE openpgp_signatures (
        request_id  TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        signed_key  BLOB NOT NULL,
        uids        TEXT NOT NULL,
        expires_at  TEXT,
        created_at  TEXT NOT NULL,
        origin_node TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE requests (
        request_id     TEXT PRIMARY KEY,
        command        TEXT NOT NULL,
        request_digest TEXT NOT NULL,
        result         BLOB NOT NULL,
        created_at     TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL UNIQUE,
        origin_node TEXT NOT NULL,
        type        TEXT NOT NULL,
        body        BLOB NOT NULL,
        created_at  TEXT NOT NULL
    )
    """,
    # The event log is what other nodes replay; a row changed after publication would
    # make them diverge silently, so the database itself refuses it.
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
)

# Two signers replicate through their event logs (core/repository/peer_apply.py). sync_state
# holds the sync component's bookkeeping (e.g. the last peer stream position applied);
# crl_number_floor the highest CRL number the peer announced per issuer, so a CRL built
# here never numbers below one a client may already hold from the peer.
_SYNC_TABLES: Migration = (
    "CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE crl_number_floor (issuer TEXT PRIMARY KEY, number INTEGER NOT NULL)"
    " WITHOUT ROWID",
)

# The audit log (core/repository/audit.py): one hash-chained entry per signature, revocation and CRL,
# this signer's own and the peer's it applied, written in the transaction of the change.
# seq counts 1, 2, 3, ... without gaps (the repository numbers it, not AUTOINCREMENT), so
# a deleted entry shows as a gap. The triggers refuse changes through SQL; verify-audit
# detects the ones made around them. A database upgraded to this version has no entries
# for the changes made before.
_AUDIT_LOG: Migration = (
    """
    CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        body      TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    )
    """,
    """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
    """,
    """
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
    """,
)

# Seals of the audit log (core/repository/audit.py): the head (seq, hash) signed by the token's audit
# key, one row per seal the Hsm actor made (a seal covers every entry up to its seq).
# Append-only like the log; verify-audit checks every row's signature.
_AUDIT_SEALS: Migration = (
    """
    CREATE TABLE audit_seals (
        seq       INTEGER PRIMARY KEY,
        hash      TEXT NOT NULL,
        sealed_at TEXT NOT NULL,
        signature BLOB NOT NULL
    )
    """,
    """
    CREATE TRIGGER audit_seals_no_update BEFORE UPDATE ON audit_seals
    BEGIN SELECT RAISE(ABORT, 'audit seals are append-only'); END
    """,
    """
    CREATE TRIGGER audit_seals_no_delete BEFORE DELETE ON audit_seals
    BEGIN SELECT RAISE(ABORT, 'audit seals are append-only'); END
    """,
)

# Replication that cannot be forged (core/sync/event_signing.py, core/sync/peer_validation.py):
# events.signature keeps the Ed25519 signature of an applied peer event, so it is published
# on unchanged (this signer's own events are signed when published: NULL here); a peer event
# that fails its checks is parked in sync_quarantine instead of being applied (digest: of the
# event as received, so the same delivery twice is parked once).
_SYNC_QUARANTINE: Migration = (
    "ALTER TABLE events ADD COLUMN signature BLOB",
    """
    CREATE TABLE sync_quarantine (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        digest         TEXT NOT NULL UNIQUE,
        event_id       TEXT,
        origin_node    TEXT,
        type           TEXT,
        reason         TEXT NOT NULL,
        event          BLOB NOT NULL,
        quarantined_at TEXT NOT NULL
    )
    """,
)

# History imported from the CA this signer took over (core/repository/openssl_ca_import.py,
# docs/MIGRATION.md): imported_from names where a row came from ('openssl-ca'); NULL for
# certificates this signer or its peer issued. An imported row is 'issued' (the old signer
# issued it) and may have no DER: openssl ca keeps an index line for every certificate but
# its newcerts/ file only while nobody deleted it.
_IMPORTED_HISTORY: Migration = (
    "ALTER TABLE certificates ADD COLUMN imported_from TEXT",
)

# A certificate's DER is stored once, in certificates.der (issue 13.4). Before, it was also
# in the sign_x509 result (requests.result) and twice in the x509_issued event (body der and
# body request.result.certificate). Now a row that leaves it out says so in certificate_ref,
# and keeps nil where the DER was (so every map keeps its key order, and the bytes read back
# are the bytes written):
#   requests.certificate_ref 1: result.certificate is the DER of the certificate the result
#     names (issuer, serial);
#   events.certificate_ref, bits: REF_BODY_DER body.der, REF_RESULT_CERTIFICATE
#     body.request.result.certificate, each the DER of the certificate the body names.
# Readers put the DER back (core/repository/store.py). The migration rewrites existing rows the
# same way, only where the bytes equal the stored DER, so every result and event reads back
# as it was (the events_no_update trigger is dropped for it and made again).
REF_BODY_DER = 1
REF_RESULT_CERTIFICATE = 2
_REFERRING_EVENTS = ("x509_issued", "x509_imported")  # bodies naming one certificate
_MIGRATION_PAGE = 1000  # rows read per query while rewriting


def result_for_storage(command: str, result: Mapping[str, Any],
                       der: bytes | None) -> tuple[dict[str, Any], int]:
    """(the result as requests.result keeps it, certificate_ref): a sign_x509 result whose
    certificate is `der` (the stored certificate's DER), or already nil, keeps nil there."""
    result = dict(result)
    if (command == "sign_x509" and der is not None and "certificate" in result
            and result["certificate"] in (None, der)):
        result["certificate"] = None  # the same key, so the same place in the map
        return result, 1
    return result, 0


def body_for_storage(event_type: str, body: Mapping[str, Any],
                     der: bytes | None) -> tuple[dict[str, Any], int]:
    """(the body as events.body keeps it, certificate_ref): nil where the body holds `der`
    (the DER stored in certificates for the certificate the body names)."""
    body, ref = dict(body), 0
    if event_type not in _REFERRING_EVENTS or der is None:
        return body, ref
    if body.get("der") == der:
        body["der"], ref = None, REF_BODY_DER
    request = body.get("request")
    result = request.get("result") if isinstance(request, dict) else None
    if isinstance(request, dict) and isinstance(result, dict) and result.get("certificate") == der:
        body["request"] = dict(request, result=dict(result, certificate=None))
        ref |= REF_RESULT_CERTIFICATE
    return body, ref


def body_with_certificate(body: dict[str, Any], ref: int, der: bytes | None) -> dict[str, Any]:
    """body_for_storage undone: `der` put back where certificate_ref says (in place)."""
    if ref & REF_BODY_DER:
        body["der"] = der
    if ref & REF_RESULT_CERTIFICATE:
        body["request"]["result"]["certificate"] = der
    return body


def certificate_key_of(fields: Any) -> tuple[str, str] | None:
    """(issuer, normalised serial) a result or event body names; None if it names none."""
    if not isinstance(fields, Mapping):
        return None
    issuer, serial = fields.get("issuer"), fields.get("serial")
    if not isinstance(issuer, str) or not isinstance(serial, (str, int)):
        return None
    try:
        return issuer, normalise_serial(serial if isinstance(serial, str) else format(serial, "x"))
    except ValueError:
        return None


def _stored_der(db: sqlite3.Connection, key: tuple[str, str] | None) -> bytes | None:
    if key is None:
        return None
    row = db.execute("SELECT der FROM certificates WHERE issuer = ? AND serial = ?", key).fetchone()
    return None if row is None else row[0]


def _pages(db: sqlite3.Connection, query: str) -> Any:
    """Rows of `query` (which selects rowid first and takes the last rowid seen and a limit),
    a page at a time: the rewrite below updates the table it reads."""
    last = -1 << 63
    while True:
        rows = db.execute(query, (last, _MIGRATION_PAGE)).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def _store_certificates_once(db: sqlite3.Connection) -> None:
    for rowid, command, packed in _pages(db, "SELECT rowid, command, result FROM requests"
                                             " WHERE rowid > ? AND command = 'sign_x509'"
                                             " ORDER BY rowid LIMIT ?"):
        result = unpack(packed)
        if not isinstance(result, dict) or not isinstance(result.get("certificate"), bytes):
            continue
        stored, ref = result_for_storage(command, result, _stored_der(db, certificate_key_of(result)))
        if ref:
            db.execute("UPDATE requests SET result = ?, certificate_ref = ? WHERE rowid = ?",
                       (pack(stored), ref, rowid))
    for seq, event_type, packed in _pages(db, "SELECT seq, type, body FROM events WHERE seq > ?"
                                              " AND type IN ('x509_issued', 'x509_imported')"
                                              " ORDER BY seq LIMIT ?"):
        body = unpack(packed)
        if not isinstance(body, dict):
            continue
        stored, ref = body_for_storage(event_type, body, _stored_der(db, certificate_key_of(body)))
        if ref:
            db.execute("UPDATE events SET body = ?, certificate_ref = ? WHERE seq = ?",
                       (pack(stored), ref, seq))


_CERTIFICATES_ONCE: Migration = (
    "ALTER TABLE requests ADD COLUMN certificate_ref INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE events ADD COLUMN certificate_ref INTEGER NOT NULL DEFAULT 0",
    "DROP TRIGGER events_no_update",
    _store_certificates_once,
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
)

MIGRATIONS: list[Migration] = [_INITIAL_SCHEMA, _SYNC_TABLES, _AUDIT_LOG, _AUDIT_SEALS,
                               _SYNC_QUARANTINE, _IMPORTED_HISTORY, _CERTIFICATES_ONCE]
SCHEMA_VERSION = len(MIGRATIONS)
AUDIT_SCHEMA_VERSION = 3  # the first version with audit_log
AUDIT_SEALS_SCHEMA_VERSION = MIGRATIONS.index(_AUDIT_SEALS) + 1  # the first with audit_seals


def to_db_time(moment: datetime) -> str:
    # A naive datetime could be local time; guessing would shift validity periods.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: the repository needs timezone-aware times")
    return moment.astimezone(timezone.utc).strftime(DB_TIME_FORMAT)


def from_db_time(text: str) -> datetime:
    return datetime.fromisoformat(text)  # 3.11 reads the trailing 'Z' as UTC: aware result


def normalise_serial(serial_hex: str) -> str:
    """Lowercase hex without leading zeros, so one serial has exactly one spelling."""
    value = int(serial_hex, 16)
    if value < 0:
        raise ValueError(f"negative serial {serial_hex!r}")
    return format(value, "x")


# Imported history (x509_imported events). An index line without its certificate file does
# not say when the certificate began: its not_before is UNKNOWN_NOT_BEFORE. A serial only the
# old CA's last CRL names has no expiry either: UNKNOWN_NOT_AFTER keeps it on every CRL
# (a CRL that forgot it would make a revoked certificate look valid again).
IMPORT_SOURCES = frozenset({"openssl-ca"})
UNKNOWN_NOT_BEFORE = "1970-01-01T00:00:00Z"
UNKNOWN_NOT_AFTER = "9999-12-31T23:59:59Z"

# RFC 5280 section 5.3.1 CRLReason codes (7 is unassigned); the CHECK above agrees.
CRL_REASON_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})


class RepositoryError(SignerError):
    """A repository failure, answered to the client as an error with `code`."""

    error_code = "repository_error"

    def __init__(self, message: str) -> None:
        super().__init__(self.error_code, message)


class UnknownCertificate(RepositoryError):
    error_code = "unknown_serial"


class DuplicateSerial(RepositoryError):
    error_code = "duplicate_serial"


class RequestConflict(RepositoryError):
    error_code = "request_id_conflict"
