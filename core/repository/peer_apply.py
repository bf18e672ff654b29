"""Replication between signers: the half of the Repository that applies a peer's events.

Every signer publishes its whole event log, its own events and the ones it applied from
the peer, and applies the events it receives with apply_event. An event applies once
(its event_id is kept, so a repeat is a no-op), in one transaction with its effect (a
catch-up batch, apply_peer_events: one transaction, one savepoint per event), and
is appended to the local log under the same event_id and origin_node, so a third signer
replaying any one log reaches the same state. Each applied event also gets an entry in
this signer's audit log (core/repository/audit.py), so its chain covers everything its repository
holds. The rules below are deterministic and the same on every node, which is what makes
two signers converge whatever order they see the events in; content_digest() compares
the result.

Conflict rules:
  x509_issued    a certificate is never overwritten: a different DER for a known
                 (issuer, serial) is a serial collision and refused.
  x509_revoked   the earliest revoked_at wins; a tie goes to the smaller origin_node.
  crl_issued     raises the issuer's CRL number floor: a CRL built here numbers above any
                 CRL the peer built (previous_crl_number).
  openpgp_signed the first signature stored under a request_id stays.
  x509_imported  a certificate of the CA taken over (docs/MIGRATION.md), with or without its
                 DER, and its revocation if any: never overwritten (another DER, or DER
                 against none, for a known serial is a collision and refused); the
                 revocation merges by the x509_revoked rule.
Request records travel with x509_issued and openpgp_signed and are added when their
request_id is unknown here, so a client retrying on the other signer gets the same answer.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, closing
from urllib.parse import quote
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography import x509

from core.repository import audit
from core.sync.peer_validation import Ahead, PeerEventRefused, PeerValidator
from core.wire.protocol import pack, unpack
from core.x509.certificate import X509_PARSE_ERRORS
from core.repository.schema import (CRL_REASON_CODES, IMPORT_SOURCES, RepositoryError,
                                    UnknownCertificate, body_for_storage, from_db_time,
                                    normalise_serial, result_for_storage, to_db_time)

# content_digest: rows both signers hold once converged, in an order independent of how
# they were inserted. Node-local columns (created_at, recorded_at, seq) stay out, and so do
# reservations: they are local bookkeeping of a signature in flight, never replicated.
_DIGEST_QUERIES = (
    ("certificates", "SELECT issuer, serial, status, der, not_after FROM certificates"
                     " WHERE status = 'issued' ORDER BY issuer, serial"),
    ("revocations", "SELECT issuer, serial, reason, revoked_at FROM revocations"
                    " ORDER BY issuer, serial"),
    ("openpgp_signatures", "SELECT request_id, fingerprint, signed_key FROM openpgp_signatures"
                           " ORDER BY request_id"),
)


class RefusedEvent(RepositoryError):
    """A peer event this repository will never apply as it is (malformed, unknown type,
    serial collision): a peer's is quarantined rather than retried."""


