"""Bytes stored per issued certificate (issue 13.4): N certificates issued through the
Repository methods the signing path uses (lookup_or_reserve, complete_certificate, with the
result X509Signer stores) into a fresh repository, then

  - the file: page_count * page_size after a checkpoint, divided by N;
  - the rows: the summed lengths of certificates.der, requests.result and events.body,
    divided by N (the DER's own length printed beside them).

Real certificates with the end-entity extensions of a server profile (RSA-2048 or P-256
keys, signed by an in-memory issuer of the same type).

    .venv/bin/python bench/bench_storage.py [--count 1000] [--key rsa|p256]
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import (AuthorityInformationAccessOID, ExtendedKeyUsageOID,  # noqa: E402
                                    NameOID)

from core.repository.store import Repository  # noqa: E402

NOW = datetime.now(timezone.utc).replace(microsecond=0)
ISSUER = "class3"
OCSP_URL = "http://ocsp.cacert.org/"
CRL_URL = "http://crl.cacert.org/class3-revoke.crl"


def new_key(kind: str):
    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


def issue_all(repo: Repository, count: int, kind: str) -> int:
    """Issue `count` certificates as the signing path does; the DER bytes written."""
    ca_key, leaf_key = new_key(kind), new_key(kind)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    der_bytes = 0
    for number in range(1, count + 1):
        serial = 0x4000_0000_0000_0000_0000_0000_0000 + number
        serial_hex = format(serial, "x")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"host{number}.example.org")])
        not_before, not_after = NOW, NOW + timedelta(days=730)
        request_id = f"bench-{number}"
        assert repo.lookup_or_reserve(ISSUER, serial_hex, request_id, "server", subject.rfc4514_string(),
                                      not_before, not_after) is None
        der = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
               .public_key(leaf_key.public_key()).serial_number(serial)
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"host{number}.example.org")]), False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
               .add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False), True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), False)
               .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                   AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(OCSP_URL))]), False)
               .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                   [x509.UniformResourceIdentifier(CRL_URL)], None, None, None)]), False)
               .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
                   x509.ObjectIdentifier("1.3.6.1.4.1.18506.4.4"), None)]), False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
               .sign(ca_key, hashes.SHA256())).public_bytes(Encoding.DER)
        result = {"certificate": der, "serial": serial_hex, "issuer": ISSUER, "profile": "server",
                  "not_before": not_before.isoformat(), "not_after": not_after.isoformat()}
        repo.complete_certificate(ISSUER, serial_hex, der, request_id, "sign_x509", f"digest-{number}", result)
        der_bytes += len(der)
    return der_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--key", choices=("rsa", "p256"), default="rsa")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        path = Path(tmp) / "repository.sqlite"
        repo = Repository(str(path), "bench-a")
        empty = path.stat().st_size
        der_bytes = issue_all(repo, args.count, args.key)
        repo.close()
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
            columns = {name: db.execute(query).fetchone()[0] or 0 for name, query in (
                ("certificates.der", "SELECT SUM(length(der)) FROM certificates"),
                ("requests.result", "SELECT SUM(length(result)) FROM requests"),
                ("events.body", "SELECT SUM(length(body)) FROM events"))}
        db.close()
    n = args.count
    print(f"{n:,} {args.key} certificates, DER {der_bytes / n:,.0f} bytes each")
    print(f"file: {(pages - empty) / n:,.0f} bytes per certificate ({pages:,} bytes in all)")
    print("rows: " + ", ".join(f"{name} {size / n:,.0f}" for name, size in columns.items())
          + f"; together {sum(columns.values()) / n:,.0f} bytes per certificate")


if __name__ == "__main__":
    main()
