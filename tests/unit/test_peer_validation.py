"""Peer events checked as if this signer had made them (core/sync/peer_validation.py, applied
through Repository.apply_peer_event): each forged kind is quarantined, changes nothing,
and does not hold back the good events behind it. Real certificates and OpenPGP
certifications, made in memory; events go through the same msgpack round trip as on the
wire."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from core.openpgp import certify as openpgp
from core.crl.build import crl_number_for
from core.sync.event_signing import sign_event
from core.sync.peer_validation import PeerValidator
from core.repository.store import Repository

ISSUER = "class3"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
PGP_CREATED = 1_700_000_000


def ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(1)
                   .not_valid_before(NOW - timedelta(days=10)).not_valid_after(NOW + timedelta(days=900))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    return key, certificate


OUR_CA, ROGUE_CA = ca("Our CA"), ca("Rogue CA")
OUR_PGP, ROGUE_PGP = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
NODE_KEYS = {"a": Ed25519PrivateKey.generate(), "b": Ed25519PrivateKey.generate()}
ROGUE_NODE_KEY = Ed25519PrivateKey.generate()


def leaf(serial: int, signer=OUR_CA) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{serial:x}.example")]))
            .issuer_name(signer[1].subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=365))
            .sign(signer[0], hashes.SHA256())).public_bytes(Encoding.DER)


def issue(repo: Repository, serial: int, signer=OUR_CA) -> None:
    der = leaf(serial, signer)
    certificate = x509.load_der_x509_certificate(der)
    serial_hex, request_id = format(serial, "x"), f"req-{serial:x}"
    repo.reserve_serial(ISSUER, serial_hex, request_id, "server", certificate.subject.rfc4514_string(),
                        certificate.not_valid_before_utc, certificate.not_valid_after_utc)
    repo.complete_certificate(ISSUER, serial_hex, der, request_id, "sign_x509", "digest",
                              {"certificate": der, "serial": serial_hex, "issuer": ISSUER})


def pgp_body(key: ec.EllipticCurvePrivateKey) -> bytes:
    return openpgp.public_key_packet_body(key.public_key(), PGP_CREATED)


def certified_user_key(ca_key: ec.EllipticCurvePrivateKey, uid: bytes) -> tuple[bytes, str]:
    """A user's transferable key with `uid` certified by `ca_key`, and its fingerprint."""
    user_body = pgp_body(ec.generate_private_key(ec.SECP256R1()))
    key = openpgp.split_transferable_key(openpgp.serialise_packets(
        [openpgp.Packet(openpgp.TAG_PUBLIC_KEY, user_body), openpgp.Packet(openpgp.TAG_USER_ID, uid)]))
    ca_body = pgp_body(ca_key)
    prepared = openpgp.prepare_certification(ca_body, openpgp.PUBKEY_ECDSA, user_body, uid, 0x10,
                                             int(NOW.timestamp()), 366 * 86400, "sha256", None,
                                             openpgp.fingerprint_v4(ca_body))
    signature = ca_key.sign(prepared.hashed_data, ec.ECDSA(hashes.SHA256()))
    signed = openpgp.insert_certifications(key, {uid: openpgp.assemble_signature_packet(prepared, signature)})
    return signed, key.fingerprint.hex().upper()


def sign_pgp(repo: Repository, request_id: str, ca_key=OUR_PGP) -> None:
    signed, fingerprint = certified_user_key(ca_key, b"Alice <alice@example.org>")
    repo.store_openpgp_signature(request_id, fingerprint, signed, ["Alice <alice@example.org>"],
                                 NOW + timedelta(days=366), "sign_openpgp", "d",
                                 {"key": openpgp.armor(signed), "fingerprint": fingerprint})