class RepositorySync:
    """Mixin of core.repository.store.Repository. It relies on the host's connection helpers:
    `_db`, `_read()` and `_write()` (transactions), `_insert(table, values)`, `_now()`,
    `_certificate_row(key)`, `_append_audit(kind, body)` and `_audit_tail_kept()`."""

    _db: sqlite3.Connection
    _audit_tail: tuple[int, str] | None

    if TYPE_CHECKING:  # the host's helpers, as core.repository.store.Repository defines them
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _insert(self, table: str, values: Mapping[str, Any]) -> None: ...
        def _now(self) -> str: ...
        def _certificate_row(self, key: tuple[str, str]) -> sqlite3.Row | None: ...
        def _append_audit(self, kind: str, body: dict[str, Any]) -> None: ...
        def _audit_tail_kept(self) -> AbstractContextManager[None]: ...

    def apply_event(self, event: Mapping[str, Any]) -> bool:
        """Apply one event of a peer's log, as events_after returns it (body decoded or
        still packed; created_at an aware datetime or ISO 8601 text with an offset; `seq`
        and other keys ignored). False: already applied, nothing
        changed. Raises UnknownCertificate for a revocation whose issuance has not arrived
        yet (retry later) and RepositoryError for a malformed or conflicting event; either
        way nothing is stored."""
        parsed = self._parse_event(event)
        with self._write():
            return self._apply_parsed(*parsed)

    def _parse_event(self, event: Mapping[str, Any]) -> tuple[str, str, str, dict[str, Any],
                                                               str, bytes | None]:
        """(event_id, origin_node, type, body, created_at, signature), checked for shape."""
        try:
            event_id, origin_node, event_type = (_require(event, name, str) for name in
                                                 ("event_id", "origin_node", "type"))
            body = event["body"]
            body = unpack(body) if isinstance(body, bytes) else body
            if not isinstance(body, dict):
                raise TypeError(f"body is a {type(body).__name__}, not a map")
            created_at = _db_time(event.get("created_at") or self._now())
            signature = _optional(event, "signature", bytes)
        except (KeyError, TypeError, ValueError) as exc:
            raise RefusedEvent(f"malformed event: {_describe(exc)}") from exc
        return event_id, origin_node, event_type, body, created_at, signature

    def _apply_parsed(self, event_id: str, origin_node: str, event_type: str,
                      body: dict[str, Any], created_at: str, signature: bytes | None,
                      known_checked: bool = False) -> bool:
        """apply_event inside the caller's write transaction (known_checked: the caller
        has just found event_id not in the log)."""
        db = self._db
        if not known_checked and db.execute("SELECT 1 FROM events WHERE event_id = ?",
                                            (event_id,)).fetchone():
            return False
        apply = _APPLY.get(event_type)
        if apply is None:
            raise RefusedEvent(f"unknown event type {event_type!r} (event {event_id})")
        try:
            der = apply(self, body, origin_node, created_at)
            # Inside the try: a body field JSON cannot hold makes the event malformed.
            self._append_audit(event_type, audit.event_summary(event_type, body,
                                                               origin_node, event_id))
        except (KeyError, TypeError, ValueError) as exc:
            raise RefusedEvent(f"malformed {event_type} event {event_id}:"
                               f" {_describe(exc)}") from exc
        # The row refers to the certificate's stored DER instead of copying it; read back
        # (events_after), the body is the one received, so its signature still verifies.
        stored, ref = body_for_storage(event_type, body, der)
        db.execute("INSERT INTO events (event_id, origin_node, type, body, created_at,"
                   " signature, certificate_ref) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (event_id, origin_node, event_type, pack(stored), created_at, signature, ref))
        return True

    def apply_peer_event(self, event: Mapping[str, Any], validator: PeerValidator) -> str:
        """Apply one event as it arrived from the peer, after `validator` checked it:
        "applied", "known" (already in the log: nothing to do) or "quarantined" (refused
        and parked in sync_quarantine, now or on an earlier delivery). A revocation whose
        certificate has not arrived yet raises UnknownCertificate (retry later); a local
        failure (sqlite) raises RepositoryError. Neither stores anything."""
        outcomes, waiting = self.apply_peer_events([event], validator)
        if waiting is not None:
            raise waiting
        return outcomes[0]

    def apply_peer_events(self, events: Iterable[Mapping[str, Any]], validator: PeerValidator
                          ) -> tuple[list[str], UnknownCertificate | None]:
        """apply_peer_event for a batch in ONE transaction (catch-up speed: a commit with
        synchronous=FULL costs more than checking and applying an event). Every event is
        still checked by `validator` (signature and body) and applied in its own savepoint,
        so a refused one is quarantined without undoing the others. Returns the outcome of
        each event handled, in order, and the UnknownCertificate that stopped the batch
        early (a revocation before its certificate: it and the events after it are not
        handled and come again), else None. A local failure (sqlite) rolls the whole batch
        back and raises RepositoryError."""
        outcomes: list[str] = []
        events = list(events)
        with self._write() as db, self._audit_tail_kept():
            # Most batches meet an empty quarantine: then no event needs its digest looked up.
            parked = db.execute("SELECT EXISTS (SELECT 1 FROM sync_quarantine)").fetchone()[0]
            known = _known_event_ids(db, [e.get("event_id") for e in events])
            # The signatures of the events to check are verified by worker processes
            # meanwhile (when the validator has them and the batch is large: catch-up).
            ahead = validator.verify_ahead([e for e in events if not _is_known(e, known)])
            for event in events:
                try:
                    outcomes.append(self._apply_peer_in_batch(db, event, validator, parked,
                                                              known, ahead))
                except UnknownCertificate as exc:
                    return outcomes, exc
        return outcomes, None

    def _apply_peer_in_batch(self, db: sqlite3.Connection, event: Mapping[str, Any],
                             validator: PeerValidator, parked: bool, known: set[str],
                             ahead: Ahead | None = None) -> str:
        """One event of apply_peer_events; `known`: the batch's event ids already in the
        log, grown by each event applied; `ahead`: validator.verify_ahead's answer."""
        event_id = event.get("event_id")
        if event_id in known:
            return "known"  # before checking: our own events come back, no work to redo
        if parked and db.execute("SELECT 1 FROM sync_quarantine WHERE digest = ?",
                                 (_quarantine_digest(event),)).fetchone():
            return "quarantined"
        try:
            validator.check(event, ahead)
            parsed = self._parse_event(event)
            db.execute("SAVEPOINT peer_event")
            try:
                applied = self._apply_parsed(*parsed, known_checked=True)
            except BaseException:
                self._audit_tail = None  # the entry it may have written is undone
                if db.in_transaction:  # some sqlite errors already rolled back
                    db.execute("ROLLBACK TO peer_event")
                    db.execute("RELEASE peer_event")
                raise
            db.execute("RELEASE peer_event")
            known.add(parsed[0])
            return "applied" if applied else "known"
        except (PeerEventRefused, RefusedEvent) as exc:  # not UnknownCertificate: it waits
            reason = str(exc) if isinstance(exc, PeerEventRefused) else exc.message
        db.execute("INSERT INTO sync_quarantine (digest, event_id, origin_node, type, reason,"
                   " event, quarantined_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (_quarantine_digest(event), _text_or_none(event_id),
                    _text_or_none(event.get("origin_node")),
                    _text_or_none(event.get("type")), reason, pack(_wire_form(event)),
                    self._now()))
        return "quarantined"

    def _event_known(self, event_id: str) -> bool:
        with self._read() as db:
            return db.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone() is not None

    def quarantine_count(self) -> int:
        with self._read() as db:
            count: int = db.execute("SELECT COUNT(*) FROM sync_quarantine").fetchone()[0]
        return count

    def quarantined_events(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The parked peer events, oldest first: id, event_id, origin_node, type, reason,
        quarantined_at and the event as received (decoded)."""
        with self._read() as db:
            return _quarantine_rows(db, limit)

    def _apply_x509_issued(self, body: dict[str, Any], origin_node: str,
                           created_at: str) -> bytes:
        """Returns the certificate's DER as stored here (as every _APPLY function that
        stores a certificate does; the others return None)."""
        key, der = _certificate_key(body), _require(body, "der", bytes)
        existing = self._certificate_row(key)
        if existing is None:
            subject = _optional(body, "subject", str)  # absent from events before sync
            self._insert("certificates", {
                "issuer": key[0], "serial": key[1],
                "request_id": _require(body, "request_id", str),
                "profile": _require(body, "profile", str), "status": "issued",
                "subject": subject_of(der) if subject is None else subject,
                "not_before": _db_time(_require(body, "not_before", str)),
                "not_after": _db_time(_require(body, "not_after", str)),
                "created_at": created_at,
                "origin_node": _optional(body, "origin_node", str, origin_node), "der": der})
        elif existing["status"] != "issued":
            raise RefusedEvent(f"certificate {key[0]}/{key[1]} is reserved here by request"
                                  f" {existing['request_id']!r} and was issued by the peer")
        elif existing["der"] != der:
            raise RefusedEvent(f"serial collision: {key[0]}/{key[1]} is issued here with"
                                  " another DER")
        self._adopt_request(body, created_at, der)
        return der

    def _apply_x509_revoked(self, body: dict[str, Any], origin_node: str, created_at: str) -> None:
        key = _certificate_key(body)
        certificate = self._certificate_row(key)
        if certificate is None or certificate["status"] != "issued":
            raise UnknownCertificate(f"revocation of {key[0]}/{key[1]}, which is not issued"
                                     " here (yet)")
        self._merge_revocation(key, body, origin_node)

    def _merge_revocation(self, key: tuple[str, str], body: dict[str, Any],
                          origin_node: str) -> None:
        """The revocation `body` carries, by the conflict rule: the earliest revoked_at
        wins, a tie goes to the smaller origin_node."""
        reason = body.get("reason")
        if reason is not None and (isinstance(reason, bool) or reason not in CRL_REASON_CODES):
            raise ValueError(f"{reason!r} is not an RFC 5280 CRLReason code")
        revocation = {"issuer": key[0], "serial": key[1], "reason": reason,
                      "revoked_at": _db_time(_require(body, "revoked_at", str)),
                      "request_id": _optional(body, "request_id", str),
                      "origin_node": _optional(body, "origin_node", str, origin_node),
                      "recorded_at": self._now()}
        local = self._db.execute("SELECT revoked_at, origin_node FROM revocations"
                                 " WHERE issuer = ? AND serial = ?", key).fetchone()
        if local is None:
            self._insert("revocations", revocation)
        elif (revocation["revoked_at"], revocation["origin_node"]) < tuple(local):
            # Times are fixed-width text, so the tuple order is (instant, node id).
            self._db.execute(
                "UPDATE revocations SET reason = :reason, revoked_at = :revoked_at,"
                " origin_node = :origin_node, request_id = :request_id,"
                " recorded_at = :recorded_at WHERE issuer = :issuer AND serial = :serial",
                revocation)

    def _apply_x509_imported(self, body: dict[str, Any], origin_node: str,
                             created_at: str) -> bytes | None:
        """A certificate of the CA this signer took over, with its revocation if any
        (core/repository/openssl_ca_import.py). Never overwrites: the same serial with another DER (or
        one with a DER, the other without) is a collision."""
        key = _certificate_key(body)
        row = imported_certificate_row(body, origin_node, created_at)
        # Insert first, look only on a conflict: a bootstrap meets no conflicts.
        if self._db.execute(IMPORT_CERTIFICATE_SQL, row).rowcount != 1:
            existing = self._certificate_row(key)
            assert existing is not None  # the insert met this (issuer, serial)
            if imported_same_certificate(existing, row) is None:
                raise RefusedEvent(f"serial collision: {key[0]}/{key[1]} is held here as"
                                   " another certificate")
            complete_imported_record(self._db, existing, row)
        if body.get("revoked_at") is not None:
            self._merge_revocation(key, body, origin_node)
        der: bytes | None = row["der"]
        return der

    def _apply_crl_issued(self, body: dict[str, Any], origin_node: str, created_at: str) -> None:
        number = _require(body, "number", int)
        if isinstance(number, bool) or number < 1:
            raise ValueError(f"CRL number {number!r}")
        self._db.execute("INSERT INTO crl_number_floor (issuer, number) VALUES (?, ?)"
                         " ON CONFLICT (issuer) DO UPDATE"
                         " SET number = max(number, excluded.number)",
                         (_require(body, "issuer", str), number))

    def _apply_openpgp_signed(self, body: dict[str, Any], origin_node: str,
                              created_at: str) -> None:
        request_id = _require(body, "request_id", str)
        if not self._db.execute("SELECT 1 FROM openpgp_signatures WHERE request_id = ?",
                                (request_id,)).fetchone():
            uids = _require(body, "uids", list)
            if not all(isinstance(uid, str) for uid in uids):
                raise TypeError("uids must be strings")
            expires_at = _optional(body, "expires_at", str)
            self._insert("openpgp_signatures", {
                "request_id": request_id, "fingerprint": _require(body, "fingerprint", str),
                "signed_key": _require(body, "signed_key", bytes), "uids": json.dumps(uids),
                "expires_at": None if expires_at is None else _db_time(expires_at),
                "created_at": created_at,
                "origin_node": _optional(body, "origin_node", str, origin_node)})
        self._adopt_request(body, created_at)

    def _adopt_request(self, body: dict[str, Any], created_at: str,
                       der: bytes | None = None) -> None:
        """Store the request record the event carries unless its request_id is known here
        (then the local answer stays: it is what this signer already told the client).
        der: the certificate's DER stored here (x509_issued), which a sign_x509 result
        refers to rather than copies: its certificate is nil in events made since migration 7
        (schema.py), the DER itself in older ones."""
        record = body.get("request")
        if record is None:  # events written before bodies carried it
            return
        request_id = _require(body, "request_id", str)
        if self._db.execute("SELECT 1 FROM requests WHERE request_id = ?",
                            (request_id,)).fetchone():
            return
        command = _require(record, "command", str)
        request_digest = _require(record, "request_digest", str)
        result, ref = result_for_storage(command, _require(record, "result", dict), der)
        self._insert("requests", {"request_id": request_id, "command": command,
                                  "request_digest": request_digest, "result": pack(result),
                                  "created_at": created_at, "certificate_ref": ref})

    def content_digest(self) -> str:
        """sha256 of the replicated content: issued certificates (issuer, serial, status,
        der, not_after), revocations (issuer, serial, reason, revoked_at) and OpenPGP
        signatures (request_id, fingerprint, signed_key). Two converged signers agree."""
        digest = hashlib.sha256()
        with self._read() as db:
            cursor = db.cursor()
            cursor.row_factory = None  # plain tuples, streamed: this reads every DER
            for table, query in _DIGEST_QUERIES:
                digest.update(pack(table))  # msgpack framing: no row can pass for another
                for row in cursor.execute(query):
                    digest.update(pack(row))
        return digest.hexdigest()

    def get_sync_state(self, key: str, default: str | None = None) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_sync_state(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("sync state keys and values are strings")
        with self._write() as db:
            db.execute("INSERT INTO sync_state (key, value) VALUES (?, ?)"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def crl_number_floor(self, issuer: str) -> int | None:
        """The highest CRL number of `issuer` seen in the peer's events; None if none."""
        with self._read() as db:
            row = db.execute("SELECT number FROM crl_number_floor WHERE issuer = ?",
                             (issuer,)).fetchone()
        return None if row is None else row[0]

    def previous_crl_number(self, issuer: str) -> int | None:
        """The number the next CRL of `issuer` must exceed: the latest stored here or the
        peer's floor, whichever is higher; None before any CRL of the issuer anywhere."""
        with self._read():
            return self._previous_crl_number(issuer)

    def _previous_crl_number(self, issuer: str) -> int | None:
        """previous_crl_number inside the caller's transaction."""
        numbers = self._db.execute(
            "SELECT (SELECT MAX(number) FROM crls WHERE issuer = ?),"
            " (SELECT number FROM crl_number_floor WHERE issuer = ?)",
            (issuer, issuer)).fetchone()
        known = [number for number in numbers if number is not None]
        return max(known) if known else None


