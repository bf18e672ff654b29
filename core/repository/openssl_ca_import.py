"""Import the history of the CA this signer takes over from an `openssl ca` folder
(docs/MIGRATION.md): `signer-admin import-openssl-ca`.

What `openssl ca` keeps, per CA (/work/shared/cacert-webdb.md):
  index.txt   one line per certificate, six tab-separated fields: status V (valid), R
              (revoked) or E (expired); expiry; revocation "" or "TIME[,reason[,extra]]";
              serial (upper-case hex); file name ("unknown"); subject ("/C=AU/CN=...").
              TIME is UTCTime YYMMDDHHMMSSZ (GeneralizedTime YYYYMMDDHHMMSSZ from 2050).
  newcerts/   <SERIAL>.pem, the certificates issued (while nobody deleted them)
  serial      the next serial (hex); crlnumber the next CRL number (hex)
and the last CRL it published (--crl, DER or PEM).

Every index line becomes one x509_imported record: with the certificate's DER when its
newcerts file exists (then it must verify against the issuer, or it is refused and
counted), else a record of the line alone. Revocations come from R lines and from the
last CRL (a serial the CRL lists but the index does not: a record with no expiry, kept on
every CRL). Each record passes core.sync.peer_validation.check_imported, the check a peer runs
on the event, before it is stored; the repository stores them in batches
(Repository.import_history), each with its event and audit entry. A re-run finds every
serial present and imports nothing twice. The CRL's number (and crlnumber - 1) becomes
the CRL number floor.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.crl.build import REASON_CODES
from core.sync.peer_validation import NotSignedByIssuer, PeerEventRefused, check_imported
from core.repository.store import Repository
from core.repository.schema import (UNKNOWN_NOT_AFTER, UNKNOWN_NOT_BEFORE, normalise_serial,
                                    to_db_time)
from core.x509.certificate import X509_PARSE_ERRORS, issuer_public_key

IMPORT_SOURCE = "openssl-ca"
DEFAULT_BATCH = 5000  # records per transaction: ~1 s of work, a few MB of DER
MAX_EXAMPLES = 20  # refusals listed by line; the counts cover all of them

# openssl's crl_reasons (apps/ca.c) -> RFC 5280 CRLReason. holdInstruction, keyTime and
# CAkeyTime are openssl's spellings for a hold with its instruction and for a compromise with
# its time; removeFromCRL is no revocation (openssl uses it to lift a hold) and is refused.
OPENSSL_REASONS = {
    "unspecified": 0, "keyCompromise": 1, "CACompromise": 2, "affiliationChanged": 3,
    "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "holdInstruction": 6,
    "keyTime": 1, "CAkeyTime": 2}


class IndexLineError(ValueError):
    """An index.txt line that is not what `openssl ca` writes."""


class ImportRefused(Exception):
    """The import cannot start: its input is unusable as a whole (no index, a CRL of
    another CA). Nothing was stored."""


@dataclass(frozen=True)
class IndexLine:
    status: str  # V, R or E
    expiry: datetime
    revoked_at: datetime | None
    reason: int | None  # None: the line names no reason
    serial: str  # as the index spells it (the newcerts file name)
    filename: str
    subject: str


def parse_openssl_time(text: str) -> datetime:
    """UTCTime YYMMDDHHMMSSZ (years 50..99 are 19xx, RFC 5280 4.1.2.5.1) or GeneralizedTime
    YYYYMMDDHHMMSSZ, as openssl writes them into index.txt."""
    if len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    if len(text) != 15 or not text.endswith("Z") or not text[:14].isdigit():
        raise IndexLineError(f"time {text!r} is neither YYMMDDHHMMSSZ nor YYYYMMDDHHMMSSZ")
    try:  # not strptime: a million lines, and it costs 10 times this
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                        int(text[10:12]), int(text[12:14]), tzinfo=timezone.utc)
    except ValueError:
        raise IndexLineError(f"time {text!r} is no date") from None


def parse_index_line(line: str) -> IndexLine:
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 6:
        raise IndexLineError(f"{len(fields)} tab-separated fields, not 6")
    status, expiry, revocation, serial, filename, subject = fields
    if status not in ("V", "R", "E"):
        raise IndexLineError(f"status {status!r} is not V, R or E")
    try:
        normalise_serial(serial)
    except ValueError:
        raise IndexLineError(f"serial {serial!r} is not hex") from None
    if not serial or int(serial, 16) == 0:
        raise IndexLineError("serial 0 or empty")
    revoked_at, reason = None, None
    if status == "R":
        if not revocation:
            raise IndexLineError("an R line without a revocation time")
        parts = revocation.split(",")
        revoked_at = parse_openssl_time(parts[0])
        if len(parts) > 1:
            if parts[1] not in OPENSSL_REASONS:
                raise IndexLineError(f"revocation reason {parts[1]!r} is not one openssl"
                                     " revokes with")
            reason = OPENSSL_REASONS[parts[1]]
    elif revocation:
        raise IndexLineError(f"a {status} line with a revocation field {revocation!r}")
    return IndexLine(status, parse_openssl_time(expiry), revoked_at, reason, serial, filename,
                     subject)


@dataclass
class ImportSummary:
    issuer: str
    index_lines: int = 0
    records_with_der: int = 0  # records read with the certificate from newcerts/
    records_index_only: int = 0  # the index line alone (no newcerts file)
    records_crl_only: int = 0  # a serial only the CRL names
    certificates: int = 0  # of the records, new in the repository
    revocations: int = 0  # of new certificates (index R lines and CRL entries)
    revocations_added: int = 0  # CRL entries added to certificates already present
    crl_entries: int = 0
    already_present: int = 0
    certificates_completed: int = 0  # of those, index-only records given the DER found now
    serial_collisions: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    refusal_examples: list[str] = field(default_factory=list)
    crl_number: int | None = None
    crl_number_floor_raised: bool = False
    next_serial: str | None = None
    next_crl_number: int | None = None

    def refuse(self, kind: str, where: str, why: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        if len(self.refusal_examples) < MAX_EXAMPLES:
            self.refusal_examples.append(f"{where}: {kind}: {why}")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, refused_total=sum(self.refused.values()))


def read_crl_file(path: Path, issuer: x509.Certificate
                  ) -> tuple[int | None, dict[int, tuple[datetime, int | None]]]:
    """(CRL number, serial -> (revoked_at, reason)) of the old CA's last CRL, after checking
    that `issuer` signed it. ImportRefused when it is unreadable or another CA's."""
    try:
        data = path.read_bytes()
        crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
               else x509.load_der_x509_crl(data))
    except OSError as exc:
        raise ImportRefused(f"cannot read the CRL {path}: {exc.strerror}") from None
    except X509_PARSE_ERRORS as exc:
        raise ImportRefused(f"{path} is not a CRL (DER or PEM): {exc}") from None
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer_public_key(issuer)):
        raise ImportRefused(f"the CRL {path} is not signed by the issuer certificate"
                            f" ({issuer.subject.rfc4514_string()})")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    try:
        return number, _crl_entries(crl)
    except X509_PARSE_ERRORS as exc:  # an entry extension that does not parse
        raise ImportRefused(f"the CRL {path} has an entry that does not parse: {exc}") from None


