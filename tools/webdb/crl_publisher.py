"""Keeps each issuer's published CRL current: publish_dir/<file> (DER) and <file>.pem.

The exchange with the signer (tools/crl_fetch.fetch_crl: diff transfer, sha256, signature,
number above the held one) runs on the link; the files are written outside it, so a full
disk is a publishing error, not "signer away".

A CRL that forgets a revocation makes a revoked certificate look valid again (the takeover
from the old signer, docs/MIGRATION.md: a signer without the old history would do exactly
that). So a new CRL replaces the published one only if it still lists every serial the
published one lists, except serials whose certificate expired more than `grace` ago (the
signer drops those after its crl.grace_days). The expiry comes from `expiry_of(issuer,
serial)`, a source other than the signer (e.g. the WebDB rows' `expire`); without one, or
when it does not know the serial, the drop is refused: the old files stay and the status
shows why.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tools.client.crl_fetch import crl_number, fetch_crl, read_crl
from tools.client.files import write_atomically
from tools.webdb.config import CrlWorkConfig
from tools.webdb.link import SignerAway, SignerLink
from tools.webdb.work import classify, now_text

log = logging.getLogger("signer-client")

# The signer's default crl.grace_days (2 x the 7-day lifetime, docs/CRLS.md).
DEFAULT_GRACE = timedelta(days=14)
MAX_SERIALS_NAMED = 5  # in the refusal; the count covers all

ExpiryLookup = Callable[[str, int], datetime | None]  # (issuer, serial) -> notAfter or None


class DroppedRevocation(ValueError):
    """The signer's new CRL no longer lists a serial the published one lists, and that
    certificate is not known to be past the grace period."""


def dropped_revocations(issuer: str, held: bytes, new: bytes, expiry_of: ExpiryLookup | None,
                        grace: timedelta, now: datetime) -> list[int]:
    """Serials the held CRL lists, the new one does not, and that may not go (no expiry
    known, or expired less than `grace` before `now`), in ascending order."""
    kept = {entry.serial_number for entry in x509.load_der_x509_crl(new)}
    refused = []
    for serial in sorted(entry.serial_number for entry in x509.load_der_x509_crl(held)):
        if serial in kept:
            continue
        expiry = None if expiry_of is None else expiry_of(issuer, serial)
        if expiry is None or expiry > now - grace:
            refused.append(serial)
    return refused


class CrlPublisher:
    def __init__(self, config: CrlWorkConfig, expiry_of: ExpiryLookup | None = None,
                 grace: timedelta = DEFAULT_GRACE) -> None:
        self.config = config
        self.expiry_of, self.grace = expiry_of, grace
        self.published: dict[str, dict[str, Any]] = {}  # per issuer, for the status file
        self.errors: dict[str, str] = {}

    @property
    def issuers(self) -> set[str]:
        return {publication.issuer for publication in self.config.issuers}

    def publish_all(self, link: SignerLink) -> list[str]:
        """Fetch and publish every configured CRL; returns the error lines (empty: all fine)."""
        if self.config.publish_dir is None:  # CRLs are not fetched (the daemon does not call this)
            return []
        publish_dir = Path(self.config.publish_dir)
        errors = []
        for publication in self.config.issuers:
            try:
                self.publish(link, publication.issuer, publish_dir / publication.file)
                self.errors.pop(publication.issuer, None)
            except SignerAway:
                raise
            except (ValueError, OSError) as exc:  # not verified, or not writable: old files stay
                line = f"CRL {publication.issuer} not published: {exc}"
                if self.errors.get(publication.issuer) != line:
                    log.error("%s", line)
                self.errors[publication.issuer] = line
                errors.append(line)
        return errors

    def publish(self, link: SignerLink, issuer: str, der_path: Path) -> None:
        cert = link.issuer_cert(issuer)
        held = read_crl(der_path)
        fetched = link.call(lambda client: fetch_crl(client, issuer, held, cert))
        if fetched.error is not None:
            code = fetched.error.error.get("code", "") if fetched.error.error else ""
            if classify(code) == "signer":
                raise SignerAway(f"the signer cannot give CRLs now ({fetched.error.error})")
            raise ValueError(f"refused: {fetched.error.error}")
        if fetched.der is not None and held is not None:
            refused = dropped_revocations(issuer, held, fetched.der, self.expiry_of, self.grace,
                                          datetime.now(timezone.utc))
            if refused:
                named = ", ".join(format(serial, "X") for serial in refused[:MAX_SERIALS_NAMED])
                raise DroppedRevocation(
                    f"the signer's CRL number {crl_number(fetched.der)} no longer lists"
                    f" {len(refused)} serial(s) the published CRL number {crl_number(held)}"
                    f" lists ({named}{', ...' if len(refused) > MAX_SERIALS_NAMED else ''}),"
                    f" not known to be expired more than {self.grace.days} days: not replaced")
        if fetched.der is not None:
            write_atomically(der_path, fetched.der)
        der = der_path.read_bytes()
        pem_path = der_path.with_name(der_path.name + ".pem")
        # The PEM copy follows the DER file, also when an earlier round died between the two.
        if read_crl(pem_path) != der:
            write_atomically(pem_path, x509.load_der_x509_crl(der).public_bytes(Encoding.PEM))
        if fetched.der is not None:
            log.info("CRL %s number %s published (%s, %d bytes on the link)", issuer,
                     fetched.summary["number"], fetched.summary["status"], fetched.summary["bytes_moved"])
        self.published[issuer] = {**fetched.summary, "number": crl_number(der), "at": now_text(),
                                  "file": str(der_path)}