_APPLY: dict[str, Callable[[RepositorySync, dict[str, Any], str, str], bytes | None]] = {
    "x509_issued": RepositorySync._apply_x509_issued,
    "x509_revoked": RepositorySync._apply_x509_revoked,
    "crl_issued": RepositorySync._apply_crl_issued,
    "openpgp_signed": RepositorySync._apply_openpgp_signed,
    "x509_imported": RepositorySync._apply_x509_imported,
}


IMPORT_CERTIFICATE_SQL = (
    "INSERT INTO certificates (issuer, serial, request_id, profile, status, subject, not_before,"
    " not_after, created_at, origin_node, der, imported_from) VALUES (:issuer, :serial,"
    " :request_id, :profile, :status, :subject, :not_before, :not_after, :created_at,"
    " :origin_node, :der, :imported_from) ON CONFLICT (issuer, serial) DO NOTHING")


def imported_same_certificate(existing: sqlite3.Row, row: Mapping[str, Any]) -> bool | None:
    """Whether an imported record `row` is the certificate `existing` already holds: None when
    it is another one (a serial collision); True when `row` completes an index-only record
    of the same import with the certificate's DER (a re-run that found the newcerts file, or
    that event on a peer); False when there is nothing to add. A record without DER never
    replaces a DER."""
    if existing["status"] != "issued":
        return None
    if existing["der"] is None and row["der"] is not None:
        return True if existing["imported_from"] is not None else None
    if row["der"] is None or existing["der"] == row["der"]:
        return False
    return None