def wire(event: dict, key: Ed25519PrivateKey | None = NODE_KEYS["a"]) -> dict:
    """The event as the peer's bridge hands it over: signed by `key` (None: unsigned),
    through the bridge's msgpack round trip."""
    event = {k: v for k, v in event.items() if k != "signature"}
    if key is not None:
        event["signature"] = sign_event(key, event)
    return msgpack.unpackb(msgpack.packb(event, datetime=False, default=str), raw=False,
                           strict_map_key=False)


@pytest.fixture
def repos(tmp_path: Path) -> Iterator[tuple[Repository, Repository]]:
    a, b = Repository(str(tmp_path / "a.sqlite"), "a"), Repository(str(tmp_path / "b.sqlite"), "b")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def validator() -> PeerValidator:
    return PeerValidator({node: key.public_key() for node, key in NODE_KEYS.items()},
                         {ISSUER: OUR_CA[1]}, pgp_body(OUR_PGP))


def last_event(repo: Repository) -> dict:
    return repo.events_after(repo.last_event_seq() - 1, 1)[0]


def with_body(event: dict, **changes) -> dict:
    event = copy.deepcopy(event)
    event["body"].update(changes)
    return event


# Each forgery: (name, how to make it from a's repository, words of the refusal).
Forger = Callable[[Repository], dict]


def _unsigned(a: Repository) -> dict:
    issue(a, 0x501)
    return wire(last_event(a), key=None)


def _wrong_key(a: Repository) -> dict:
    issue(a, 0x502)
    return wire(last_event(a), key=ROGUE_NODE_KEY)


def _foreign_certificate(a: Repository) -> dict:
    issue(a, 0x503, signer=ROGUE_CA)
    return wire(last_event(a))


def _backdated_key_compromise_forged(a: Repository) -> dict:
    a.revoke(ISSUER, "100", 1, datetime(2001, 1, 1, tzinfo=timezone.utc), "rev-forged")
    return wire(last_event(a), key=ROGUE_NODE_KEY)


def _revoked_in_1900(a: Repository) -> dict:
    a.revoke(ISSUER, "100", 1, NOW, "rev-1900")
    return wire(with_body(last_event(a), revoked_at="1900-01-01T00:00:00Z"))


def _revoked_remove_from_crl(a: Repository) -> dict:
    a.revoke(ISSUER, "100", 1, NOW, "rev-remove")
    return wire(with_body(last_event(a), reason=8))


