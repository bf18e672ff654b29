"""Issue certificates the way the signer does (prepare, sign the TBS elsewhere, assemble)
with in-memory issuers standing in for the HSM, and check them with cryptography, OpenSSL
and pkilint. tests/unit/test_crl.py reuses the issuer and CSR helpers."""
from __future__ import annotations

import datetime
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from core.x509 import certificate as xb
from core.x509.profiles import load_profiles, parse_profile

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)

SAMPLE_ATTRIBUTES = {"commonName": "Alice Example", "emailAddress": "alice@example.org",
                     "organizationName": "Example e.V.", "organizationalUnitName": "IT",
                     "localityName": "Berlin", "stateOrProvinceName": "Berlin",
                     "countryName": "DE"}
SAMPLE_SANS = {"dns": [("dns", "www.example.org"), ("dns", "example.org")],
               "email": [("email", "alice@example.org")],
               "xmpp": [("xmpp", "alice@jabber.example.org")]}
OPENSSL_KEY_ARGS = {"rsa2048": ["-newkey", "rsa:2048"], "rsa4096": ["-newkey", "rsa:4096"],
                    "rsa1024": ["-newkey", "rsa:1024"],
                    "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
                    "p521": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
                    "ed25519": ["-newkey", "ed25519"],
                    "rsa-pss": ["-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048"]}


@dataclass(frozen=True)
class Issuer:
    key: Any
    cert: x509.Certificate
    pem_path: Path

    @property
    def key_info(self) -> dict[str, Any]:
        return xb.key_info_of(self.cert.public_key())


def make_issuer(key: Any, common_name: str, folder: Path) -> Issuer:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(xb.new_serial())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), True)
            .add_extension(ski, False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
            .sign(key, hashes.SHA256()))
    pem_path = folder / f"{common_name.replace(' ', '_')}.pem"
    pem_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issuer(key, cert, pem_path)


@pytest.fixture(scope="session")
def issuers(tmp_path_factory) -> dict[str, Issuer]:
    folder = tmp_path_factory.mktemp("issuers")
    return {"rsa": make_issuer(rsa.generate_private_key(65537, 2048), "Test RSA CA", folder),
            "ec": make_issuer(ec.generate_private_key(ec.SECP256R1()), "Test EC CA", folder)}


def openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=120)


def openssl_csr(folder: Path, key_kind: str, *extra: str) -> bytes:
    """A real CSR from `openssl req`, DER-encoded."""
    csr_path = folder / f"{key_kind}-{len(list(folder.iterdir()))}.der"
    result = openssl("req", "-new", *OPENSSL_KEY_ARGS[key_kind], "-nodes",
                     "-keyout", str(csr_path.with_suffix(".key")), "-subj", "/CN=from the CSR",
                     *extra, "-outform", "DER", "-out", str(csr_path))
    assert result.returncode == 0, result.stderr.decode()
    return csr_path.read_bytes()


@pytest.fixture(scope="session")
def csrs(tmp_path_factory):
    """CSR per key kind, made once per session (RSA-4096 keygen takes seconds)."""
    folder, made = tmp_path_factory.mktemp("csrs"), {}

    def get(key_kind: str) -> bytes:
        if key_kind not in made:
            made[key_kind] = openssl_csr(folder, key_kind)
        return made[key_kind]
    return get


@pytest.fixture(scope="session")
def linter() -> xb.PkixLinter:
    return xb.PkixLinter()


def sign_like_hsm(issuer: Issuer, tbs_der: bytes, mechanism: str) -> bytes:
    """What the HSM actor does with a mechanism name: hash-and-sign the TBS bytes."""
    hash_name, scheme = mechanism.split("-", 1)
    algorithm = xb.HASHES[hash_name]()
    if scheme == "rsa-pkcs1":
        return issuer.key.sign(tbs_der, padding.PKCS1v15(), algorithm)
    assert scheme == "ecdsa"
    return issuer.key.sign(tbs_der, ec.ECDSA(algorithm))


def sample_request(profile) -> tuple[dict[str, str], list[tuple[str, str]]]:
    attrs = {k: v for k, v in SAMPLE_ATTRIBUTES.items() if k in profile.allowed_subject_attributes}
    sans = [san for kind in sorted(profile.allowed_san_types) for san in SAMPLE_SANS[kind]]
    return attrs, sans


