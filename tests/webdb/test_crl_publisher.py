"""The WebDB daemon's CRL publisher never replaces a published CRL by one that forgets a
revocation (tools/webdb/crl_publisher.py): a serial the published CRL lists may leave only
when its certificate is known to have expired more than the grace period ago; otherwise
the old files stay and the error is what the status shows."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tools.client.library import Response
from tools.webdb.config import CrlPublication, CrlWorkConfig
from tools.webdb.crl_publisher import CrlPublisher

NOW = datetime.now(timezone.utc)
KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CAcert Class 3 (old)")])
CA = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(KEY.public_key())
      .serial_number(1).not_valid_before(NOW - timedelta(days=1))
      .not_valid_after(NOW + timedelta(days=3650)).sign(KEY, hashes.SHA256()))


def crl(number: int, serials: list[int]) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(NAME)
               .last_update(NOW - timedelta(minutes=1)).next_update(NOW + timedelta(days=7))
               .add_extension(x509.CRLNumber(number), critical=False))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(NOW - timedelta(days=30)).build())
    return builder.sign(KEY, hashes.SHA256()).public_bytes(Encoding.DER)


class FakeClient:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def call(self, command: str, body: dict) -> Response:
        assert command == "fetch_crl"
        number = x509.load_der_x509_crl(self.der).extensions.get_extension_for_class(
            x509.CRLNumber).value.crl_number
        return Response(1, {"status": "full", "crl": self.der, "number": number,
                            "sha256": hashlib.sha256(self.der).hexdigest(),
                            "this_update": NOW.isoformat(), "next_update": NOW.isoformat()})


class FakeLink:
    """The daemon's link to a signer whose next CRL is `der`."""

    def __init__(self, der: bytes) -> None:
        self.client = FakeClient(der)

    def issuer_cert(self, issuer: str) -> x509.Certificate:
        return CA

    def call(self, fn):
        return fn(self.client)


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """The WebDB's publish folder holding the old CA's CRL number 0x2001: serials 10, 11, 12."""
    (tmp_path / "class3-revoke.crl").write_bytes(crl(0x2001, [10, 11, 12]))
    return tmp_path


def publisher(folder: Path, expiry_of=None) -> CrlPublisher:
    config = CrlWorkConfig(publish_dir=str(folder), issuers=[CrlPublication("class3", "class3-revoke.crl")])
    return CrlPublisher(config, expiry_of=expiry_of, grace=timedelta(days=14))


def test_a_crl_that_forgets_a_revocation_is_not_published(published):
    old = (published / "class3-revoke.crl").read_bytes()
    daemon = publisher(published)
    errors = daemon.publish_all(FakeLink(crl(1_700_000_000_000_000_000, [10, 12])))
    assert len(errors) == 1 and "no longer lists 1 serial(s)" in errors[0] and "(B)" in errors[0]
    assert (published / "class3-revoke.crl").read_bytes() == old
    assert daemon.errors["class3"] == errors[0]  # what the status file shows (crl_errors)


@pytest.mark.parametrize("expired_days_ago, replaced", [(30, True), (3, False), (None, False)])
def test_a_serial_leaves_only_past_the_grace_period(published, expired_days_ago, replaced):
    expiry = {11: NOW - timedelta(days=expired_days_ago)} if expired_days_ago else {}
    new = crl(1_700_000_000_000_000_000, [10, 12])
    daemon = publisher(published, expiry_of=lambda issuer, serial: expiry.get(serial))
    errors = daemon.publish_all(FakeLink(new))
    assert ((published / "class3-revoke.crl").read_bytes() == new) is replaced
    assert (errors == []) is replaced


def test_a_crl_keeping_every_revocation_is_published(published):
    new = crl(1_700_000_000_000_000_000, [10, 11, 12, 13])
    daemon = publisher(published)
    assert daemon.publish_all(FakeLink(new)) == []
    assert (published / "class3-revoke.crl").read_bytes() == new
    assert x509.load_pem_x509_crl((published / "class3-revoke.crl.pem").read_bytes()).public_bytes(Encoding.DER) == new