def _crl_entries(crl: x509.CertificateRevocationList) -> dict[int, tuple[datetime, int | None]]:
    entries = {}
    for entry in crl:
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason: int | None = REASON_CODES[flag.value]  # ReasonFlags values are the RFC names
        except x509.ExtensionNotFound:
            reason = None
        entries[entry.serial_number] = (entry.revocation_date_utc, reason)
    return entries


def _read_hex_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
        normalise_serial(text)
        return text
    except (OSError, ValueError):
        return None


def _certificate_der(newcerts: Path, present: set[str], serial: str) -> bytes | None:
    """The DER of newcerts/<SERIAL>.pem (openssl's spelling first, then canonical upper-case
    hex of even length); None when the file is absent (`present`: the folder's names, read
    once). Unreadable: X509_PARSE_ERRORS."""
    canonical = format(int(serial, 16), "X")
    canonical = canonical.zfill(len(canonical) + len(canonical) % 2)
    for name in dict.fromkeys((serial, serial.upper(), canonical)):
        if f"{name}.pem" in present:
            data = (newcerts / f"{name}.pem").read_bytes()
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return None


def _record(issuer_id: str, serial: int, subject: str, not_before: str, not_after: str,
            der: bytes | None, revoked_at: datetime | None, reason: int | None
            ) -> dict[str, Any]:
    """An x509_imported event body."""
    return {"issuer": issuer_id, "serial": format(serial, "x"), "subject": subject,
            "not_before": not_before, "not_after": not_after, "der": der,
            "revoked_at": None if revoked_at is None else to_db_time(revoked_at),
            "reason": reason if revoked_at is not None else None,
            "imported_from": IMPORT_SOURCE}