def _revoked_in_the_future(a: Repository) -> dict:
    a.revoke(ISSUER, "100", 1, NOW, "rev-future")
    return wire(with_body(last_event(a), revoked_at=(NOW + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")))


def _crl_floor_at_the_end(a: Repository) -> dict:
    a.store_crl(ISSUER, 5, b"CRL", NOW, NOW + timedelta(days=7), "d")
    return wire(with_body(last_event(a), number=2**63 - 1))


def _openpgp_without_our_certification(a: Repository) -> dict:
    sign_pgp(a, "pgp-rogue", ca_key=ROGUE_PGP)
    return wire(last_event(a))


def _request_record_not_matching(a: Repository) -> dict:
    issue(a, 0x504)
    event = last_event(a)
    event["body"]["request"]["result"]["serial"] = "100"  # another certificate's answer
    return wire(event)


def _request_record_with_another_der(a: Repository) -> dict:
    issue(a, 0x507)
    event = last_event(a)
    event["body"]["request"]["result"]["certificate"] = leaf(0x507)  # not the body's der
    return wire(event)


def _request_record_without_certificate(a: Repository) -> dict:
    issue(a, 0x508)
    event = last_event(a)
    del event["body"]["request"]["result"]["certificate"]  # a replay would lack it
    return wire(event)


def _subject_not_matching(a: Repository) -> dict:
    issue(a, 0x505)
    return wire(with_body(last_event(a), subject="CN=www.bank.example"))


def _certificate_of_unknown_version(a: Repository) -> dict:
    issue(a, 0x506)
    event = last_event(a)
    version_v3 = b"\xa0\x03\x02\x01\x02"  # tbsCertificate's [0] EXPLICIT INTEGER 2
    assert version_v3 in event["body"]["der"]
    return wire(with_body(event, der=event["body"]["der"].replace(version_v3, b"\xa0\x03\x02\x01\x07", 1)))


FORGERIES: list[tuple[str, Forger, str]] = [
    ("unsigned", _unsigned, "carries no signature"),
    ("signed by the wrong key", _wrong_key, "does not verify"),
    ("certificate not signed by our issuer", _foreign_certificate, "not signed by issuer"),
    ("backdated keyCompromise revocation, forged", _backdated_key_compromise_forged, "does not verify"),
    ("revocation dated 1900", _revoked_in_1900, "outside 2000-01-01"),
    ("revocation dated ahead", _revoked_in_the_future, "outside 2000-01-01"),
    ("revocation with reason removeFromCRL", _revoked_remove_from_crl, "removeFromCRL"),
    ("CRL number floor 2^63-1", _crl_floor_at_the_end, "CRL number"),
    ("OpenPGP key without our certification", _openpgp_without_our_certification,
     "no certification by our OpenPGP CA"),
    ("request record not matching", _request_record_not_matching, "request record"),
    ("request record with another DER", _request_record_with_another_der, "request record"),
    ("request record without its certificate", _request_record_without_certificate, "request record"),
    ("subject not matching", _subject_not_matching, "subject differs"),
    ("certificate of an unknown X.509 version", _certificate_of_unknown_version, "InvalidVersion"),
]


@pytest.mark.parametrize("forge, reason", [(f, r) for _, f, r in FORGERIES],
                         ids=[name for name, _, _ in FORGERIES])
def test_a_forged_event_is_quarantined_changes_nothing_and_holds_back_nothing(
        repos, validator, forge, reason):
    a, b = repos
    issue(a, 0x100)  # a real certificate the forgeries revoke
    for event in a.events_after(0, 100):
        assert b.apply_peer_event(wire(event), validator) == "applied"
    before = (b.content_digest(), b.last_event_seq(), b.previous_crl_number(ISSUER))
    forged = forge(a)
    assert b.apply_peer_event(forged, validator) == "quarantined"
    assert (b.content_digest(), b.last_event_seq(), b.previous_crl_number(ISSUER)) == before
    (parked,) = b.quarantined_events()
    assert reason in parked["reason"] and parked["event_id"] == forged["event_id"]
    # Delivered again (a crash before the ack): parked once, still nothing applied.
    assert b.apply_peer_event(forged, validator) == "quarantined" and b.quarantine_count() == 1
    # The CRL still gets a clock-derived number above every floor, and still stores.
    number = crl_number_for(NOW, b.previous_crl_number(ISSUER))
    b.store_crl(ISSUER, number, b"CRL", NOW, NOW + timedelta(days=7), "d")
    # The good events behind it are applied.
    issue(a, 0x600)
    assert b.apply_peer_event(wire(last_event(a)), validator) == "applied"
    assert b.get_certificate(ISSUER, "600")["status"] == "issued"


def test_real_events_of_every_kind_pass_and_converge(repos, validator):
    """The checks refuse only forgeries: every kind a signer really writes is applied,
    also when relayed (b's copy of a's event, published by b, read by a third node)."""
    a, b = repos
    issue(a, 0x100)
    a.revoke(ISSUER, "100", 1, datetime(2001, 1, 1, tzinfo=timezone.utc), "rev-1")  # dated back: allowed
    a.store_crl(ISSUER, crl_number_for(NOW, None), b"CRL", NOW, NOW + timedelta(days=7), "d")
    sign_pgp(a, "pgp-1")
    outcomes = [b.apply_peer_event(wire(event), validator) for event in a.events_after(0, 100)]
    assert outcomes == ["applied"] * 4 and b.quarantine_count() == 0
    assert b.content_digest() == a.content_digest()
    # Relayed: b publishes a's events with the signature they came with.
    relayed = [msgpack.unpackb(msgpack.packb(e, datetime=False, default=str), raw=False)
               for e in b.events_after(0, 100)]
    assert all(e["signature"] for e in relayed)
    c = Repository(str(Path(a.path).parent / "c.sqlite"), "c")
    try:
        assert [c.apply_peer_event(e, validator) for e in relayed] == ["applied"] * 4
        assert c.content_digest() == a.content_digest()
    finally:
        c.close()


def der_once_form(event: dict) -> dict:
    """The x509_issued form a later release may publish once no peer runs a release before
    repository migration 7: the DER once, in `der`, the request record's certificate nil."""
    event = copy.deepcopy(event)
    if event["type"] == "x509_issued":
        assert event["body"]["request"]["result"]["certificate"] == event["body"]["der"]
        event["body"]["request"]["result"]["certificate"] = None
    return event


def test_this_release_publishes_the_previous_releases_form_which_applies_and_relays_unchanged(
        repos, validator, tmp_path):
    """A peer still on the release before migration 7 checks that the request record holds
    the DER: this release's x509_issued events still carry it there (and in `der`), so two
    signers can be upgraded one at a time. Applied here, stored once; the request record
    answers with the DER; relayed with its signature, it reads back byte for byte and
    verifies on a third signer."""
    a, b = repos
    issue(a, 0x100)
    a.revoke(ISSUER, "100", 1, NOW, "rev-1")
    old = [wire(event) for event in a.events_after(0, 100)]
    der = old[0]["body"]["der"]
    assert old[0]["body"]["request"]["result"]["certificate"] == der
    assert [b.apply_peer_event(event, validator) for event in old] == ["applied"] * 2
    assert b.lookup_request("req-100")["result"]["certificate"] == der
    assert b.lookup_request("req-100") == a.lookup_request("req-100")
    assert b.content_digest() == a.content_digest()
    with sqlite3.connect(b.path) as raw:
        blobs = [blob for (blob,) in raw.execute("SELECT body FROM events UNION ALL SELECT result FROM requests")]
    raw.close()
    assert not any(der in blob for blob in blobs)  # kept once, in certificates
    relayed = b.events_after(0, 100)
    assert [(e["body"], e["signature"]) for e in relayed] == [(e["body"], e["signature"]) for e in old]
    c = Repository(str(tmp_path / "c.sqlite"), "c")
    try:
        on_wire = [msgpack.unpackb(msgpack.packb(e, datetime=False, default=str), raw=False) for e in relayed]
        assert [c.apply_peer_event(e, validator) for e in on_wire] == ["applied"] * 2
        assert c.content_digest() == a.content_digest() and c.quarantine_count() == 0
    finally:
        c.close()


def test_the_der_once_form_a_later_release_may_publish_applies(repos, validator):
    a, b = repos
    issue(a, 0x100)
    event = wire(der_once_form(last_event(a)))
    body = event["body"]
    assert body["request"]["result"]["certificate"] is None and isinstance(body["der"], bytes)
    assert b.apply_peer_event(event, validator) == "applied"
    assert b.lookup_request("req-100")["result"]["certificate"] == body["der"]
    assert b.events_after(0, 1)[0]["body"] == body


def test_a_revocation_before_its_certificate_still_waits(repos, validator):
    """Not a forgery: the issuance may come later (a nak reordered them). It is retried,
    not quarantined."""
    a, b = repos
    issue(a, 0x100)
    a.revoke(ISSUER, "100", 1, NOW, "rev-1")
    issuance, revocation = (wire(e) for e in a.events_after(0, 100))
    from core.repository.store import UnknownCertificate
    with pytest.raises(UnknownCertificate):
        b.apply_peer_event(revocation, validator)
    assert b.quarantine_count() == 0
    assert [b.apply_peer_event(e, validator) for e in (issuance, revocation)] == ["applied", "applied"]
