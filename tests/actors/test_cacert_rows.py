"""sign_x509 for what CAcert's web application really sends (issue 15, signer side): one
profile under either issuer (15.2), organisation server rows with XmppAddr SANs (15.4),
the SSO hash as emailAddress (15.5), SPKAC requests (15.6).

X509Signer alone, with the mock Hsm and Repository peers of test_actor_x509_handlers; the
SPKACs are stored vectors made by `openssl spkac` (tests/vectors/README.md)."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from actors.handlers.x509_signer import X509Signer
from core.x509.certificate import XMPP_ADDR_OID, PkixLinter, der_tlv
from messages.repository import LookupRequest
from tests.support.actor_harness import ActorHarness
from tests.support.handler_playing import assert_quiet, error_of, play_repo
from tests.actors.test_x509_handlers import (PEERS, PROFILES, cas, config, issue, make_csr,  # noqa: F401
                                            request_signature, subject_keys)
from tests.vectors.make_csr_vectors import algorithm, der_integer, emsa_pkcs1

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
CRL = {"root": "http://crl.cacert.org/revoke.crl", "class3": "http://crl.cacert.org/class3-revoke.crl"}


@pytest.fixture
def signer(config):  # noqa: F811
    return ActorHarness(X509Signer, config, PEERS)


def extension(cert: x509.Certificate, kind: type) -> Any:
    return cert.extensions.get_extension_for_class(kind).value


def openssl_verify_and_lint(cert: x509.Certificate, ca, tmp_path: Path) -> None:
    pem = tmp_path / "leaf.pem"
    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    verified = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(ca.path), str(pem)],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert PkixLinter().lint(cert.public_bytes(Encoding.DER), worst_ignored="WARNING") == []


# --- 15.2: one profile, every issuer it names ------------------------------------------------

@pytest.mark.parametrize("issuer", ["root", "class3"])
def test_one_profile_is_issued_under_each_issuer_with_that_issuers_crl(signer, cas, subject_keys, issuer,
                                                                       tmp_path):
    body = {"issuer": issuer, "profile": "client", "csr": make_csr(subject_keys["rsa"]),
            "subject": [["CN", "Alice Example"], ["emailAddress", "alice@example.org"]]}
    _, _, cert, answer = issue(signer, cas[issuer], body)
    assert (answer["issuer"], answer["profile"]) == (issuer, "client")
    cert.verify_directly_issued_by(cas[issuer].cert)
    (point,) = extension(cert, x509.CRLDistributionPoints)
    assert [name.value for name in point.full_name] == [CRL[issuer]]
    (ocsp,) = extension(cert, x509.AuthorityInformationAccess)
    assert ocsp.access_location.value == "http://ocsp.cacert.org"
    openssl_verify_and_lint(cert, cas[issuer], tmp_path)


def test_an_issuer_the_profile_does_not_name_is_refused(cas, subject_keys, config, tmp_path):  # noqa: F811
    """Both issuers are configured; the profile names only root."""
    document = yaml.safe_load((PROFILES / "server.yaml").read_text())
    del document["issuers"]["class3"]
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(document))
    config.x509 = SimpleNamespace(profiles=str(tmp_path), lint=True)
    h = ActorHarness(X509Signer, config, PEERS)
    request_signature(h, {"issuer": "class3", "profile": "server", "csr": make_csr(subject_keys["rsa"]),
                          "subject": {"CN": "www.example.org"}})
    error = error_of(h)
    assert error["code"] == "unknown_issuer"
    assert error["message"] == "profile 'server' is not issued by 'class3' (its issuers: ['root'])"
    assert_quiet(h)  # nothing looked up, reserved or signed


# --- 15.4: organisation server rows: DNS and XmppAddr names ----------------------------------

ORG_SUBJECT = [["organizationalUnitName", "IT"], ["organizationName", "Example Org"],
               ["localityName", "Sydney"], ["stateOrProvinceName", "NSW"], ["countryName", "AU"],
               ["commonName", "shop.example.org"]]
# What the web application writes for every name: a DNS name and the same name as XmppAddr.
ORG_SANS = [[kind, name] for name in ("shop.example.org", "example.org") for kind in ("dns", "xmpp")]


@pytest.mark.parametrize("profile", ["server-org", "ocsp", "timestamp"])
@pytest.mark.parametrize("issuer", ["class3", "root"])
def test_org_server_rows_with_xmpp_names_are_issued(signer, cas, subject_keys, profile, issuer, tmp_path):
    body = {"issuer": issuer, "profile": profile, "csr": make_csr(subject_keys["rsa"]),
            "subject": ORG_SUBJECT, "sans": ORG_SANS}
    _, _, cert, _ = issue(signer, cas[issuer], body)
    san = extension(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["shop.example.org", "example.org"]
    xmpp = [name.value for name in san.get_values_for_type(x509.OtherName) if name.type_id == XMPP_ADDR_OID]
    assert xmpp == [der_tlv(0x0C, b"shop.example.org"), der_tlv(0x0C, b"example.org")]
    assert cert.subject.rfc4514_string() == "CN=shop.example.org,OU=IT,O=Example Org,L=Sydney,ST=NSW,C=AU"
    openssl_verify_and_lint(cert, cas[issuer], tmp_path)


# --- 15.5: the SSO hash as emailAddress -------------------------------------------------------

def test_sso_hash_as_email_address_is_a_typed_refusal(signer, subject_keys):
    request_signature(signer, {"issuer": "root", "profile": "client", "csr": make_csr(subject_keys["rsa"]),
                               "subject": [["CN", "CAcert WoT User"],
                                           ["emailAddress", "0123456789abcdef0123456789abcdef01234567"]]})
    play_repo(signer, LookupRequest, None)
    error = error_of(signer)
    assert error["code"] == "bad_request"
    assert "not an ASCII e-mail address: '0123456789abcdef0123456789abcdef01234567'" in error["message"]
    assert_quiet(signer)


# --- 15.6: SPKAC --------------------------------------------------------------------------------

def spkac_text(name: str) -> str:
    """The base64 after `SPKAC=`, as the WebDB daemon sends it."""
    line = (VECTORS / f"spkac-{name}.txt").read_text()
    assert line.startswith("SPKAC=")
    return line[len("SPKAC="):].strip()


def spkac_body(spkac: Any, **changes: Any) -> dict[str, Any]:
    return {"issuer": "root", "profile": "client", "spkac": spkac,
            "subject": [["CN", "CAcert WoT User"], ["emailAddress", "alice@example.org"]], **changes}


@pytest.mark.parametrize("key, issuer", [("rsa2048", "root"), ("p256", "class3")])
def test_spkac_is_issued_with_its_key(signer, cas, key, issuer, tmp_path):
    # CAcert's file holds the base64 across one line; line breaks inside it are ignored too.
    text = spkac_text(f"{key}-sha256")
    wrapped = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    _, _, cert, _ = issue(signer, cas[issuer], spkac_body(wrapped, issuer=issuer))
    public_pem = (VECTORS / f"spkac-{key}.pub.pem").read_bytes()
    assert cert.public_key() == serialization.load_pem_public_key(public_pem)
    assert cert.subject.rfc4514_string() == "1.2.840.113549.1.9.1=alice@example.org,CN=CAcert WoT User"
    openssl_verify_and_lint(cert, cas[issuer], tmp_path)


def tampered_signature() -> str:
    der = bytearray(base64.b64decode(spkac_text("rsa2048-sha256")))
    der[-1] ^= 0x01  # the last byte of the signature
    return base64.b64encode(bytes(der)).decode()


def rsa_e1_spkac() -> str:
    """A valid SPKAC of an RSA key with public exponent 1 (its signature is the padded
    digest itself): only the key policy can refuse it."""
    n = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    key = der_tlv(0x30, der_integer(n) + der_integer(1))
    spki = der_tlv(0x30, algorithm("1.2.840.113549.1.1.1") + der_tlv(0x03, b"\x00" + key))
    content = der_tlv(0x30, spki + der_tlv(0x16, b"cacert-challenge"))
    signature = emsa_pkcs1(content, "sha256", 256).to_bytes(256, "big")
    signed = der_tlv(0x30, content + algorithm("1.2.840.113549.1.1.11") + der_tlv(0x03, b"\x00" + signature))
    return base64.b64encode(signed).decode()


def with_trailing_bytes() -> str:
    return base64.b64encode(base64.b64decode(spkac_text("p256-sha256")) + b"\x00\x00").decode()


SPKAC_REFUSALS = [  # (id, spkac field, code, words in the message)
    ("tampered_signature", tampered_signature, "bad_csr_signature", "SPKAC's signature does not match"),
    ("rsa_1024", lambda: spkac_text("rsa1024-sha256"), "key_too_weak", "RSA-1024"),
    ("rsa_exponent_1", rsa_e1_spkac, "key_too_weak", "exponent 1"),
    ("dsa", lambda: spkac_text("dsa2048-sha256"), "key_type_not_allowed", "dsaEncryption"),
    ("md5", lambda: spkac_text("rsa2048-md5"), "hash_not_allowed", "md5WithRSAEncryption"),
    ("with_prefix", lambda: "SPKAC=" + spkac_text("p256-sha256"), "malformed_csr", "base64 text"),
    ("not_base64", lambda: "MIHFMG0w!!", "malformed_csr", "base64 text"),
    ("bad_base64", lambda: "MIHFM", "malformed_csr", "invalid base64"),
    ("a_csr_in_base64", lambda: base64.b64encode((VECTORS / "csr-version1.der").read_bytes()).decode(),
     "malformed_csr", "not DER"),
    ("trailing_bytes", with_trailing_bytes, "malformed_csr", "trailing bytes"),
    ("empty", lambda: " ", "malformed_csr", "base64 text"),
    ("as_bin", lambda: base64.b64decode(spkac_text("p256-sha256")), "bad_request", "field 'spkac' must be str"),
]


@pytest.mark.parametrize("make, code, words", [r[1:] for r in SPKAC_REFUSALS], ids=[r[0] for r in SPKAC_REFUSALS])
def test_bad_spkacs_are_typed_refusals(signer, make, code, words):
    request_signature(signer, spkac_body(make()))
    if code != "bad_request":  # body types are refused before the request-id lookup
        play_repo(signer, LookupRequest, None)
    error = error_of(signer)
    assert (error["code"], words in error["message"]) == (code, True), error
    assert_quiet(signer)  # nothing reserved or signed


@pytest.mark.parametrize("fields", [{}, {"csr": b"x", "spkac": "y"}], ids=["neither", "both"])
def test_exactly_one_key_request(signer, fields):
    body = {"issuer": "root", "profile": "client", "subject": {"CN": "x"}, **fields}
    request_signature(signer, body)
    assert error_of(signer) == {"code": "bad_request",
                                "message": "give exactly one of the fields 'csr' and 'spkac'"}
    assert_quiet(signer)


def test_spkac_vectors_are_valid_for_openssl():
    """The refusals above are the signer's judgement, not broken files."""
    for path in sorted(VECTORS.glob("spkac-*.txt")):
        result = subprocess.run(["openssl", "spkac", "-in", str(path), "-verify", "-noout"],
                                capture_output=True, text=True)
        assert "Signature OK" in result.stdout + result.stderr, (path.name, result.stderr)