def import_openssl_ca(repository: Repository, issuer_id: str, issuer: x509.Certificate,
                      ca_dir: Path, crl_path: Path | None = None, batch: int = DEFAULT_BATCH,
                      now: datetime | None = None,
                      progress: Callable[[int], None] | None = None) -> ImportSummary:
    """Import `ca_dir` (and the CRL) as issuer `issuer_id`'s history. ImportRefused before
    anything is stored when the index or the CRL is unusable; refused lines are counted in
    the summary and the rest is imported. `progress(index lines read)` after each batch."""
    now = now or datetime.now(timezone.utc)
    summary = ImportSummary(issuer_id)
    index_path = ca_dir / "index.txt"
    if not index_path.is_file():
        raise ImportRefused(f"{ca_dir} has no index.txt: not an `openssl ca` folder")
    crl_entries: dict[int, tuple[datetime, int | None]] = {}
    if crl_path is not None:
        summary.crl_number, crl_entries = read_crl_file(crl_path, issuer)
        summary.crl_entries = len(crl_entries)
    summary.next_serial = _read_hex_file(ca_dir / "serial")
    next_crl = _read_hex_file(ca_dir / "crlnumber")
    summary.next_crl_number = None if next_crl is None else int(next_crl, 16)

    pending: list[dict[str, Any]] = []
    for body in _records(summary, issuer_id, issuer, ca_dir, crl_entries, now):
        pending.append(body)
        if len(pending) >= batch:
            _store(repository, summary, pending)
            if progress is not None:
                progress(summary.index_lines)
    _store(repository, summary, pending)

    floor = max([n for n in (summary.crl_number,
                             None if summary.next_crl_number is None
                             else summary.next_crl_number - 1) if n is not None and n > 0],
                default=None)
    if floor is not None:
        summary.crl_number_floor_raised = repository.import_crl_number_floor(issuer_id, floor)
    return summary


def _store(repository: Repository, summary: ImportSummary, pending: list[dict[str, Any]]) -> None:
    if not pending:
        return
    counts = repository.import_history(pending)
    summary.certificates += counts["certificates"]
    summary.revocations += counts["revocations"]
    summary.already_present += counts["already_present"]
    summary.certificates_completed += counts["certificates_completed"]
    summary.revocations_added += counts["revocations_added"]
    summary.serial_collisions += counts["serial_collisions"]
    pending.clear()


def _records(summary: ImportSummary, issuer_id: str, issuer: x509.Certificate, ca_dir: Path,
             crl_entries: dict[int, tuple[datetime, int | None]], now: datetime
             ) -> Iterator[dict[str, Any]]:
    """The x509_imported bodies of index.txt, then of the CRL's serials it lacks; each one
    checked as the peer will check it."""
    newcerts = ca_dir / "newcerts"
    try:
        present = set(os.listdir(newcerts))
    except FileNotFoundError:
        present = set()
    with open(ca_dir / "index.txt", encoding="utf-8", errors="surrogateescape") as index:
        for number, line in enumerate(index, 1):
            if not line.strip():
                continue
            summary.index_lines += 1
            where = f"index.txt line {number}"
            try:
                entry = parse_index_line(line)
                der = _certificate_der(newcerts, present, entry.serial)
            except IndexLineError as exc:
                summary.refuse("malformed_line", where, str(exc))
                continue
            except (OSError, *X509_PARSE_ERRORS) as exc:
                summary.refuse("unreadable_certificate", where, f"newcerts/{entry.serial}.pem: {exc}")
                continue
            serial = int(entry.serial, 16)
            revoked_at, reason = entry.revoked_at, entry.reason
            listed = crl_entries.pop(serial, None)
            if revoked_at is None and listed is not None:
                revoked_at, reason = listed  # the CRL knows a revocation the index lacks
            if der is None:
                body = _record(issuer_id, serial, entry.subject, UNKNOWN_NOT_BEFORE,
                               to_db_time(entry.expiry), None, revoked_at, reason)
            else:
                certificate = x509.load_der_x509_certificate(der)
                body = _record(issuer_id, serial, certificate.subject.rfc4514_string(),
                               to_db_time(certificate.not_valid_before_utc),
                               to_db_time(certificate.not_valid_after_utc), der, revoked_at,
                               reason)
            if _accepted(summary, body, issuer, now, where):
                summary.records_with_der += der is not None
                summary.records_index_only += der is None
                yield body
    for serial, (revoked_at, reason) in sorted(crl_entries.items()):
        body = _record(issuer_id, serial, "", UNKNOWN_NOT_BEFORE, UNKNOWN_NOT_AFTER, None,
                       revoked_at, reason)
        if _accepted(summary, body, issuer, now, f"CRL entry {serial:X}"):
            summary.records_crl_only += 1
            yield body


def _accepted(summary: ImportSummary, body: dict[str, Any], issuer: x509.Certificate,
              now: datetime, where: str) -> bool:
    try:
        check_imported(body, issuer, now)
    except NotSignedByIssuer as exc:
        summary.refuse("not_signed_by_issuer", where, str(exc))
        return False
    except PeerEventRefused as exc:
        summary.refuse("invalid", where, str(exc))
        return False
    except (KeyError, TypeError, *X509_PARSE_ERRORS) as exc:
        summary.refuse("invalid", where, f"{type(exc).__name__}: {exc}")
        return False
    return True
