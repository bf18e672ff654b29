"""Odd inputs outside the handler actors (issue 12 points 1-6, issue 11.4): the client CLI and
the WebDB daemon on a CSR the signer refuses, the stored vectors themselves, the narrowed
wildcard lint, and the limit settings. The handlers' answers to the same files are tested in
tests/actors/test_x509_handlers.py and tests/actors/test_openpgp_signer.py."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from core.openpgp.validate import validate_public_key
from core.x509.profiles import ProfileError, load_profiles, parse_profile
from core.wire.protocol import SignerError
from core.x509.certificate import PkixLinter, check_csr, csr_der
from tools.client import cli as client_cli
from tools.client.library import Response
from tools.webdb.work import RowProblem, classify, key_uids, read_csr_der

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
SERVER = load_profiles(ROOT / "config" / "profiles")["server"]


# --- the stored CSRs are what their names say ------------------------------------------------

# Validly signed (as openssl judges it), so a refusal is for the named oddity, not the signature.
VALIDLY_SIGNED = ["cv-rsa_sha1.der", "cv-dsa_sha1.der", "csr-version1.der", "csr-version2.der",
                  "csr-rsa-sha1.der", "csr-rsa-md5.der", "csr-dsa-sha256.der", "csr-rsa-e1.der",
                  "csr-rsa-e2.der"]


@pytest.mark.parametrize("name", VALIDLY_SIGNED)
def test_the_odd_csr_vectors_are_validly_signed(name):
    result = subprocess.run(["openssl", "req", "-inform", "DER", "-in", str(VECTORS / name), "-noout",
                             "-verify"], capture_output=True, text=True)
    assert "verify OK" in result.stdout + result.stderr, result


# --- signer-client sign-x509 on a CSR the signer refuses --------------------------------------

class SignerJudgingCsrs:
    """Stands in for SignerClient: answers sign_x509 as the signer's check_csr does."""
    sent: list[dict[str, Any]] = []

    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> "SignerJudgingCsrs":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def call(self, command: str, body: dict[str, Any], request_id: Any = None) -> Response:
        self.sent.append(body)
        try:
            check_csr(body["csr"], SERVER)
        except SignerError as exc:
            return Response("r", error=exc.to_wire())
        return Response("r", body={})


def test_client_cli_sends_a_csr_of_another_version_and_prints_the_signers_refusal(monkeypatch, tmp_path, capsys):
    name, code = "cv-bad-version.pem", "malformed_csr"  # cryptography raised InvalidVersion: a traceback
    monkeypatch.setattr(client_cli, "SignerClient", SignerJudgingCsrs)
    SignerJudgingCsrs.sent.clear()
    status = client_cli.main(["--port", "/dev/null", "sign-x509", "--issuer", "root", "--profile", "server",
                              "--csr", str(VECTORS / name), "--subject", "CN=www.example.org",
                              "--out", str(tmp_path / "cert.pem")])
    assert status == client_cli.EXIT_REFUSED
    assert capsys.readouterr().err.startswith(f"error: {code}: ")
    assert SignerJudgingCsrs.sent[0]["csr"] == csr_der((VECTORS / name).read_bytes())
    assert not (tmp_path / "cert.pem").exists()


# --- the WebDB daemon: such a row is a bad row --------------------------------------------------

@pytest.mark.parametrize("name", ["cv-bad-version.pem", "csr-version2.der"])
def test_webdb_daemon_treats_a_csr_of_another_version_as_a_bad_row(name):
    with pytest.raises(RowProblem) as raised:
        read_csr_der(VECTORS / name)
    assert raised.value.verdict == "row" and "version" in str(raised.value)


def test_webdb_daemon_classifies_limit_exceeded_as_a_row_error():
    assert classify("limit_exceeded") == "row"


def test_webdb_daemon_reads_uids_of_a_key_with_a_utf8_comment_header():
    assert key_uids((VECTORS / "openpgp-utf8-comment.asc").read_bytes()) == ["Comment Tester <comment@example.org>"]


# --- OpenPGP vectors, judged by gpg and our parser --------------------------------------------

