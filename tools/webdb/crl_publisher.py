"""Keeps each issuer's published CRL current: publish_dir/<file> (DER) and <file>.pem.

The exchange with the signer (tools/crl_fetch.fetch_crl: diff transfer, sha256, signature,
number above the held one) runs on the link; the files are written outside it, so a full
disk is a publishing error, not "signer away".
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tools.crl_fetch import crl_number, fetch_crl, read_crl
from tools.files import write_atomically
from tools.webdb.config import CrlWorkConfig
from tools.webdb.link import SignerAway, SignerLink
from tools.webdb.work import classify, now_text

log = logging.getLogger("signer-client")


class CrlPublisher:
    def __init__(self, config: CrlWorkConfig) -> None:
        self.config = config
        self.published: dict[str, dict[str, Any]] = {}  # per issuer, for the status file
        self.errors: dict[str, str] = {}

    @property
    def issuers(self) -> set[str]:
        return {publication.issuer for publication in self.config.issuers}

    def publish_all(self, link: SignerLink) -> list[str]:
        """Fetch and publish every configured CRL; returns the error lines (empty: all fine)."""
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
        fetched = link.call(lambda client: fetch_crl(client, issuer, read_crl(der_path), cert))
        if fetched.error is not None:
            code = fetched.error.error.get("code", "") if fetched.error.error else ""
            if classify(code) == "signer":
                raise SignerAway(f"the signer cannot give CRLs now ({fetched.error.error})")
            raise ValueError(f"refused: {fetched.error.error}")
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