def issue(profile, issuer: Issuer, csr_der: bytes, hash_name: str = "sha256",
          attrs=None, sans=None, days: int | None = None, issuer_id: str = "root") -> bytes:
    """The whole signer path for one certificate, returning its DER."""
    default_attrs, default_sans = sample_request(profile)
    csr = xb.check_csr(csr_der, profile)
    subject = xb.build_subject(default_attrs if attrs is None else attrs, profile)
    general_names = xb.build_sans(default_sans if sans is None else sans, profile)
    not_before, not_after = xb.validity_window(profile, NOW, days)
    prepared = xb.build_tbs_certificate(profile, issuer_id, issuer.cert, issuer.key_info, csr.public_key(),
                                        subject, general_names, xb.new_serial(), not_before, not_after,
                                        hash_name)
    signature = sign_like_hsm(issuer, prepared.tbs_der, prepared.mechanism)
    cert_der = xb.assemble_certificate(prepared, signature)
    xb.verify_issued(cert_der, issuer.cert)
    return cert_der


def openssl_verify(issuer: Issuer, cert_der: bytes, folder: Path, *extra: str
                   ) -> subprocess.CompletedProcess:
    cert_path = folder / "leaf.pem"
    cert_path.write_bytes(x509.load_der_x509_certificate(cert_der)
                          .public_bytes(serialization.Encoding.PEM))
    return openssl("verify", "-x509_strict", "-CAfile", str(issuer.pem_path), *extra, str(cert_path))


def expected_extension_oids(profile, has_sans: bool, issuer_id: str = "root") -> set[x509.ObjectIdentifier]:
    spec, urls = profile.extensions, profile.urls_for(issuer_id)
    optional = {ExtensionOID.EXTENDED_KEY_USAGE: spec.extended_key_usage,
                ExtensionOID.CERTIFICATE_POLICIES: spec.certificate_policies,
                ExtensionOID.CRL_DISTRIBUTION_POINTS: urls.crl_distribution_point,
                ExtensionOID.AUTHORITY_INFORMATION_ACCESS: urls.ocsp_url,
                ExtensionOID.OCSP_NO_CHECK: spec.ocsp_no_check,
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME: has_sans}
    return {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE,
            ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
            *(oid for oid, present in optional.items() if present)}


def check_issued(profile, issuer: Issuer, cert_der: bytes, folder: Path, linter) -> x509.Certificate:
    cert = x509.load_der_x509_certificate(cert_der)
    verified = openssl_verify(issuer, cert_der, folder)
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()
    has_sans = bool(sample_request(profile)[1]) or "emailAddress" in profile.allowed_subject_attributes
    assert {e.oid for e in cert.extensions} == expected_extension_oids(profile, has_sans)
    assert linter.lint(cert_der) == []
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    return cert


@pytest.mark.parametrize("issuer_kind", ["rsa", "ec"])
@pytest.mark.parametrize("key_kind", ["rsa2048", "p256"])
@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_every_profile_issues_valid_certificates(profile_name, key_kind, issuer_kind, issuers,
                                                 csrs, linter, tmp_path):
    profile, issuer = PROFILES[profile_name], issuers[issuer_kind]
    cert = check_issued(profile, issuer, issue(profile, issuer, csrs(key_kind)), tmp_path, linter)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    # The old signer's three usages, cut down to what the subject key can do.
    if "keyEncipherment" in profile.extensions.key_usage:
        assert usage.key_encipherment is (key_kind == "rsa2048")
        assert usage.key_agreement is (key_kind == "p256")


@pytest.mark.slow
@pytest.mark.parametrize("key_kind", ["rsa4096", "p384"])
def test_bigger_subject_keys(key_kind, issuers, csrs, linter, tmp_path):
    for issuer in issuers.values():
        check_issued(PROFILES["server"], issuer, issue(PROFILES["server"], issuer, csrs(key_kind)),
                     tmp_path, linter)


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("issuer_kind", ["rsa", "ec"])
def test_hashes_and_mechanisms(hash_name, issuer_kind, issuers, csrs, tmp_path, linter):
    issuer = issuers[issuer_kind]
    cert_der = issue(PROFILES["client"], issuer, csrs("p256"), hash_name=hash_name)
    cert = check_issued(PROFILES["client"], issuer, cert_der, tmp_path, linter)
    assert cert.signature_hash_algorithm.name == hash_name
    scheme = "rsa-pkcs1" if issuer_kind == "rsa" else "ecdsa"
    assert xb.mechanism_for(issuer.key_info, hash_name) == f"{hash_name}-{scheme}"