@pytest.mark.parametrize("as_text", [False, True], ids=["bin", "str"])
def test_a_v6_key_is_an_unsupported_key(as_text):
    path = VECTORS / "openpgp-v6-rfc9580-a3.asc"
    with pytest.raises(Exception) as raised:
        validate_public_key(path.read_text() if as_text else path.read_bytes())
    assert raised.value.code == "openpgp_unsupported_key" and "v6" in str(raised.value)


def test_a_key_packet_of_no_openpgp_version_is_malformed_not_unsupported():
    # Random bytes often parse as a public-key packet (0x99 header) with a nonsense
    # version byte: that is no key at all (seen as a flaky e2e "garbage" case).
    packet = b"\x99\x00\x05" + bytes([202]) + b"\x00" * 4
    with pytest.raises(Exception) as raised:
        validate_public_key(packet)
    assert raised.value.code == "openpgp_malformed"


# --- the wildcard lint is narrowed, not switched off -------------------------------------------

@pytest.fixture(scope="module")
def linter() -> PkixLinter:
    return PkixLinter()


def certificate_with_dns_name(name: str) -> bytes:
    import datetime
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    return (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))


@pytest.mark.parametrize("name, findings", [
    ("*.example.org", []),
    ("www.example.org", []),
    ("a*.example.org", ["pkix.invalid_domain_name_syntax"]),
    ("*.*.example.org", ["pkix.invalid_domain_name_syntax"]),
    ("www.*.example.org", ["pkix.invalid_domain_name_syntax"]),
    ("*.org", ["pkix.invalid_domain_name_syntax"]),
    ("*.-bad.example.org", ["pkix.invalid_domain_name_syntax"]),
])
def test_only_a_leftmost_label_wildcard_passes_the_dns_name_lint(linter, name, findings):
    assert [f.code for f in linter.lint(certificate_with_dns_name(name))] == findings


# --- the limit settings -------------------------------------------------------------------------

def server_document(**changes: Any) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "config" / "profiles" / "server.yaml").read_text())
    document.update(changes)
    return document


def test_profile_limits_default_and_are_read():
    assert (SERVER.max_sans, SERVER.max_subject_attributes) == (100, 10)
    profile = parse_profile("server", server_document(max_sans=3, max_subject_attributes=2))
    assert (profile.max_sans, profile.max_subject_attributes) == (3, 2)


@pytest.mark.parametrize("changes, message", [
    ({"max_sans": 0}, "field 'max_sans': must be positive, got 0"),
    ({"max_subject_attributes": "5"}, "field 'max_subject_attributes': must be an integer, got str '5'"),
])
def test_profile_limits_must_be_positive_integers(changes, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile("server", server_document(**changes))


# --- other X.509 files of an unknown version (issue 12.1: not only ValueError) -------------------

def with_version(der: bytes, encoded_version: bytes, new_version: int) -> bytes:
    """The DER with its first version INTEGER (`encoded_version`) set to `new_version`."""
    at = der.index(encoded_version)
    return der[:at] + encoded_version[:-1] + bytes([new_version]) + der[at + len(encoded_version):]


def test_webdb_daemon_treats_a_certificate_file_of_another_version_as_a_bad_row(tmp_path):
    import datetime
    from tools.webdb.work import serial_from_file
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    der = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(5).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    (tmp_path / "cert.der").write_bytes(with_version(der, bytes.fromhex("a003020102"), 7))  # v3 -> "v8"
    with pytest.raises(RowProblem) as raised:
        serial_from_file(tmp_path / "cert.der")
    assert raised.value.verdict == "row" and "version" in str(raised.value)


def test_a_held_crl_of_another_version_is_no_usable_crl(tmp_path):
    import datetime
    from tools.client.crl_fetch import read_crl
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    der = (x509.CertificateRevocationListBuilder().issuer_name(x509.Name([]))
           .last_update(now).next_update(now + datetime.timedelta(days=1))
           .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    (tmp_path / "held.crl").write_bytes(with_version(der, bytes.fromhex("020101"), 5))  # v2 -> "v6"
    assert read_crl(tmp_path / "held.crl") is None  # fetched in full, as for a damaged file
