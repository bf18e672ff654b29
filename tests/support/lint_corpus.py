"""Certificates to lint, for the tests that hold our changes to pkilint's walk and decoding
to pkilint's own results (tests/unit/test_lint_index.py, tests/unit/test_lint_cache.py):
every profile as the signer builds it (RSA and EC issuers and subject keys), hand-made
certificates full of findings, and undecodable bytes."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from core.x509 import certificate as xb
from core.x509.profiles import load_profiles

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
NOW = datetime.datetime(2026, 5, 4, 12, 0, tzinfo=datetime.timezone.utc)
RSA_KEY = rsa.generate_private_key(65537, 2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def name(*pairs: tuple[ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


ISSUER_NAME = name((NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, "Test CA"),
                   (NameOID.COMMON_NAME, "Test Root"))


def issuer_certificate(key) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder().subject_name(ISSUER_NAME).issuer_name(ISSUER_NAME)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
            .add_extension(ski, False)
            .sign(key, hashes.SHA256()))


def profile_certificates() -> list[tuple[str, bytes]]:
    """What the signer builds: every profile, RSA and EC subject keys, RSA and EC issuers."""
    subject = {"commonName": "www.example.org", "emailAddress": "alice@example.org",
               "organizationName": "Example e.V.", "countryName": "DE"}
    sans = {"dns": ("dns", "www.example.org"), "email": ("email", "alice@example.org"),
            "xmpp": ("xmpp", "alice@jabber.example.org")}
    found = []
    for issuer_key in (RSA_KEY, EC_KEY):
        issuer_cert = issuer_certificate(issuer_key)
        for profile in PROFILES.values():
            for subject_key in (RSA_KEY, EC_KEY):
                attributes = [(k, v) for k, v in subject.items() if k in profile.allowed_subject_attributes]
                wanted = [sans[kind] for kind in profile.allowed_san_types if kind in sans]
                try:
                    prepared = xb.build_tbs_certificate(
                        profile, next(iter(profile.issuers)), issuer_cert, xb.key_info_of(issuer_key.public_key()),
                        subject_key.public_key(), xb.build_subject(attributes, profile),
                        xb.build_sans(wanted, profile), xb.new_serial(), NOW,
                        NOW + datetime.timedelta(days=profile.default_validity_days), "sha256")
                except xb.X509RequestError:
                    continue  # e.g. a key type the profile refuses
                found.append((f"{profile.name}", prepared.throwaway_certificate.public_bytes(
                    serialization.Encoding.DER)))
    return found


SCT_LIST_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def sct(log_id: bytes = bytes(range(32)), timestamp_ms: int = 1_700_000_000_000) -> bytes:
    """One SignedCertificateTimestamp as RFC 6962 3.2 encodes it (TLS syntax): v1, log id,
    timestamp, no extensions, an ECDSA/SHA-256 signature of dummy bytes."""
    signature = bytes(8)
    return (b"\x00" + log_id + timestamp_ms.to_bytes(8, "big") + b"\x00\x00"
            + b"\x04\x03" + len(signature).to_bytes(2, "big") + signature)


def sct_list(*scts: bytes, length_off_by: int = 0) -> x509.UnrecognizedExtension:
    """The SCT list extension: an OCTET STRING holding the TLS-encoded list."""
    body = b"".join(len(item).to_bytes(2, "big") + item for item in scts)
    tls = (len(body) + length_off_by).to_bytes(2, "big") + body
    return x509.UnrecognizedExtension(SCT_LIST_OID, b"\x04" + bytes([len(tls)]) + tls)


def odd_certificates() -> list[tuple[str, bytes]]:
    """Certificates that break RFC 5280 in many ways, for many findings and node types."""
    def base(subject: x509.Name = name((NameOID.COMMON_NAME, "odd.example.org")), serial: int = 12345,
             days: int = 30):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ISSUER_NAME)
                .public_key(EC_KEY.public_key()).serial_number(serial)
                .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=days)))

    odd = {
        "no extensions": base(),
        "empty subject, non-critical SAN": base(x509.Name([])).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("a.example.org")]), False),
        "email in subject, not in SAN": base(name((NameOID.EMAIL_ADDRESS, "x@example.org"))).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("a.example.org")]), False),
        "bad DNS names": base().add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("*.example.org"), x509.DNSName("a*.example.org"), x509.DNSName("-bad-.example"),
             x509.DNSName("under_score.example.org"), x509.DNSName("www.*.example.org")]), False),
        "other SAN types": base().add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.UniformResourceIdentifier("http://x/"),
             x509.RFC822Name("not an email"), x509.DirectoryName(ISSUER_NAME),
             x509.RegisteredID(ObjectIdentifier("1.2.3.4"))]), True),
        "CA without key usage": base().add_extension(x509.BasicConstraints(ca=True, path_length=3), False),
        "end entity with keyCertSign": base().add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), False),
        "EKU everything, critical": base().add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.TIME_STAMPING, ExtendedKeyUsageOID.OCSP_SIGNING,
             ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), True),
        "policies with qualifiers": base().add_extension(x509.CertificatePolicies([
            x509.PolicyInformation(ObjectIdentifier("2.23.140.1.2.1"), ["http://cps.example.org",
                                   x509.UserNotice(x509.NoticeReference("Org", [1, 2]), "text")]),
            x509.PolicyInformation(ObjectIdentifier("2.5.29.32.0"), None)]), True),
        "name constraints on an end entity": base().add_extension(x509.NameConstraints(
            [x509.DNSName("example.org")], None), False),
        "unknown critical extension": base().add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),
        "AIA and CRL DP with odd URIs": base().add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("ldap://x")),
            x509.AccessDescription(x509.AuthorityInformationAccessOID.CA_ISSUERS, x509.DNSName("x.example"))]), True)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            None, x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "crl")]),
            frozenset({x509.ReasonFlags.key_compromise}), None)]), False),
        "huge validity, long serial": base(serial=(1 << 159) - 1, days=40000),
        "OCSP no check, SKI of another key": base().add_extension(x509.OCSPNoCheck(), True).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(RSA_KEY.public_key()), True),
        # pkilint keeps what it decodes of an SCT list on the decoded value itself
        # (setattr(node.pdu, "decoded", ...)): the one per-document state on a decoded value
        "SCT list with one SCT": base().add_extension(sct_list(sct()), False),
        "SCT list, empty": base().add_extension(sct_list(), False),
        "SCT list, bad length": base().add_extension(sct_list(sct(), length_off_by=1), False),
    }
    found = [(label, builder.sign(EC_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
             for label, builder in odd.items()]
    good = found[0][1]
    found += [("truncated", good[:-40]), ("garbage", b"\x30\x03\x02\x01\x00"), ("empty", b""),
              ("trailing bytes", good + b"\x00\x00")]
    return found


CORPUS = profile_certificates() + odd_certificates()


def everything(linter: xb.PkixLinter, der: bytes) -> list:
    """Every ValidationResult of a lint, as plain values (or the decoding error)."""
    try:
        document = linter._loader.load_der_document(der, "certificate")
    except Exception as exc:  # noqa: BLE001 - compared as a value
        return [("load failed", type(exc).__name__, str(exc))]
    return [(result.validator.name, result.node.path,
             [(d.finding.severity.name, d.finding.code, d.message) for d in result.finding_descriptions])
            for result in linter._validator.validate(document.root)]