def test_csr_subject_and_extensions_are_ignored(issuers, tmp_path_factory, linter, tmp_path):
    folder = tmp_path_factory.mktemp("ca-csr")
    csr_der = openssl_csr(folder, "p256", "-addext", "basicConstraints=critical,CA:TRUE",
                          "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    assert x509.load_der_x509_csr(csr_der).extensions.get_extension_for_class(
        x509.BasicConstraints).value.ca is True
    cert = check_issued(PROFILES["server"], issuers["rsa"],
                        issue(PROFILES["server"], issuers["rsa"], csr_der), tmp_path, linter)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
    assert cert.subject.rfc4514_string() == "CN=Alice Example"


def test_subject_email_is_added_to_sans(issuers, csrs):
    cert_der = issue(PROFILES["client"], issuers["ec"], csrs("p256"),
                     attrs=[("CN", "Alice"), ("emailAddress", "alice@example.org")], sans=[])
    sans = x509.load_der_x509_certificate(cert_der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.RFC822Name) == ["alice@example.org"]


def test_empty_subject_makes_the_san_critical(issuers, csrs, linter, tmp_path):
    profile, issuer = PROFILES["server"], issuers["rsa"]
    cert_der = issue(profile, issuer, csrs("p256"), attrs={}, sans=[("dns", "www.example.org")])
    cert = x509.load_der_x509_certificate(cert_der)
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert openssl_verify(issuer, cert_der, tmp_path).returncode == 0
    assert linter.lint(cert_der) == []
    with pytest.raises(xb.InvalidValue):
        issue(profile, issuer, csrs("p256"), attrs={}, sans=[])


