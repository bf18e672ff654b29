"""CRLs built the signer's way (prepare, sign the TBS elsewhere, assemble), checked with
cryptography, OpenSSL and pkilint; the issuer and CSR helpers come from test_x509build."""
from __future__ import annotations

import datetime
import secrets
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, strategies as st

from core.crl import build as crlmod
from core.x509.certificate import SignatureMismatch
from tests.unit.test_x509build import (NOW, PROFILES, Issuer, issue, issuers, openssl,  # noqa: F401
                                  openssl_verify, sign_like_hsm, csrs)

WEEK = datetime.timedelta(days=7)


def make_crl(issuer: Issuer, revoked, number: int = 1, idp_url: str | None = None,
             hash_name: str = "sha256") -> bytes:
    prepared = crlmod.build_tbs_crl(issuer.cert, issuer.key_info, revoked, number, NOW,
                                    NOW + WEEK, hash_name, idp_url)
    crl_der = crlmod.assemble_crl(prepared, sign_like_hsm(issuer, prepared.tbs_der,
                                                          prepared.mechanism))
    crlmod.verify_crl(crl_der, issuer.cert)
    return crl_der


def write_pem(path: Path, crl_der: bytes) -> Path:
    path.write_bytes(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("issuer_kind", ["rsa", "ec"])
def test_crl_with_reasons_verifies_and_revokes(issuer_kind, issuers, csrs, tmp_path):
    issuer, profile = issuers[issuer_kind], PROFILES["client"]
    revoked_der = issue(profile, issuer, csrs("p256"))
    kept_der = issue(profile, issuer, csrs("rsa2048"))
    revoked_serial = x509.load_der_x509_certificate(revoked_der).serial_number
    revoked = [(revoked_serial, NOW - datetime.timedelta(hours=1), crlmod.parse_reason("keyCompromise")),
               (12345, NOW - datetime.timedelta(days=2), 0),
               (67890, NOW - datetime.timedelta(days=3), None)]
    # The IDP must equal the certificates' CRL distribution point, or OpenSSL will not use it.
    crl_der = make_crl(issuer, revoked, number=42,
                       idp_url=profile.urls_for("root").crl_distribution_point)

    crl_path = write_pem(tmp_path / "crl.pem", crl_der)
    checked = openssl("crl", "-in", str(crl_path), "-noout", "-verify", "-CAfile", str(issuer.pem_path))
    assert checked.returncode == 0 and b"verify OK" in checked.stderr, checked.stderr.decode()
    refused = openssl_verify(issuer, revoked_der, tmp_path, "-crl_check", "-CRLfile", str(crl_path))
    assert refused.returncode != 0 and b"certificate revoked" in refused.stdout + refused.stderr
    accepted = openssl_verify(issuer, kept_der, tmp_path, "-crl_check", "-CRLfile", str(crl_path))
    assert accepted.returncode == 0, accepted.stdout.decode() + accepted.stderr.decode()

    parsed = x509.load_der_x509_crl(crl_der)
    assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    assert parsed.extensions.get_extension_for_class(x509.IssuingDistributionPoint).critical
    reasons = {entry.serial_number: [e.value.reason for e in entry.extensions] for entry in parsed}
    # Unspecified (0) and unknown (None) carry no reason extension (RFC 5280 5.3.1).
    assert reasons == {revoked_serial: [x509.ReasonFlags.key_compromise], 12345: [], 67890: []}


def test_crl_passes_pkilint(issuers):
    from pkilint import loader, pkix
    from pkilint.pkix import crl, extension, name
    validator = crl.create_pkix_crl_validator_container(
        [pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
         pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)],
        [crl.create_issuer_validator_container([]), crl.create_validity_validator_container([]),
         crl.create_extensions_validator_container([])])
    for issuer in issuers.values():
        reasons = [None, *crlmod.REASON_NAMES]
        reasons.remove(crlmod.REASON_CODES["removeFromCRL"])
        revoked = [(1000 + i, NOW, reason) for i, reason in enumerate(reasons)]
        crl_der = make_crl(issuer, revoked, idp_url="http://crl.example.org/test.crl")
        document = loader.RFC5280CertificateListDocumentLoader().load_der_document(crl_der, "crl")
        errors = [(d.finding.code, d.message) for result in validator.validate(document.root)
                  for d in result.finding_descriptions if d.finding.severity.name in ("ERROR", "FATAL")]
        assert errors == []


