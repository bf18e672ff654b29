"""Write repository-v6.sqlite and repository-v6.json: a repository made by the code of schema
version 6 (before issue 13.4: every certificate's DER also in requests.result and twice in
its x509_issued event), for tests/unit/test_repository_migration.py.

Run it with THAT code, not with the current tree (which writes version 7):

    git archive 0fba9af | tar -x -C /tmp/v6 && cp tests/vectors/make_repository_v6.py /tmp/v6/
    cd /tmp/v6 && PYTHONPATH=. /path/to/.venv/bin/python make_repository_v6.py OUT_DIR

What the file holds, all through the Repository methods of that code:
  - node "a": three certificates issued as X509Signer does (lookup_or_reserve,
    complete_certificate with the result X509Signer stores: the DER in "certificate"), one of
    them revoked; a CRL; an OpenPGP signature; the openssl-ca import of two records (one with
    its DER, one without);
  - node "b"'s issuance and revocation, applied by "a" as Sync applies them
    (apply_peer_events, signed with b's event key, checked by a PeerValidator): kept with
    their signatures, published on unchanged.
The JSON holds what the test needs besides the file: the issuer's certificate (PEM), b's
public event key, the OpenPGP CA's public-key packet body (hex), and the content digest and
audit head the version-6 code computed.
Keys are random: a new run writes other (equally valid) files.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from core.openpgp import certify as openpgp
from core.repository import schema
from core.repository.store import Repository
from core.sync.event_signing import public_key_text, sign_event
from core.sync.peer_validation import PeerValidator

ISSUER = "class3"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vector CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=365)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], serial: int, days: int = 365) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"host{serial:x}.example.org")]))
            .issuer_name(ca[1].subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=days))
            .sign(ca[0], hashes.SHA256())).public_bytes(Encoding.DER)


def issue(repo: Repository, ca, serial: int) -> None:
    """As X509Signer: look up or reserve, then complete with the result it answers."""
    der = leaf(ca, serial)
    certificate = x509.load_der_x509_certificate(der)
    serial_hex, request_id = format(serial, "x"), f"req-{serial:x}"
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    assert repo.lookup_or_reserve(ISSUER, serial_hex, request_id, "server",
                                  certificate.subject.rfc4514_string(), not_before, not_after) is None
    result = {"certificate": der, "serial": serial_hex, "issuer": ISSUER, "profile": "server",
              "not_before": not_before.isoformat(), "not_after": not_after.isoformat()}
    repo.complete_certificate(ISSUER, serial_hex, der, request_id, "sign_x509",
                              f"digest-{serial_hex}", result)


def certified_user_key(ca_key: ec.EllipticCurvePrivateKey, uid: bytes) -> tuple[bytes, str]:
    """A user's transferable key with `uid` certified by `ca_key`, and its fingerprint."""
    user_body = openpgp.public_key_packet_body(ec.generate_private_key(ec.SECP256R1()).public_key(), 1_700_000_000)
    key = openpgp.split_transferable_key(openpgp.serialise_packets(
        [openpgp.Packet(openpgp.TAG_PUBLIC_KEY, user_body), openpgp.Packet(openpgp.TAG_USER_ID, uid)]))
    ca_body = openpgp.public_key_packet_body(ca_key.public_key(), 1_700_000_000)
    prepared = openpgp.prepare_certification(ca_body, openpgp.PUBKEY_ECDSA, user_body, uid, 0x10,
                                             int(NOW.timestamp()), 366 * 86400, "sha256", None,
                                             openpgp.fingerprint_v4(ca_body))
    signature = ca_key.sign(prepared.hashed_data, ec.ECDSA(hashes.SHA256()))
    signed = openpgp.insert_certifications(key, {uid: openpgp.assemble_signature_packet(prepared, signature)})
    return signed, key.fingerprint.hex().upper()


def main(out: Path) -> None:
    ca = make_ca()
    key_b = Ed25519PrivateKey.generate()
    path = out / "repository-v6.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    scratch = out / "node-b.tmp.sqlite"
    a, b = Repository(str(path), "a"), Repository(str(scratch), "b")
    assert a.schema_version() == 6, a.schema_version()
    for serial in (0x1001, 0x1002, 0x1003):
        issue(a, ca, serial)
    a.revoke(ISSUER, "1002", 1, NOW, "rev-1002")
    a.store_crl(ISSUER, 7, b"CRL-7", NOW, NOW + timedelta(days=7), "digest-7")
    pgp_ca = ec.generate_private_key(ec.SECP256R1())
    signed, fingerprint = certified_user_key(pgp_ca, b"Alice <alice@example.org>")
    a.store_openpgp_signature("pgp-1", fingerprint, signed, ["Alice <alice@example.org>"],
                              NOW + timedelta(days=366), "sign_openpgp", "digest-pgp",
                              {"key": openpgp.armor(signed), "fingerprint": fingerprint})
    imported = leaf(ca, 0x2001)
    a.import_history([
        {"issuer": ISSUER, "serial": "2001", "subject": "CN=host2001.example.org",
         "not_before": NOW.strftime(schema.DB_TIME_FORMAT),
         "not_after": (NOW + timedelta(days=365)).strftime(schema.DB_TIME_FORMAT),
         "der": imported, "revoked_at": None, "reason": None, "imported_from": "openssl-ca"},
        {"issuer": ISSUER, "serial": "2002", "subject": "CN=old.example.org",
         "not_before": schema.UNKNOWN_NOT_BEFORE, "not_after": "2030-01-01T00:00:00Z",
         "der": None, "revoked_at": "2024-01-01T00:00:00Z", "reason": 1,
         "imported_from": "openssl-ca"}])
    issue(b, ca, 0x3001)
    b.revoke(ISSUER, "3001", 4, NOW, "rev-3001")
    validator = PeerValidator({"b": key_b.public_key()}, {ISSUER: ca[1]}, None,
                              clock=lambda: NOW + timedelta(minutes=1))
    events = [event | {"signature": sign_event(key_b, event)} for event in b.events_after(0, 100)]
    outcomes, waiting = a.apply_peer_events(events, validator)
    assert outcomes == ["applied", "applied"] and waiting is None, (outcomes, waiting)
    assert a.consistency_check() == [] and a.verify_audit().ok
    facts = {"schema_version": a.schema_version(), "issuer": ISSUER,
             "issuer_certificate": ca[1].public_bytes(Encoding.PEM).decode(),
             "event_keys": {"b": public_key_text(key_b)},
             "openpgp_ca_key_body": openpgp.public_key_packet_body(pgp_ca.public_key(), 1_700_000_000).hex(),
             "content_digest": a.content_digest(), "audit_head": a.audit_head(),
             "events": a.last_event_seq(), "now": NOW.isoformat()}
    a.close()
    b.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(path) as db:  # one self-contained file: no -wal beside it
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    (out / "repository-v6.json").write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