def test_xmpp_san_is_an_utf8string_other_name(issuers, csrs):
    cert_der = issue(PROFILES["server-jabber"], issuers["ec"], csrs("p256"),
                     sans=[("dns", "jabber.example.org"), ("xmpp", "jürgen@jabber.example.org")])
    sans = x509.load_der_x509_certificate(cert_der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    [other] = sans.get_values_for_type(x509.OtherName)
    encoded = "jürgen@jabber.example.org".encode()
    assert other.type_id.dotted_string == "1.3.6.1.5.5.7.8.5"
    assert other.value == bytes([0x0C, len(encoded)]) + encoded


def test_subject_order_and_aliases():
    subject = xb.build_subject([("CN", "Example"), ("C", "DE"), ("O", "Example e.V."),
                                ("OU", "A"), ("OU", "B")], PROFILES["server-org"])
    assert subject.rfc4514_string() == "CN=Example,OU=B,OU=A,O=Example e.V.,C=DE"
    assert xb.build_subject({"commonName": "x"}, PROFILES["server"]) == \
        xb.build_subject([("CN", "x")], PROFILES["server"])


def flip_last_byte(der: bytes) -> bytes:
    # The signature BIT STRING ends the CSR, so this corrupts only the signature.
    return der[:-1] + bytes([der[-1] ^ 0x01])


@pytest.mark.parametrize("make_csr, error", [
    (lambda csrs: flip_last_byte(csrs("rsa2048")), xb.BadCsrSignature),
    (lambda csrs: b"\x30\x03\x02\x01\x00", xb.MalformedCsr),
    (lambda csrs: b"not DER at all", xb.MalformedCsr),
    (lambda csrs: csrs("rsa1024"), xb.KeyTooWeak),
    (lambda csrs: csrs("p521"), xb.KeyTypeNotAllowed),
    (lambda csrs: csrs("ed25519"), xb.KeyTypeNotAllowed),
    (lambda csrs: csrs("rsa-pss"), xb.KeyTypeNotAllowed),
])
def test_csr_refusals(make_csr, error, csrs):
    with pytest.raises(error) as raised:
        xb.check_csr(make_csr(csrs), PROFILES["server"])
    assert raised.value.code == error.code


@pytest.mark.parametrize("profile_name, sans, error", [
    ("server", [("email", "a@example.org")], xb.SanTypeNotAllowed),
    ("server", [("uri", "http://example.org")], xb.SanTypeNotAllowed),
    ("client", [("xmpp", "a@example.org")], xb.SanTypeNotAllowed),
    ("server", [("dns", "exa mple.org")], xb.InvalidValue),
    ("server", [("dns", "-bad.example.org")], xb.InvalidValue),
    ("server", [("dns", "bücher.example")], xb.InvalidValue),
    ("server", [("dns", "192.168.1.1")], xb.InvalidValue),
    ("client", [("email", "no-at-sign.example.org")], xb.InvalidValue),
    ("client", [("email", "a@*.example.org")], xb.InvalidValue),
])
def test_san_refusals(profile_name, sans, error):
    with pytest.raises(error):
        xb.build_sans(sans, PROFILES[profile_name])


@pytest.mark.parametrize("profile_name, attrs, error", [
    ("server", {"organizationName": "Evil Corp"}, xb.AttributeNotAllowed),
    ("client", [("O", "Evil Corp")], xb.AttributeNotAllowed),
    ("server", {"serialNumber": "1"}, xb.AttributeNotAllowed),
    ("server-org", {"countryName": "DEU"}, xb.InvalidValue),
    ("server", {"commonName": "x" * 65}, xb.InvalidValue),
    ("server", {"commonName": ""}, xb.InvalidValue),
    ("client", {"emailAddress": "not an address"}, xb.InvalidValue),
])
def test_attribute_refusals(profile_name, attrs, error):
    with pytest.raises(error):
        xb.build_subject(attrs, PROFILES[profile_name])


def test_validity_and_hash_refusals(issuers, csrs):
    profile, issuer = PROFILES["server"], issuers["rsa"]
    with pytest.raises(xb.ValidityTooLong):
        issue(profile, issuer, csrs("p256"), days=profile.max_validity_days + 1)
    with pytest.raises(xb.HashNotAllowed):
        issue(profile, issuer, csrs("p256"), hash_name="sha1")
    raw = {**_raw_profile(profile), "allowed_hashes": ["sha256"]}
    with pytest.raises(xb.HashNotAllowed):
        issue(parse_profile("server", raw), issuer, csrs("p256"), hash_name="sha384")


def _raw_profile(profile) -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "profiles"
                           / f"{profile.name}.yaml").read_text())


def test_wrong_signature_is_refused(issuers, csrs):
    profile, issuer = PROFILES["server"], issuers["rsa"]
    csr = xb.check_csr(csrs("p256"), profile)
    not_before, not_after = xb.validity_window(profile, NOW)
    prepared = xb.build_tbs_certificate(profile, "root", issuer.cert, issuer.key_info, csr.public_key(),
                                        xb.build_subject({"CN": "x"}, profile), [],
                                        xb.new_serial(), not_before, not_after, "sha256")
    other_key = rsa.generate_private_key(65537, 2048)
    forged = other_key.sign(prepared.tbs_der, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(xb.SignatureMismatch) as raised:
        xb.verify_issued(xb.assemble_certificate(prepared, forged), issuer.cert)
    assert raised.value.code == "signature_invalid"


def test_serials_are_distinct_and_fixed_length():
    serials = [xb.new_serial() for _ in range(200)]
    assert len(set(serials)) == 200
    assert {s.bit_length() for s in serials} == {128}


@pytest.mark.parametrize("length", [0, 5, 127, 128, 255, 256, 70000, 1 << 24])
def test_der_length_round_trip(length):
    element = xb.der_tlv(0x04, b"\x00" * length)
    assert xb.der_read_tlv(element, 0) == (len(element) - length, len(element))


def test_linter_reports_errors(issuers, linter):
    # A subject emailAddress that is not in the SAN breaks RFC 5280 4.1.2.6.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@example.org")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuers["ec"].cert.subject)
            .public_key(key.public_key()).serial_number(xb.new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=30))
            .sign(issuers["ec"].key, hashes.SHA256()))
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    codes = {f.code for f in linter.lint(cert_der)}
    assert "pkix.subject_email_address_not_in_san" in codes
    with pytest.raises(xb.LintFailed) as raised:
        linter.check(cert_der)
    assert raised.value.code == "lint_failed" and raised.value.findings
    assert linter.lint(b"\x30\x00")[0].severity == "FATAL"


