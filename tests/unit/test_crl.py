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
from core.x509.certificate import SignatureMismatch, as_utc, hash_algorithm
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
    # Every entry reads back as given, OpenSSL verifies the whole CRL, and the TBS is the
    # one cryptography's builder makes from the same entries.
    names = crlmod.REASON_NAMES
    assert [(e.serial_number, e.revocation_date_utc, [x.value.reason for x in e.extensions])
            for e in parsed] == [(serial, at, [] if reason in (None, 0) else [x509.ReasonFlags(names[reason])])
                                 for serial, at, reason in revoked]
    checked = openssl("crl", "-inform", "DER", "-noout", "-verify", "-CAfile", str(issuer.pem_path),
                      data=crl_der)
    assert checked.returncode == 0 and b"verify OK" in checked.stderr, checked.stderr.decode()
    shared = {None: [], 0: []} | {code: [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(
        x509.ReasonFlags(names[code])))] for code in (1, 4, 5)}
    reference = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.cert.subject, last_update=NOW, next_update=NOW + WEEK,
        extensions=crlmod.crl_extensions(issuer.cert, 7, None),
        revoked_certificates=[x509.RevokedCertificateBuilder(serial, at, shared[reason]).build()
                              for serial, at, reason in revoked]).sign(issuer.key, hash_algorithm("sha256"))
    assert prepared.tbs_der == reference.tbs_certlist_bytes


# --- the entries' DER is cryptography's --------------------------------------------------
# build_tbs_crl lets cryptography encode the CRL without entries and writes the entries'
# DER itself (encode_revoked). These tests build the same CRL with cryptography's builder
# through its public, checked API (RevokedCertificateBuilder's setters) and compare the TBS
# byte for byte: the encodings are both DER of the same values, so they must be identical.

UTC = datetime.timezone.utc


def cryptography_tbs(issuer: Issuer, revoked, number: int, idp_url: str | None,
                     hash_name: str = "sha256") -> bytes:
    entries = []
    for serial, revoked_at, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        code = reason if reason is None or isinstance(reason, int) else crlmod.REASON_CODES[reason]
        if code not in (None, 0):
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(crlmod.REASON_NAMES[code])), False)
        entries.append(entry.build())
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.cert.subject, last_update=NOW, next_update=NOW + WEEK,
        extensions=crlmod.crl_extensions(issuer.cert, number, idp_url), revoked_certificates=entries)
    crl = builder.sign(issuer.key, hash_algorithm(hash_name))
    return crl.tbs_certlist_bytes


EDGE_ENTRIES = [
    (1, NOW, None),                                                   # one-octet serial
    (0x7F, NOW, 0), (0x80, NOW, 1), (0xFF, NOW, 2), (0x100, NOW, 3),  # a leading zero octet or not
    ((1 << 159) - 1, NOW, 4), (1 << 158, NOW, 5), ((1 << 127) | 12345, NOW, 6),
    (1000, datetime.datetime(1950, 1, 1, tzinfo=UTC), 9),             # first UTCTime second
    (1001, datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), 10),  # last UTCTime second
    (1002, datetime.datetime(2050, 1, 1, tzinfo=UTC), "keyCompromise"),   # first GeneralizedTime
    (1003, datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "unspecified"),
    (1004, datetime.datetime(2001, 2, 3, 4, 5, 6, 789, tzinfo=UTC), 1),   # microseconds dropped
    (1005, datetime.datetime(2024, 6, 30, 23, 30), 1),                    # naive: UTC
    (1006, datetime.datetime(2024, 7, 1, 1, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))), 4),
    (1007, datetime.datetime(1999, 12, 31, 20, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))), None),
    (1008, datetime.datetime(1950, 1, 1, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(minutes=-30))), 0),
]


@pytest.mark.parametrize("issuer_kind, idp_url, hash_name",
                         [("rsa", "http://crl.example.org/a.crl", "sha256"), ("rsa", None, "sha512"),
                          ("ec", "http://crl.example.org/b.crl", "sha384")])
def test_tbs_is_byte_for_byte_what_cryptography_builds(issuers, issuer_kind, idp_url, hash_name):
    issuer = issuers[issuer_kind]
    for revoked in (EDGE_ENTRIES, EDGE_ENTRIES[::-1], EDGE_ENTRIES[:1], []):
        prepared = crlmod.build_tbs_crl(issuer.cert, issuer.key_info, revoked, 99, NOW, NOW + WEEK,
                                        hash_name, idp_url)
        assert prepared.tbs_der == cryptography_tbs(issuer, revoked, 99, idp_url, hash_name)


def test_edge_entries_parse_back(issuers):
    crl_der = make_crl(issuers["ec"], EDGE_ENTRIES, idp_url="http://crl.example.org/c.crl")
    parsed = list(x509.load_der_x509_crl(crl_der))
    assert [e.serial_number for e in parsed] == [serial for serial, _, _ in EDGE_ENTRIES]
    for entry, (_, revoked_at, reason) in zip(parsed, EDGE_ENTRIES):
        expected = as_utc(revoked_at).replace(microsecond=0)
        assert entry.revocation_date_utc == expected
        code = crlmod.parse_reason(reason) if reason is not None else None
        reasons = [e.value.reason for e in entry.extensions]
        assert reasons == ([] if code in (None, 0) else [x509.ReasonFlags(crlmod.REASON_NAMES[code])])


@given(revoked=st.lists(st.tuples(
    st.integers(min_value=1, max_value=(1 << 159) - 1),
    st.datetimes(min_value=datetime.datetime(1950, 1, 2), max_value=datetime.datetime(9999, 12, 30),
                 timezones=st.none() | st.just(UTC) | st.timezones()),
    st.sampled_from([None, 0, 1, 2, 3, 4, 5, 6, 9, 10, "cessationOfOperation"])), max_size=6))
def test_tbs_matches_cryptography_property(issuers, revoked):
    issuer = issuers["ec"]
    prepared = crlmod.build_tbs_crl(issuer.cert, issuer.key_info, revoked, 5, NOW, NOW + WEEK,
                                    "sha256", None)
    assert prepared.tbs_der == cryptography_tbs(issuer, revoked, 5, None)


@pytest.mark.parametrize("entry, error", [
    ((0, NOW, None), ValueError), ((-5, NOW, None), ValueError), ((1 << 159, NOW, None), ValueError),
    ((True, NOW, None), ValueError), ((1.0, NOW, None), ValueError), (("ab", NOW, None), ValueError),
    ((5, NOW, 8), crlmod.InvalidReason), ((5, NOW, 7), crlmod.InvalidReason),
    ((5, NOW, True), crlmod.InvalidReason), ((5, NOW, "removeFromCRL"), crlmod.InvalidReason),
    ((5, datetime.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC), 1), crlmod.CrlBuildFailed),
    # 1950-01-01T00:30+01:00 is 1949 in UTC
    ((5, datetime.datetime(1950, 1, 1, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))), 1),
     crlmod.CrlBuildFailed),
    ((5, datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))), 1),
     crlmod.CrlBuildFailed),
    ((5, datetime.datetime(9999, 12, 31, 23, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))), 1),
     crlmod.CrlBuildFailed),
])
def test_bad_entries_are_refused(issuers, entry, error):
    with pytest.raises(error):
        crlmod.build_tbs_crl(issuers["ec"].cert, issuers["ec"].key_info, [(3, NOW, 1), entry], 1, NOW,
                             NOW + WEEK, "sha256", None)