def complete_imported_record(db: sqlite3.Connection, existing: sqlite3.Row, row: Mapping[str, Any]) -> bool:
    """Give an index-only imported record the DER of its certificate (checked by the caller:
    signed by the issuer, serial, dates and subject equal the certificate's) and the dates
    and subject the DER states. False when there was nothing to complete."""
    if not imported_same_certificate(existing, row):
        return False
    db.execute("UPDATE certificates SET der = :der, subject = :subject, not_before = :not_before,"
               " not_after = :not_after WHERE issuer = :issuer AND serial = :serial AND der IS NULL",
               {key: row[key] for key in ("der", "subject", "not_before", "not_after", "issuer", "serial")})
    return True


def imported_certificate_row(body: Mapping[str, Any], origin_node: str,
                             created_at: str) -> dict[str, Any]:
    """The certificates row of an x509_imported body, the same on the importing signer and
    on the peer (request_id and profile say where it came from: no request made it)."""
    source = _require(body, "imported_from", str)
    if source not in IMPORT_SOURCES:
        raise ValueError(f"imported_from {source!r} is not one of {sorted(IMPORT_SOURCES)}")
    return {"issuer": _require(body, "issuer", str),
            "serial": normalise_serial(_require(body, "serial", str)),
            "request_id": f"imported:{source}", "profile": "imported", "status": "issued",
            "subject": _require(body, "subject", str),
            "not_before": _db_time(_require(body, "not_before", str)),
            "not_after": _db_time(_require(body, "not_after", str)),
            "created_at": created_at,
            "origin_node": _optional(body, "origin_node", str, origin_node),
            "der": _optional(body, "der", bytes), "imported_from": source}