def test_error_codes():
    from core.crl import build as crl  # noqa: F401  (defines InvalidReason)
    codes = {cls.__name__: cls.code for cls in xb.X509RequestError.__subclasses__()}
    assert codes == {"BadCsrSignature": "bad_csr_signature", "MalformedCsr": "malformed_csr",
                     "KeyTooWeak": "key_too_weak", "KeyTypeNotAllowed": "key_type_not_allowed",
                     "AttributeNotAllowed": "attribute_not_allowed",
                     "SanTypeNotAllowed": "san_type_not_allowed",
                     "ValidityTooLong": "validity_too_long", "HashNotAllowed": "hash_not_allowed",
                     "SignatureMismatch": "signature_invalid", "InvalidValue": "bad_request",
                     "LintFailed": "lint_failed", "InvalidReason": "invalid_reason",
                     "CrlBuildFailed": "crl_build_failed",
                     "LimitExceeded": "limit_exceeded"}


def test_issue_timing(issuers, csrs, linter):
    """Prints the in-process cost of one certificate, without the HSM."""
    csr_der = csrs("rsa2048")
    for kind, issuer in issuers.items():
        for step in ("cold", "warm"):   # cold: includes making the throwaway key
            started = time.perf_counter()
            cert_der = issue(PROFILES["server"], issuer, csr_der)
            built = time.perf_counter()
            linter.lint(cert_der)
            linted = time.perf_counter()
            print(f"\n{kind} issuer, {step}: issue {1000 * (built - started):.2f} ms, "
                  f"lint {1000 * (linted - built):.2f} ms")


def test_a_64_character_non_ascii_common_name_is_issued_and_65_refused(issuers, csrs, linter):
    # RFC 5280's bound counts characters; cryptography's own check counts UTF-8 bytes
    # (33 x "ü" was an internal_error).
    cert_der = issue(PROFILES["client"], issuers["ec"], csrs("p256"), attrs={"CN": "ü" * 64}, sans=[])
    assert x509.load_der_x509_certificate(cert_der).subject.rfc4514_string() == "CN=" + "ü" * 64
    assert linter.lint(cert_der) == []
    with pytest.raises(xb.InvalidValue):
        xb.build_subject({"CN": "ü" * 65}, PROFILES["client"])


def test_the_validity_period_counting_both_ends_is_exactly_the_days_asked(issuers, csrs):
    # notAfter is inclusive (RFC 5280 4.1.2.5): notBefore + days would be one second more.
    profile, issuer = PROFILES["server"], issuers["rsa"]
    cert = x509.load_der_x509_certificate(issue(profile, issuer, csrs("p256"), days=profile.max_validity_days))
    period = cert.not_valid_after_utc - cert.not_valid_before_utc + datetime.timedelta(seconds=1)
    assert period == datetime.timedelta(days=profile.max_validity_days)


@pytest.mark.parametrize("name", ["xn--zz.example.org", "www.xn--a.example.org", "xn--.example.org"])
def test_a_dns_name_with_an_invalid_a_label_is_refused(name):
    with pytest.raises(xb.InvalidValue):
        xb.build_sans([("dns", name)], PROFILES["server"])


def test_a_valid_a_label_is_kept():
    assert xb.build_sans([("dns", "xn--bcher-kva.example.org")], PROFILES["server"]) == [
        x509.DNSName("xn--bcher-kva.example.org")]


def test_pem_after_explanatory_text_is_read_as_certtool_writes_it(csrs):
    der = csrs("p256")
    pem = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    described = b"PKCS #10 Certificate Request Information:\n\tVersion: 1\n\tSubject: CN=x\n" + pem
    assert xb.csr_der(described) == der and xb.csr_der(pem) == der and xb.csr_der(der) == der
    with pytest.raises(xb.MalformedCsr):
        xb.csr_der(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
