"""The signer's repository: certificates, revocations, CRLs, OpenPGP signatures, request
results (idempotency), an append-only event log and a hash-chained audit log, in one
SQLite file.

Plain code, no actors: the Repository actor owns one instance. Every public operation is
one transaction (or, between begin_group() and commit_group(), one savepoint of the group's
transaction: the actor commits the operations of one incoming message together), and every
change appends its event and its audit entry (core/repository/audit.py) inside it, so
neither the log a sync component publishes nor the audit log can miss a change or report
one that was rolled back. Schema and migrations
live in core/repository/schema.py; replication between two signers (applying the peer's
events, content digest, sync bookkeeping) in core/repository/peer_apply.py, whose mixin
Repository inherits.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from core.repository import audit
from core.repository import schema
from core.wire.protocol import pack, unpack
from core.repository.schema import (DuplicateSerial, RepositoryError, RequestConflict,
                                    UnknownCertificate, from_db_time, normalise_serial,
                                    to_db_time)
from core.repository.peer_apply import (IMPORT_CERTIFICATE_SQL, RepositorySync,
                                        complete_imported_record, imported_certificate_row,
                                        imported_same_certificate)

__all__ = ["DuplicateSerial", "Repository", "RepositoryError", "RequestConflict",
           "UnknownCertificate", "verify_audit_file", "verify_sealed_audit_file"]

BUSY_TIMEOUT_MS = 10_000
DEFAULT_CRL_KEEP = 10
MAX_PROBLEMS_PER_CHECK = 20  # consistency_check: enough examples to act on, not a flood

CertificateKey = tuple[str, str]  # (issuer, normalised serial)
CrlEntry = tuple[int, datetime, int | None]  # (serial, revoked_at, reason)


_TIME_COLUMNS = ("not_before", "not_after", "created_at", "revoked_at", "recorded_at",
                 "this_update", "next_update", "expires_at")
_COLUMN_DECODERS: dict[str, Callable[[Any], Any]] = {name: from_db_time for name in _TIME_COLUMNS} | {
    "uids": json.loads, "result": unpack, "body": unpack}


def _row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    """Columns as the API returns them: times as aware datetimes, msgpack/JSON decoded."""
    decoded = {}
    for column in row.keys():
        value, decode = row[column], _COLUMN_DECODERS.get(column)
        decoded[column] = value if value is None or decode is None else decode(value)
    return decoded


@contextmanager
def _sqlite_errors_as_repository_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise RepositoryError(f"sqlite: {exc}") from exc


_CERTIFICATE_COLUMNS = ("issuer", "serial", "request_id", "profile", "status", "subject",
                        "not_before", "not_after", "created_at", "origin_node", "der")
_REVOCATION_COLUMNS = ("issuer", "serial", "reason", "revoked_at", "request_id",
                       "origin_node", "recorded_at")
_CRL_SELECT = ("SELECT issuer, number, der, this_update, next_update, revocation_digest,"
               " created_at FROM crls")
# Revocations are far fewer than certificates, so walk them and probe the covering index
# certificates_expiry_by_serial. CROSS JOIN fixes that order: left alone, the planner walks
# every unexpired certificate row instead (measured: 5 s against 0.2 s at 1M/100k rows).
# Hex serials without leading zeros sort numerically by (length, text).
_REVOKED_FOR_CRL_SQL = """
    SELECT r.serial, r.revoked_at, r.reason
    FROM revocations AS r CROSS JOIN certificates AS c USING (issuer, serial)
    WHERE r.issuer = ? AND c.not_after > ?
    ORDER BY length(r.serial), r.serial