def test_empty_crl_without_idp(issuers):
    parsed = x509.load_der_x509_crl(make_crl(issuers["ec"], [], hash_name="sha384"))
    assert len(parsed) == 0
    assert {e.oid for e in parsed.extensions} == {x509.CRLNumber.oid, x509.AuthorityKeyIdentifier.oid}


def test_wrong_signature_or_issuer_is_refused(issuers):
    prepared = crlmod.build_tbs_crl(issuers["rsa"].cert, issuers["rsa"].key_info, [], 1, NOW,
                                    NOW + WEEK, "sha256", None)
    signature = sign_like_hsm(issuers["rsa"], prepared.tbs_der + b"x", prepared.mechanism)
    with pytest.raises(SignatureMismatch):
        crlmod.verify_crl(crlmod.assemble_crl(prepared, signature), issuers["rsa"].cert)
    good = make_crl(issuers["rsa"], [])
    with pytest.raises(SignatureMismatch):
        crlmod.verify_crl(good, issuers["ec"].cert)


def test_remove_from_crl_is_refused_in_full_crls(issuers):
    with pytest.raises(crlmod.InvalidReason):
        make_crl(issuers["ec"], [(5, NOW, 8)])


def test_crl_numbers_strictly_increase():
    first = crlmod.crl_number_for(NOW, None)
    same_instant = crlmod.crl_number_for(NOW, first)
    clock_set_back = crlmod.crl_number_for(NOW - datetime.timedelta(days=1), same_instant)
    later = crlmod.crl_number_for(NOW + datetime.timedelta(seconds=1), clock_set_back)
    assert first < same_instant < clock_set_back < later
    assert later - first == 1_000_000_000   # nanoseconds: one second later
    naive = NOW.replace(tzinfo=None)
    assert crlmod.crl_number_for(naive, None) == first


@given(moment=st.datetimes(min_value=datetime.datetime(1970, 1, 2),
                           max_value=datetime.datetime(2200, 1, 1)),
       previous=st.none() | st.integers(min_value=0, max_value=(1 << 80)))
def test_crl_number_property(moment, previous):
    number = crlmod.crl_number_for(moment, previous)
    assert 0 < number.bit_length() <= 159
    assert previous is None or number > previous


@pytest.mark.parametrize("value, code", [("unspecified", 0), ("keyCompromise", 1),
                                         ("aACompromise", 10), (6, 6), (0, 0), (10, 10)])
def test_parse_reason(value, code):
    assert crlmod.parse_reason(value) == code


@pytest.mark.parametrize("value", [7, 11, -1, "foo", "KeyCompromise", "1", True, None, 1.0, [1]])
def test_parse_reason_errors(value):
    with pytest.raises(crlmod.InvalidReason) as raised:
        crlmod.parse_reason(value)
    assert raised.value.code == "invalid_reason"


def test_100k_entries(issuers):
    issuer = issuers["rsa"]
    reasons = [None, 0, 1, 4, 5]
    revoked = [(secrets.randbits(127) | (1 << 127), NOW - datetime.timedelta(seconds=i),
                reasons[i % len(reasons)]) for i in range(100_000)]
    started = time.perf_counter()
    prepared = crlmod.build_tbs_crl(issuer.cert, issuer.key_info, revoked, 7, NOW, NOW + WEEK,
                                    "sha256", None)
    built = time.perf_counter()
    crl_der = crlmod.assemble_crl(prepared, sign_like_hsm(issuer, prepared.tbs_der, prepared.mechanism))
    assembled = time.perf_counter()
    parsed = crlmod.verify_crl(crl_der, issuer.cert)
    verified = time.perf_counter()
    print(f"\n100k-entry CRL ({len(crl_der) / 1e6:.1f} MB): build {built - started:.2f} s, "
          f"sign+assemble {assembled - built:.2f} s, parse+verify {verified - assembled:.2f} s")
    assert len(parsed) == 100_000
    assert built - started < 10
