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

from datetime import datetime, timezone

from core.wire.protocol import SignerError

DB_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

Migration = tuple[str, ...]  # statements run in one transaction

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

MIGRATIONS: list[Migration] = [_INITIAL_SCHEMA, _SYNC_TABLES, _AUDIT_LOG, _AUDIT_SEALS,
                               _SYNC_QUARANTINE, _IMPORTED_HISTORY]
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