def subject_of(der: bytes) -> str:
    """The RFC 4514 subject of a DER certificate, as reservations store it; "" if the DER
    does not parse (only for x509_issued events that predate the subject in the body)."""
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except X509_PARSE_ERRORS:
        return ""


_Value = TypeVar("_Value")


def _require(fields: Mapping[str, Any], name: str, kind: type[_Value]) -> _Value:
    if name not in fields:
        raise KeyError(name)
    value = fields[name]
    if not isinstance(value, kind):
        raise TypeError(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _optional(fields: Mapping[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """`name` if present and not None (then it must be a `kind`), else `default`."""
    return default if fields.get(name) is None else _require(fields, name, kind)


def _certificate_key(body: Mapping[str, Any]) -> tuple[str, str]:
    return _require(body, "issuer", str), normalise_serial(_require(body, "serial", str))


_DB_TIME_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _db_time(value: datetime | str) -> str:
    """Database time text from an aware datetime or from database time text (checked:
    a malformed or naive time would break the text comparisons of times)."""
    if isinstance(value, str):
        parsed = from_db_time(value)
        if _DB_TIME_TEXT.fullmatch(value):
            return value  # already the one spelling (and a real date: it parsed)
        value = parsed
    if not isinstance(value, datetime):
        raise TypeError(f"a time is a {type(value).__name__}")
    return to_db_time(value)


_QUARANTINE_SQL = ("SELECT id, event_id, origin_node, type, reason, quarantined_at, event"
                   " FROM sync_quarantine ORDER BY id LIMIT ?")


def _quarantine_rows(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    return [{"id": row[0], "event_id": row[1], "origin_node": row[2], "type": row[3],
             "reason": row[4], "quarantined_at": from_db_time(row[5]), "event": unpack(row[6])}
            for row in db.execute(_QUARANTINE_SQL, (limit,))]


def read_quarantine_file(path: str, limit: int = 1000) -> list[dict[str, Any]]:
    """quarantined_events of a repository file opened read-only (beside a running signer,
    as `signer-admin quarantine` does). A database from before the quarantine: []."""
    try:
        with closing(sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)) as db:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sync_quarantine'").fetchone():
                return []
            return _quarantine_rows(db, limit)
    except sqlite3.Error as exc:
        raise RepositoryError(f"cannot read repository {path}: {exc}") from None


_KNOWN_IDS_CHUNK = 500  # parameters per query, well below SQLite's limit


def _known_event_ids(db: sqlite3.Connection, event_ids: list[Any]) -> set[str]:
    """Which of `event_ids` the log holds, in a few queries for a whole batch."""
    wanted = [event_id for event_id in event_ids if isinstance(event_id, str)]
    known: set[str] = set()
    for start in range(0, len(wanted), _KNOWN_IDS_CHUNK):
        chunk = wanted[start:start + _KNOWN_IDS_CHUNK]
        known.update(row[0] for row in db.execute(
            f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})",
            chunk))
    return known


def _is_known(event: Mapping[str, Any], known: set[str]) -> bool:
    event_id = event.get("event_id")
    return isinstance(event_id, str) and event_id in known


def _quarantine_digest(event: Mapping[str, Any]) -> str:
    """Of the event as received: the same delivery twice is parked once."""
    return hashlib.sha256(pack(_wire_form(event))).hexdigest()


def _wire_form(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as msgpack can hold it (times as text), for the quarantine."""
    return {str(key): value.isoformat() if isinstance(value, datetime) else value
            for key, value in event.items()}


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _describe(exc: Exception) -> str:
    return f"missing {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