"""
_LAST_SEQ_SQL = "SELECT COALESCE(MAX(seq), 0) FROM events"  # 0: no event yet
_EVENT_KEYS = ("seq", "event_id", "origin_node", "type", "body", "created_at", "signature")
_EVENT_COLUMNS = ", ".join(_EVENT_KEYS)  # certificate_ref is storage only: never published
_AUDIT_COLUMNS = "seq, at, kind, body, prev_hash, hash"  # core.repository.audit.AuditRow's order
DEFAULT_AUDIT_PAGE = 1000
_COUNTED_TABLES = ("certificates", "revocations", "crls", "openpgp_signatures", "requests",
                   "events")
# consistency_check: (what is wrong, query yielding (issuer, serial) of each bad row).
_ROW_CHECKS = (
    # An imported record may lack its DER: the old CA kept only its index line.
    ("issued certificate without DER",
     "SELECT issuer, serial FROM certificates WHERE status = 'issued' AND der IS NULL"
     " AND imported_from IS NULL"),
    ("reserved certificate holding a DER",
     "SELECT issuer, serial FROM certificates WHERE status = 'reserved' AND der IS NOT NULL"),
    ("revocation of a certificate that is missing or not issued",
     "SELECT r.issuer, r.serial FROM revocations AS r LEFT JOIN certificates AS c"
     " USING (issuer, serial) WHERE c.status IS NOT 'issued'"),
)


class Repository(RepositorySync):
    def __init__(self, path: str, node_id: str) -> None:
        self.path = path
        self.node_id = node_id
        self._now_second, self._now_text = -1, ""
        # The audit log's last (seq, hash) while a bulk write keeps it (_audit_tail_kept):
        # saves reading it back for every entry. None: read it from the table.
        self._audit_tail: tuple[int, str] | None = None
        self._keep_audit_tail = False
        # A group (begin_group .. commit_group): one transaction that the operations join,
        # each in a savepoint of its own; _group_lost: a sqlite error ended it early.
        self._grouped = False
        self._group_lost = False
        self._savepoints = itertools.count(1)
        with _sqlite_errors_as_repository_errors():
            # isolation_level=None: transactions are ours (BEGIN/COMMIT below), never
            # opened implicitly by the sqlite3 module.
            self._db = sqlite3.connect(path, isolation_level=None)
            try:
                self._db.row_factory = sqlite3.Row
                for pragma in ("foreign_keys = ON", "synchronous = FULL",
                               f"busy_timeout = {BUSY_TIMEOUT_MS}"):
                    self._db.execute(f"PRAGMA {pragma}")
                self._migrate()  # first: refuses a newer database before changing anything
                self._db.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
            except BaseException:
                self._db.close()
                raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        if self._grouped:
            with self._savepoint():
                yield self._db
            return
        with _sqlite_errors_as_repository_errors():
            self._db.execute(f"BEGIN {mode}")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # some sqlite errors already rolled back
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """One operation inside a group: undone alone if it fails."""
        with _sqlite_errors_as_repository_errors():
            if self._group_lost or not self._db.in_transaction:
                self._group_lost = True
                raise RepositoryError("the transaction of this group was rolled back")
            name = f"operation_{next(self._savepoints)}"
            self._db.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute(f"ROLLBACK TO {name}")
                    self._db.execute(f"RELEASE {name}")
                else:  # some sqlite errors roll the whole transaction back
                    self._group_lost = True
                raise
            self._db.execute(f"RELEASE {name}")

    def begin_group(self) -> None:
        """Start one write transaction that every operation until commit_group() joins, each
        in a savepoint of its own (one that fails is undone alone): one commit, so one
        fsync, for many operations. Nothing of the group is durable, or visible to other
        connections, before commit_group(): its results must not leave before that."""
        if self._grouped:
            raise RepositoryError("a group is already open")
        with _sqlite_errors_as_repository_errors():
            self._db.execute("BEGIN IMMEDIATE")
        self._grouped, self._group_lost = True, False

    @property
    def grouped(self) -> bool:
        return self._grouped

    @property
    def group_lost(self) -> bool:
        """A sqlite error rolled the group's transaction back: every operation of the group
        so far was undone, and the next ones fail until commit_group() ends the group."""
        return self._grouped and self._group_lost

    def commit_group(self) -> None:
        """Commit the group (nothing to commit when it was lost: RepositoryError then, as
        for a failed commit, which is rolled back)."""
        if not self._grouped:
            return
        lost, self._grouped, self._group_lost = self._group_lost, False, False
        with _sqlite_errors_as_repository_errors():
            if lost or not self._db.in_transaction:
                raise RepositoryError("the transaction of this group was rolled back")
            try:
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-then-write cannot fail
        # half-way with SQLITE_BUSY and nothing read can change before the write.
        return self._transaction("IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("DEFERRED")  # several SELECTs see one snapshot

    def schema_version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _migrate(self) -> None:
        known = len(schema.MIGRATIONS)
        while True:
            with self._write():
                # Read under the write lock: another process may have migrated meanwhile.
                version = self.schema_version()
                if version > known:
                    raise RepositoryError(f"{self.path}: schema version {version} is newer"
                                          f" than this code knows ({known}); refusing it")
                if version == known:
                    return
                for step in schema.MIGRATIONS[version]:
                    if callable(step):
                        step(self._db)
                    else:
                        self._db.execute(step)
                self._db.execute(f"PRAGMA user_version = {version + 1}")

    def _now(self) -> str:
        """The current second as database time text; the text is made once per second (a
        bulk import asks for it several times per record)."""
        second = int(time.time())
        if second != self._now_second:
            self._now_second = second
            self._now_text = time.strftime(schema.DB_TIME_FORMAT, time.gmtime(second))
        return self._now_text

    def _append_event(self, event_type: str, body: dict[str, Any],
                      certificate_der: bytes | None = None) -> str:
        """Append this signer's event; `certificate_der`: the DER stored in certificates
        for the certificate the body names, which the row then leaves out (schema.py)."""
        event_id = uuid.uuid4().hex
        stored, ref = schema.body_for_storage(event_type, body, certificate_der)
        self._db.execute(
            "INSERT INTO events (event_id, origin_node, type, body, created_at, certificate_ref)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, self.node_id, event_type, pack(stored), self._now(), ref))
        return event_id

    def _append_audit(self, kind: str, body: dict[str, Any]) -> None:
        """Chain one entry to the audit log, inside the caller's write transaction (whose
        lock makes "read the last entry, append the next" safe)."""
        if kind not in audit.KINDS:
            raise ValueError(f"{kind!r} is not an audited kind")
        text = audit.canonical_body(body)
        last = self._audit_tail if self._keep_audit_tail else None
        if last is None:
            last = self._db.execute("SELECT seq, hash FROM audit_log"
                                    " ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev_hash = (1, audit.GENESIS_HASH) if last is None else (last[0] + 1, last[1])
        at = self._now()
        entry_hash = audit.entry_hash(prev_hash, seq, at, kind, text)
        self._db.execute(f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         (seq, at, kind, text, prev_hash, entry_hash))
        if self._keep_audit_tail:
            self._audit_tail = (seq, entry_hash)

    @contextmanager
    def _audit_tail_kept(self) -> Iterator[None]:
        """Inside ONE write transaction: _append_audit remembers the tail it wrote instead
        of reading it back. Whoever rolls back part of the transaction (a savepoint) must
        set _audit_tail to None; a whole rollback ends the block, which forgets it."""
        self._audit_tail, self._keep_audit_tail = None, True
        try:
            yield
        finally:
            self._audit_tail, self._keep_audit_tail = None, False

    def _log_change(self, event_type: str, body: dict[str, Any],
                    certificate_der: bytes | None = None, **audited: Any) -> None:
        """The event of a local change and its audit entry (plus `audited` fields the
        event does not carry); certificate_der as for _append_event."""
        event_id = self._append_event(event_type, body, certificate_der)
        self._append_audit(event_type, audit.event_summary(event_type, body, self.node_id,
                                                           event_id) | audited)

    def _insert(self, table: str, values: Mapping[str, Any]) -> None:
        self._db.execute(_insert_sql(table, values), values)

    def _stored_request(self, request_id: str, request_digest: str) -> dict[str, Any] | None:
        """The stored result of `request_id`; RequestConflict if it was another request."""
        row = self._db.execute("SELECT request_digest, result, certificate_ref FROM requests"
                               " WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        if row["request_digest"] != request_digest:
            raise RequestConflict(f"request id {request_id!r} was used for a different request")
        return self._result_with_certificate(unpack(row["result"]), row["certificate_ref"])

    def _result_with_certificate(self, result: dict[str, Any], ref: int) -> dict[str, Any]:
        """A stored result as it was recorded: the certificate's DER put back where the row
        left it out (schema.result_for_storage)."""
        if ref:
            result["certificate"] = self._stored_der(schema.certificate_key_of(result))
        return result

    def _stored_der(self, key: CertificateKey | None) -> bytes | None:
        if key is None:
            return None
        row = self._db.execute("SELECT der FROM certificates WHERE issuer = ? AND serial = ?",
                               key).fetchone()
        return None if row is None else row[0]

    def _record_new_request(self, request_id: str, command: str, request_digest: str,
                            result: dict[str, Any], certificate_der: bytes | None = None) -> None:
        """certificate_der: the DER just stored for the certificate `result` names; the
        requests row then refers to it instead of holding a copy."""
        # A change that records a result must be the request's first answer: had it been
        # answered, the caller should have replayed that answer instead of acting again.
        if self._stored_request(request_id, request_digest) is not None:
            raise RepositoryError(f"request {request_id!r} already has a recorded result")
        stored, ref = schema.result_for_storage(command, result, certificate_der)
        self._insert("requests", {"request_id": request_id, "command": command,
                                  "request_digest": request_digest, "result": pack(stored),
                                  "created_at": self._now(), "certificate_ref": ref})

    def _certificate_row(self, key: CertificateKey) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM certificates WHERE issuer = ? AND serial = ?", key).fetchone()
        return row

    def _require_reservation(self, key: CertificateKey) -> sqlite3.Row:
        row = self._certificate_row(key)
        if row is None:
            raise UnknownCertificate(f"no certificate {key[0]}/{key[1]}")
        if row["status"] != "reserved":
            raise RepositoryError(f"certificate {key[0]}/{key[1]} is already issued")
        return row

    def _request_record_of(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT command, request_digest, result, certificate_ref"
                               " FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        return {"command": row["command"], "request_digest": row["request_digest"],
                "result": self._result_with_certificate(unpack(row["result"]),
                                                        row["certificate_ref"])}

    def lookup_request(self, request_id: str) -> dict[str, Any] | None:
        with self._read():
            return self._request_record_of(request_id)

    def record_request(self, request_id: str, command: str, request_digest: str,
                       result: dict[str, Any]) -> dict[str, Any]:
        """Store a request's result; a repeat with the same digest returns the first one."""
        with self._write():
            stored = self._stored_request(request_id, request_digest)
            if stored is not None:
                return stored
            self._record_new_request(request_id, command, request_digest, result)
            return result

    def reserve_serial(self, issuer: str, serial_hex: str, request_id: str, profile: str,
                       subject: str, not_before: datetime, not_after: datetime) -> None:
        """Claim (issuer, serial) before signing, so a serial is never signed twice."""
        with self._write():
            self._reserve(issuer, serial_hex, request_id, profile, subject, not_before, not_after)

    def lookup_or_reserve(self, issuer: str, serial_hex: str, request_id: str, profile: str,
                          subject: str, not_before: datetime, not_after: datetime
                          ) -> dict[str, Any] | None:
        """`lookup_request` and, when the request id is unknown, `reserve_serial`, in one
        write transaction (one round trip on the signing path instead of two). Returns the
        stored request (nothing reserved) or None (reserved)."""
        with self._write():
            stored = self._request_record_of(request_id)
            if stored is not None:
                return stored
            self._reserve(issuer, serial_hex, request_id, profile, subject, not_before, not_after)
            return None

    def _reserve(self, issuer: str, serial_hex: str, request_id: str, profile: str,
                 subject: str, not_before: datetime, not_after: datetime) -> None:
        key = (issuer, normalise_serial(serial_hex))
        if self._certificate_row(key) is not None:
            raise DuplicateSerial(f"serial {key[1]} of {issuer} is already used")
        self._insert("certificates", {
            "issuer": issuer, "serial": key[1], "request_id": request_id,
            "profile": profile, "status": "reserved", "subject": subject,
            "not_before": to_db_time(not_before), "not_after": to_db_time(not_after),
            "created_at": self._now(), "origin_node": self.node_id, "der": None})

    def complete_certificate(self, issuer: str, serial_hex: str, der: bytes, request_id: str,
                             command: str, request_digest: str, result: dict[str, Any]) -> None:
        key = (issuer, normalise_serial(serial_hex))
        with self._write() as db:
            reservation = self._require_reservation(key)
            if reservation["request_id"] != request_id:
                raise RepositoryError(f"certificate {issuer}/{key[1]} was reserved by request"
                                      f" {reservation['request_id']!r}, not {request_id!r}")
            db.execute("UPDATE certificates SET status = 'issued', der = ?"
                       " WHERE issuer = ? AND serial = ?", (der, *key))
            # The DER is stored once, in certificates: the request record and the event
            # refer to it (schema.py, migration 7).
            self._record_new_request(request_id, command, request_digest, result, der)
            # Everything the peer needs to hold the same certificate and to answer a
            # retried request with it (core/repository/peer_apply.py applies this body).
            # The body keeps the previous release's form (the DER in `der` and in the request
            # record's result): a peer still on that release applies it, so two signers can be
            # upgraded one at a time. The row stores neither copy (certificate_ref), and a
            # peer applies both forms (docs/sync.md, What travels).
            self._log_change("x509_issued", {
                "issuer": issuer, "serial": key[1], "der": der, "request_id": request_id,
                "profile": reservation["profile"], "subject": reservation["subject"],
                "not_before": reservation["not_before"],
                "not_after": reservation["not_after"], "origin_node": self.node_id,
                "request": _request_record(command, request_digest, result)}, der)

    def discard_reservation(self, issuer: str, serial_hex: str) -> None:
        """Drop a reservation whose signature failed; issued rows are never deleted."""
        key = (issuer, normalise_serial(serial_hex))
        with self._write() as db:
            self._require_reservation(key)
            db.execute("DELETE FROM certificates WHERE issuer = ? AND serial = ?", key)

    def get_certificate(self, issuer: str, serial_hex: str) -> dict[str, Any] | None:
        """The certificate row plus `revoked_at`/`revocation_reason` (None if not revoked)."""
        key = (issuer, normalise_serial(serial_hex))
        with self._read() as db:
            row = db.execute(
                "SELECT c.*, r.revoked_at, r.reason AS revocation_reason"
                " FROM certificates AS c LEFT JOIN revocations AS r USING (issuer, serial)"
                " WHERE c.issuer = ? AND c.serial = ?", key).fetchone()
        return None if row is None else _row_to_dict(row)

    def revoke(self, issuer: str, serial_hex: str, reason: int | None, revoked_at: datetime,
               request_id: str | None) -> dict[str, Any]:
        """Revoke once: a repeat returns the first revocation with already_revoked=True."""
        if reason is not None and reason not in schema.CRL_REASON_CODES:
            raise ValueError(f"{reason!r} is not an RFC 5280 CRLReason code")
        key = (issuer, normalise_serial(serial_hex))
        with self._write() as db:
            certificate = self._certificate_row(key)
            if certificate is None or certificate["status"] != "issued":
                raise UnknownCertificate(f"no issued certificate {issuer}/{key[1]}")
            first = db.execute("SELECT reason, revoked_at FROM revocations"
                               " WHERE issuer = ? AND serial = ?", key).fetchone()
            if first is not None:  # first wins: a later reason or date changes nothing
                return _revocation_answer(key, first["reason"], first["revoked_at"], True)
            revoked_text = to_db_time(revoked_at)
            revocation = {"issuer": issuer, "serial": key[1], "reason": reason,
                          "revoked_at": revoked_text, "request_id": request_id,
                          "origin_node": self.node_id}
            self._insert("revocations", revocation | {"recorded_at": self._now()})
            self._log_change("x509_revoked", revocation)
            return _revocation_answer(key, reason, revoked_text, False)

    def import_history(self, bodies: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Store a batch of the old CA's history in ONE transaction (the importer calls this
        per few thousand records: a commit per record would take hours for 1M lines).
        Each body is an x509_imported event body that core.sync.peer_validation.check_imported
        accepted. A certificate not here yet is stored with its revocation, one x509_imported
        event and one audit entry; a known one is left as it is (a re-run imports nothing
        twice), only a revocation it lacks is added as an x509_revoked event, and an
        index-only record gets the DER a later run found. Counts: certificates, revocations
        (of new certificates), already_present, certificates_completed (of those, index-only
        records given their DER), revocations_added (to known ones), serial_collisions (a
        known serial holding another certificate: left alone)."""
        counts = dict.fromkeys(("certificates", "revocations", "already_present",
                                "certificates_completed", "revocations_added",
                                "serial_collisions"), 0)
        with self._write() as db, self._audit_tail_kept():
            now = self._now()
            for body in bodies:
                row = imported_certificate_row(body, self.node_id, now)
                key = (row["issuer"], row["serial"])
                # Insert first, look only on a conflict: a first import meets no conflicts.
                if db.execute(IMPORT_CERTIFICATE_SQL, row).rowcount == 1:
                    revoked = self._store_imported_revocation(key, body)
                    self._log_change("x509_imported", {**body, "serial": key[1],
                                                       "origin_node": self.node_id}, row["der"])
                    counts["certificates"] += 1
                    counts["revocations"] += revoked
                    continue
                existing = self._certificate_row(key)
                assert existing is not None  # the insert met this (issuer, serial)
                same = imported_same_certificate(existing, row)
                if same is None:
                    counts["serial_collisions"] += 1
                    continue
                counts["already_present"] += 1
                if same and complete_imported_record(db, existing, row):
                    # An index-only record of an earlier run, whose newcerts file is here now:
                    # the DER is added, with one more x509_imported event for the peer.
                    self._log_change("x509_imported", {**body, "serial": key[1],
                                                       "origin_node": self.node_id}, row["der"])
                    counts["certificates_completed"] += 1
                known = self._db.execute("SELECT 1 FROM revocations WHERE issuer = ? AND"
                                         " serial = ?", key).fetchone()
                if known is None and self._store_imported_revocation(key, body):
                    self._log_change("x509_revoked", {
                        "issuer": key[0], "serial": key[1], "reason": body.get("reason"),
                        "revoked_at": body["revoked_at"], "request_id": None,
                        "origin_node": self.node_id})
                    counts["revocations_added"] += 1
        return counts

    def _store_imported_revocation(self, key: CertificateKey, body: Mapping[str, Any]) -> bool:
        if body.get("revoked_at") is None:
            return False
        self._insert("revocations", {
            "issuer": key[0], "serial": key[1], "reason": body.get("reason"),
            "revoked_at": to_db_time(from_db_time(body["revoked_at"])), "request_id": None,
            "origin_node": self.node_id, "recorded_at": self._now()})
        return True

    def import_crl_number_floor(self, issuer: str, number: int) -> bool:
        """The old CA's last CRL number: every CRL built here numbers above it (RFC 5280
        5.2.3: relying parties hold that CRL). Kept with the peer's floor (crl_number_floor)
        and sent to the peer as a crl_issued event. False: the floor was that high already."""
        if isinstance(number, bool) or not 1 <= number < 2**63:
            raise ValueError(f"CRL number {number!r} is not between 1 and 2**63 - 1")
        with self._write():
            previous = self._previous_crl_number(issuer)
            if previous is not None and previous >= number:
                return False
            self._db.execute("INSERT INTO crl_number_floor (issuer, number) VALUES (?, ?)"
                             " ON CONFLICT (issuer) DO UPDATE SET number = excluded.number",
                             (issuer, number))
            self._log_change("crl_issued", {"issuer": issuer, "number": number,
                                            "imported_from": "openssl-ca"})
            return True

    def _revoked_rows(self, issuer: str, now: datetime, grace: timedelta
                      ) -> list[tuple[str, str, int | None]]:
        """(serial hex, revoked_at text, reason) of revocations a CRL must still list:
        certificates that expired less than `grace` ago stay listed."""
        with self._read() as db:
            cursor = db.cursor()
            cursor.row_factory = None  # plain tuples: this runs over 100k+ rows
            cutoff = to_db_time(now - grace)
            return cursor.execute(_REVOKED_FOR_CRL_SQL, (issuer, cutoff)).fetchall()

    def revoked_for_crl(self, issuer: str, now: datetime, grace: timedelta) -> list[CrlEntry]:
        return [(int(serial, 16), from_db_time(revoked_at), reason)
                for serial, revoked_at, reason in self._revoked_rows(issuer, now, grace)]

    def revocation_digest(self, issuer: str, now: datetime, grace: timedelta) -> str:
        """sha256 of revoked_for_crl's set: equal digests mean the CRL need not change."""
        return _digest_rows(self._revoked_rows(issuer, now, grace))

    def revoked_with_digest(self, issuer: str, now: datetime, grace: timedelta
                            ) -> tuple[list[CrlEntry], str]:
        """revoked_for_crl and revocation_digest from one query."""
        rows = self._revoked_rows(issuer, now, grace)
        entries = [(int(serial, 16), from_db_time(revoked_at), reason)
                   for serial, revoked_at, reason in rows]
        return entries, _digest_rows(rows)

    def store_crl(self, issuer: str, number: int, der: bytes, this_update: datetime,
                  next_update: datetime, revocation_digest: str,
                  keep: int = DEFAULT_CRL_KEEP) -> None:
        """Store a CRL, then keep only the `keep` newest of the issuer."""
        if keep < 1:
            raise ValueError("keep must be at least 1: the latest CRL is always kept")
        with self._write() as db:
            # RFC 5280: CRL numbers increase, also across signers (the peer's floor).
            previous = self._previous_crl_number(issuer)
            if previous is not None and number <= previous:
                raise RepositoryError(f"CRL number {number} of {issuer} is not above {previous}")
            crl = {"issuer": issuer, "number": number, "this_update": to_db_time(this_update),
                   "next_update": to_db_time(next_update),
                   "revocation_digest": revocation_digest}
            self._insert("crls", crl | {"created_at": self._now(), "der": der})
            db.execute("DELETE FROM crls WHERE issuer = ? AND number NOT IN (SELECT number"
                       " FROM crls WHERE issuer = ? ORDER BY number DESC LIMIT ?)",
                       (issuer, issuer, keep))
            self._log_change("crl_issued", crl, der_sha256=audit.sha256_hex(der))

    def recent_crls(self, issuer: str, limit: int) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.execute(f"{_CRL_SELECT} WHERE issuer = ? ORDER BY number DESC LIMIT ?",
                              (issuer, limit)).fetchall()
        return [_row_to_dict(row) for row in rows]

    def latest_crl(self, issuer: str) -> dict[str, Any] | None:
        newest = self.recent_crls(issuer, 1)
        return newest[0] if newest else None

    def get_crl(self, issuer: str, number: int) -> dict[str, Any] | None:
        if not -2**63 <= number < 2**63:
            # SQLite integers are signed 64-bit (binding a larger one raises OverflowError),
            # so no stored CRL has such a number: a client holding one gets the full CRL.
            return None
        with self._read() as db:
            row = db.execute(f"{_CRL_SELECT} WHERE issuer = ? AND number = ?",
                             (issuer, number)).fetchone()
        return None if row is None else _row_to_dict(row)

    def store_openpgp_signature(self, request_id: str, fingerprint: str, signed_key: bytes,
                                uids: list[str], expires_at: datetime | None, command: str,
                                request_digest: str, result: dict[str, Any]) -> None:
        with self._write():
            self._record_new_request(request_id, command, request_digest, result)
            signature = {"request_id": request_id, "fingerprint": fingerprint,
                         "signed_key": signed_key, "uids": list(uids),
                         "expires_at": None if expires_at is None else to_db_time(expires_at),
                         "origin_node": self.node_id}
            self._insert("openpgp_signatures", signature | {
                "uids": json.dumps(list(uids)), "created_at": self._now()})
            self._log_change("openpgp_signed", signature | {
                "request": _request_record(command, request_digest, result)})

    def get_openpgp_signature(self, request_id: str) -> dict[str, Any] | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM openpgp_signatures WHERE request_id = ?",
                             (request_id,)).fetchone()
        return None if row is None else _row_to_dict(row)

    def events_after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Events in seq order as they are published: bodies decoded, with the certificate's
        DER put back where the row refers to it (schema.py), so each reads as it was made."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_EVENT_COLUMNS}, certificate_ref FROM events"
                              " WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
            events = []
            for row in rows:
                event = {column: row[column] for column in _EVENT_KEYS}
                event["created_at"] = from_db_time(event["created_at"])
                body = unpack(event["body"])
                if row["certificate_ref"]:
                    der = self._stored_der(schema.certificate_key_of(body))
                    body = schema.body_with_certificate(body, row["certificate_ref"], der)
                event["body"] = body
                events.append(event)
        return events

    def last_event_seq(self) -> int:
        with self._read() as db:
            seq: int = db.execute(_LAST_SEQ_SQL).fetchone()[0]
        return seq

    def audit_entries(self, after_seq: int = 0,
                      limit: int = DEFAULT_AUDIT_PAGE) -> list[dict[str, Any]]:
        """A page of the audit log in seq order, body decoded from its JSON."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq > ?"
                              " ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [dict(row) | {"body": json.loads(row["body"])} for row in rows]

    def verify_audit(self) -> audit.AuditReport:
        """Verify the whole audit chain in one snapshot, streaming it."""
        with self._read() as db:
            return _verify_audit(db)

    def audit_head(self) -> dict[str, Any]:
        """The newest entry as {"seq", "hash"}; {"seq": 0, "hash": GENESIS_HASH} if none."""
        with self._read() as db:
            return _audit_head(db)

    def last_audit_seal(self) -> dict[str, Any] | None:
        """The newest seal as {"seq", "hash"}, or None."""
        with self._read() as db:
            row = db.execute("SELECT seq, hash FROM audit_seals"
                             " ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else {"seq": row["seq"], "hash": row["hash"]}

    def audit_extends(self, sealed: dict[str, Any] | None, head: dict[str, Any]) -> str | None:
        """Why the log up to `head` is not the sealed log plus intact new entries (None if
        it is): the sealed entry must still have its hash and every entry after it must
        chain up to head. Reads only the entries since the seal, so the Repository actor
        checks this before every seal and never seals a log rewritten under it."""
        start = sealed or {"seq": 0, "hash": audit.GENESIS_HASH}
        with self._read() as db:
            if start["seq"]:
                row = db.execute("SELECT hash FROM audit_log WHERE seq = ?",
                                 (start["seq"],)).fetchone()
                if row is None or row[0] != start["hash"]:
                    return (f"sealed entry {start['seq']} is "
                            f"{'gone' if row is None else 'changed'} (the log was cut or"
                            " rewritten under the signer)")
            walk = audit.resume_chain(start["seq"], start["hash"])
            cursor = db.cursor()
            cursor.row_factory = None
            for row in cursor.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq > ?"
                                      " AND seq <= ? ORDER BY seq", (start["seq"], head["seq"])):
                problem = walk.accept(row)
                if problem is not None:
                    return f"entry {row[0]}: {problem}"
            if (walk.expected_seq - 1, walk.previous_hash) != (head["seq"], head["hash"]):
                return f"the log no longer ends at head {head['seq']}"
        return None

    def store_audit_seal(self, seq: int, head_hash: str, sealed_at: str,
                         signature: bytes) -> None:
        """Keep a seal the Hsm actor made of entry `seq`; refused unless that entry is in
        the log with that hash (a seal of a head the log no longer has is no seal)."""
        with self._write() as db:
            row = db.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq,)).fetchone()
            if row is None or row[0] != head_hash:
                raise RepositoryError(f"audit entry {seq} is not the sealed head"
                                      f" {head_hash[:16]}...: seal not stored")
            db.execute("INSERT INTO audit_seals (seq, hash, sealed_at, signature)"
                       " VALUES (?, ?, ?, ?)", (seq, head_hash, sealed_at, signature))

    def health(self, run_quick_check: bool = True) -> dict[str, Any]:
        """Counts are cheap at any size; quick_check reads every page (about 1.5 s for
        1M certificates), so a frequent poller may skip it ("skipped")."""
        with self._read() as db:
            quick_check = ("; ".join(row[0] for row in db.execute("PRAGMA quick_check"))
                           if run_quick_check else "skipped")
            counts = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                      for table in _COUNTED_TABLES}
            # Matches the partial index certificates_reserved: no table scan.
            counts["reserved"] = db.execute("SELECT COUNT(*) FROM certificates"
                                            " WHERE status = 'reserved'").fetchone()[0]
            counts["issued"] = counts["certificates"] - counts["reserved"]
            return {"quick_check": quick_check, "schema_version": self.schema_version(),
                    "counts": counts, "last_event_seq": db.execute(_LAST_SEQ_SQL).fetchone()[0],
                    "path": self.path}

    def consistency_check(self) -> list[str]:
        """Problems found, one line each (at most MAX_PROBLEMS_PER_CHECK per kind); []
        means consistent. Gaps in event seq are normal (AUTOINCREMENT) and not reported."""
        with self._read() as db:
            problems = []
            for what, query in _ROW_CHECKS:
                problems += _capped(f"{what}: {issuer}/{serial}"
                                    for issuer, serial in db.execute(query))
            problems += _capped(self._requests_naming_unissued_certificates())
            return problems

    def _requests_naming_unissued_certificates(self) -> Iterator[str]:
        """Issuance results name their certificate with "issuer" and "serial"; a name that
        is not an issued row means a result was recorded without its certificate."""
        for request_id, packed in self._db.execute("SELECT request_id, result FROM requests"):
            key = schema.certificate_key_of(unpack(packed))
            if key is not None:
                certificate = self._certificate_row(key)
                if certificate is None or certificate["status"] != "issued":
                    yield (f"request {request_id!r} names certificate {key[0]}/{key[1]},"
                           " which is not issued")

    def bulk_insert_certificates(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert many certificates in one transaction (benchmarks; no events, requests or
        audit entries). Each row: issuer, serial, request_id, profile, subject, not_before,
        not_after (aware datetimes), der; optional status (default issued), origin_node."""
        now = self._now()
        return self._bulk_insert("certificates", _CERTIFICATE_COLUMNS, (
            {"status": "issued", "origin_node": self.node_id, **row, "created_at": now,
             "serial": normalise_serial(row["serial"]),
             "not_before": to_db_time(row["not_before"]),
             "not_after": to_db_time(row["not_after"])} for row in rows))

    def bulk_insert_revocations(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert many revocations in one transaction (benchmarks; no events or audit
        entries). Each row: issuer, serial, reason, revoked_at (aware datetime); optional
        request_id."""
        now = self._now()
        return self._bulk_insert("revocations", _REVOCATION_COLUMNS, (
            {"request_id": None, **row, "origin_node": self.node_id, "recorded_at": now,
             "serial": normalise_serial(row["serial"]),
             "revoked_at": to_db_time(row["revoked_at"])} for row in rows))

    def _bulk_insert(self, table: str, columns: Iterable[str],
                     rows: Iterable[Mapping[str, Any]]) -> int:
        with self._write() as db:
            return db.executemany(_insert_sql(table, columns), rows).rowcount


def verify_audit_file(path: str) -> audit.AuditReport:
    """verify_audit on a repository file opened read-only (no migration, no write; works
    beside a running signer: WAL readers see a snapshot and never block it)."""
    with _audit_snapshot(path) as db:
        return _verify_audit(db)


def verify_sealed_audit_file(path: str, public_key: Any,
                             head: tuple[int, str] | None = None) -> audit.SealedAuditReport:
    """The chain, every seal (signature by `public_key`, the audit key's public half) and
    `head` (seq, hash), read-only in one snapshot (core.repository.audit.verify_sealed_chain). A
    repository from before the seals table has no seals: all its entries are unsealed."""
    with _audit_snapshot(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        seals: Iterable[audit.SealRow] = ()
        if version >= schema.AUDIT_SEALS_SCHEMA_VERSION:
            seal_cursor = db.cursor()
            seal_cursor.row_factory = None
            seals = seal_cursor.execute("SELECT seq, hash, sealed_at, signature"
                                        " FROM audit_seals ORDER BY seq")
        return audit.verify_sealed_chain(_audit_rows(db), seals, public_key, head)


@contextmanager
def _audit_snapshot(path: str) -> Iterator[sqlite3.Connection]:
    """The repository file read-only, in one read transaction (one snapshot)."""
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    with _sqlite_errors_as_repository_errors(), closing(sqlite3.connect(uri, uri=True)) as db:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < schema.AUDIT_SCHEMA_VERSION:
            raise RepositoryError(f"{path}: schema version {version} has no audit log (the"
                                  " signer adds it when it next opens the repository)")
        db.execute("BEGIN")  # one snapshot for the whole walk
        try:
            yield db
        finally:
            db.execute("ROLLBACK")


def _audit_rows(db: sqlite3.Connection) -> Iterable[audit.AuditRow]:
    cursor = db.cursor()
    cursor.row_factory = None  # plain tuples, one at a time: the log may be long
    return cursor.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit_log ORDER BY seq")


def _verify_audit(db: sqlite3.Connection) -> audit.AuditReport:
    return audit.verify_chain(_audit_rows(db))


def _audit_head(db: sqlite3.Connection) -> dict[str, Any]:
    row = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return {"seq": 0, "hash": audit.GENESIS_HASH} if row is None else {"seq": row[0],
                                                                       "hash": row[1]}


def _request_record(command: str, request_digest: str, result: dict[str, Any]) -> dict[str, Any]:
    """The `requests` row an event carries, so the peer answers a retry the same way."""
    return {"command": command, "request_digest": request_digest, "result": result}


def _revocation_answer(key: CertificateKey, reason: int | None, revoked_at: str,
                       already_revoked: bool) -> dict[str, Any]:
    return {"issuer": key[0], "serial": key[1], "reason": reason,
            "revoked_at": from_db_time(revoked_at), "already_revoked": already_revoked}


def _insert_sql(table: str, columns: Iterable[str]) -> str:
    """INSERT with named placeholders: rows are mappings, extra keys are ignored."""
    names = list(columns)
    return (f"INSERT INTO {table} ({', '.join(names)})"
            f" VALUES ({', '.join(':' + name for name in names)})")


def _capped(problems: Iterable[str]) -> list[str]:
    kept = list(itertools.islice(problems, MAX_PROBLEMS_PER_CHECK + 1))
    if len(kept) > MAX_PROBLEMS_PER_CHECK:
        kept[-1] = f"... more of the same kind (only the first {MAX_PROBLEMS_PER_CHECK} shown)"
    return kept


def _digest_rows(rows: list[tuple[str, str, int | None]]) -> str:
    lines = "".join(f"{serial} {revoked_at} {'' if reason is None else reason}\n"
                    for serial, revoked_at, reason in rows)
    return hashlib.sha256(lines.encode()).hexdigest()


def quick_check_file(path: str) -> str:
    """PRAGMA quick_check on a connection of its own (read-only), so it can run in a thread
    while the owner keeps writing: WAL readers do not block the writer."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    try:
        return "; ".join(row[0] for row in db.execute("PRAGMA quick_check"))
    except sqlite3.Error as exc:
        return f"quick_check failed: {exc}"
    finally:
        db.close()
