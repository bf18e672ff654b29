"""X.509 over the pty, end to end: real `openssl req` CSRs, the real signer process with
SoftHSM, checked by `openssl verify`, `openssl crl` and pkilint's `lint_pkix_cert`."""
from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from core.x509.profiles import load_profiles
from tests.support.helpers import ROOT, run_tool, tool
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e
PROFILES = load_profiles(ROOT / "config" / "profiles")
KEY_SPECS = {"rsa2048": ["-newkey", "rsa:2048"], "rsa4096": ["-newkey", "rsa:4096"],
             "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
             "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]}
# What the web side verified, per profile: (subject, SANs).
IDENTITIES = {
    "client": ([["CN", "Alice Example"], ["emailAddress", "alice@example.org"]], [["email", "alice@example.org"]]),
    "client-org": ([["CN", "Bob Example"], ["O", "Example Org"]], [["email", "bob@example.org"]]),
    "client-codesign": ([["CN", "Carol Coder"], ["O", "Example Org"]], [["email", "carol@example.org"]]),
    "server": ([["CN", "www.example.org"]], [["dns", "www.example.org"], ["dns", "example.org"]]),
    "server-org": ([["CN", "shop.example.org"], ["O", "Example Org"]], [["dns", "shop.example.org"]]),
    "server-jabber": ([["CN", "jabber.example.org"]], [["dns", "jabber.example.org"], ["xmpp", "jabber.example.org"]]),
    "ocsp": ([["CN", "CAcert OCSP Responder"], ["O", "CAcert Inc."]], []),
    "timestamp": ([["CN", "CAcert Timestamping"], ["O", "CAcert Inc."]], []),
}


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def csrs(tmp_path_factory) -> dict[str, bytes]:
    """One real CSR per key type, made by `openssl req` (subject deliberately wrong)."""
    folder = tmp_path_factory.mktemp("csrs")
    result = {}
    for name, spec in KEY_SPECS.items():
        openssl("req", "-new", *spec, "-nodes", "-keyout", str(folder / f"{name}.key"),
                "-out", str(folder / f"{name}.csr"), "-outform", "DER", "-subj", "/CN=ignored/O=Evil Corp")
        result[name] = (folder / f"{name}.csr").read_bytes()
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "ca.key"),
            "-out", str(folder / "ca.csr"), "-outform", "DER", "-subj", "/CN=wants-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    result["wants_ca"] = (folder / "ca.csr").read_bytes()
    openssl("req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout", str(folder / "weak.key"),
            "-out", str(folder / "weak.csr"), "-outform", "DER", "-subj", "/CN=weak")
    result["rsa1024"] = (folder / "weak.csr").read_bytes()
    return result


@pytest.fixture(scope="module")
def chain(signer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chain")
    assert run_tool("signer-client", "--port", signer.client_path, "ca-info", "--out-dir", str(folder)).returncode == 0
    return folder


@pytest.fixture
def client(signer):
    with SignerClient(signer.client_path, timeout=60) as c:
        yield c


# Every profile is issuable under both issuers; each is tried under one, both issuers covered.
ISSUER_OF = {"client": "root", "client-org": "class3", "client-codesign": "class3", "server": "root",
             "server-org": "class3", "server-jabber": "root", "ocsp": "root", "timestamp": "class3"}


def sign(client, profile, csr, request_id=None, **extra):
    subject, sans = IDENTITIES[profile]
    body = {"issuer": ISSUER_OF[profile], "profile": profile, "csr": csr,
            "subject": subject, "sans": sans, **extra}
    return client.call("sign_x509", body, request_id=request_id)


def expected_extensions(profile, cert) -> set:
    spec, urls = PROFILES[profile].extensions, PROFILES[profile].urls_for(ISSUER_OF[profile])
    oids = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
            ExtensionOID.AUTHORITY_KEY_IDENTIFIER}
    oids |= {ExtensionOID.EXTENDED_KEY_USAGE} if spec.extended_key_usage else set()
    oids |= {ExtensionOID.CERTIFICATE_POLICIES} if spec.certificate_policies else set()
    oids |= {ExtensionOID.CRL_DISTRIBUTION_POINTS} if urls.crl_distribution_point else set()
    oids |= {ExtensionOID.AUTHORITY_INFORMATION_ACCESS} if urls.ocsp_url else set()
    oids |= {ExtensionOID.OCSP_NO_CHECK} if spec.ocsp_no_check else set()
    oids |= {ExtensionOID.SUBJECT_ALTERNATIVE_NAME} if IDENTITIES[profile][1] or any(
        k == "emailAddress" for k, _ in IDENTITIES[profile][0]) else set()
    return oids


@pytest.mark.parametrize("key", sorted(KEY_SPECS))
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_and_key_type_verifies_and_lints(client, csrs, chain, tmp_path, profile, key):
    response = sign(client, profile, csrs[key])
    assert response.ok, response.error
    der = response.body["certificate"]
    cert = x509.load_der_x509_certificate(der)
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    issuer = ISSUER_OF[profile]
    untrusted = ["-untrusted", str(chain / "class3.pem")] if issuer == "class3" else []
    openssl("verify", "-x509_strict", "-CAfile", str(chain / "root.pem"), *untrusted, str(pem))
    lint = subprocess.run([tool("lint_pkix_cert"), "lint", "-s", "ERROR", str(pem)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert {e.oid for e in cert.extensions} == expected_extensions(profile, cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert "Evil Corp" not in cert.subject.rfc4514_string()
    assert format(cert.serial_number, "x") == response.body["serial"]


def test_csr_asking_for_ca_true_gets_ca_false(client, csrs):
    response = sign(client, "server", csrs["wants_ca"])
    cert = x509.load_der_x509_certificate(response.body["certificate"])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def broken_signature(csr_der: bytes) -> bytes:
    return csr_der[:-3] + bytes([csr_der[-3] ^ 0x01]) + csr_der[-2:]


@pytest.mark.parametrize("case, code", [
    ("broken csr signature", "bad_csr_signature"),
    ("rsa-1024", "key_too_weak"),
    ("san type not allowed", "san_type_not_allowed"),
    ("validity over maximum", "validity_too_long"),
    ("unknown profile", "unknown_profile"),
    ("request asks for CA:TRUE", "bad_request"),
    ("attribute not allowed", "attribute_not_allowed"),
])
def test_refusals_are_typed_and_the_signer_keeps_answering(client, csrs, case, code):
    body = {"issuer": "root", "profile": "server", "csr": csrs["rsa2048"],
            "subject": [["CN", "www.example.org"]], "sans": [["dns", "www.example.org"]]}
    if case == "broken csr signature":
        body["csr"] = broken_signature(csrs["rsa2048"])
    elif case == "rsa-1024":
        body["csr"] = csrs["rsa1024"]
    elif case == "san type not allowed":
        body["sans"] = [["email", "a@example.org"]]
    elif case == "validity over maximum":
        body["days"] = 731
    elif case == "unknown profile":
        body["profile"] = "server-deluxe"
    elif case == "request asks for CA:TRUE":
        body["extensions"] = {"basicConstraints": "critical,CA:TRUE"}
    elif case == "attribute not allowed":
        body["subject"].append(["O", "Not Verified Inc."])
    response = client.call("sign_x509", body)
    assert response.error["code"] == code, response.error
    assert client.call("ca_info").ok


def test_same_request_id_yields_one_certificate(client, csrs, signer):
    first = sign(client, "server", csrs["p256"], request_id="idem-1")
    second = sign(client, "server", csrs["p256"], request_id="idem-1")
    assert first.ok and second.ok
    assert first.body["certificate"] == second.body["certificate"] and second.body["replayed"] is True
    conflict = sign(client, "server", csrs["rsa2048"], request_id="idem-1")
    assert conflict.error["code"] == "request_id_conflict"
    with sqlite3.connect(Path(signer.config).parent / "repository.sqlite") as db:
        count = db.execute("SELECT COUNT(*) FROM certificates WHERE request_id = 'idem-1'").fetchone()[0]
    assert count == 1


def test_200_requests_give_200_distinct_long_serials(client, csrs):
    ids = [client.send("sign_x509", {"issuer": "root", "profile": "server", "csr": csrs["p256"],
                                     "subject": [["CN", "www.example.org"]],
                                     "sans": [["dns", "www.example.org"]]}) for _ in range(200)]
    serials = set()
    for request_id in ids:
        response = client.wait_for(request_id, timeout=120)
        assert response.ok, response.error
        serial = int(response.body["serial"], 16)
        assert serial.bit_length() == 128
        serials.add(serial)
    assert len(serials) == 200


def fetch(signer, issuer, out: Path):
    result = run_tool("signer-client", "--port", signer.client_path, "--json", "fetch-crl",
                      "--issuer", issuer, "--out", str(out))
    assert result.returncode == 0, result.stderr
    import json
    return json.loads(result.stdout)


def test_revoke_then_fetch_crl_lists_it_and_openssl_agrees(client, csrs, chain, signer, tmp_path):
    response = sign(client, "server", csrs["rsa2048"])
    cert_pem = tmp_path / "leaf.pem"
    cert_pem.write_bytes(x509.load_der_x509_certificate(response.body["certificate"]).public_bytes(Encoding.PEM))
    serial = response.body["serial"]
    revoked = client.call("revoke_x509", {"issuer": "root", "serial": serial, "reason": "keyCompromise"})
    assert revoked.ok and revoked.body["already_revoked"] is False
    again = client.call("revoke_x509", {"issuer": "root", "serial": serial, "reason": "superseded"})
    assert again.body["already_revoked"] is True and again.body["reason"] == 1
    crl_file = tmp_path / "root.crl"
    fetch(signer, "root", crl_file)
    openssl("crl", "-inform", "DER", "-in", str(crl_file), "-CAfile", str(chain / "root.pem"), "-noout", "-verify")
    crl = x509.load_der_x509_crl(crl_file.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    crl_pem = tmp_path / "root.crl.pem"
    crl_pem.write_bytes(crl.public_bytes(Encoding.PEM))
    result = openssl("verify", "-crl_check", "-CAfile", str(chain / "root.pem"), "-CRLfile", str(crl_pem),
                     str(cert_pem), check=False)
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr


@pytest.mark.parametrize("body, code", [
    ({"issuer": "root", "serial": "abcdef0123"}, "unknown_serial"),
    ({"issuer": "root", "serial": "zz"}, "bad_request"),
    ({"issuer": "nope", "serial": "01"}, "unknown_issuer"),
    ({"issuer": "root", "serial": "01", "reason": "removeFromCRL"}, "invalid_reason"),
    ({"issuer": "root", "serial": "01", "reason": 7}, "invalid_reason"),
])
def test_revocation_refusals(client, body, code):
    assert client.call("revoke_x509", body).error["code"] == code


def hsm_signatures(signer) -> int:
    return next(r for r in signer.status() if r["name"] == "hsm")["signatures"]


def test_fetch_twice_without_change_makes_no_signature(signer, tmp_path):
    out = tmp_path / "class3.crl"
    first = fetch(signer, "class3", out)
    before = hsm_signatures(signer)
    second = fetch(signer, "class3", out)
    assert second["status"] == "unchanged" and second["number"] == first["number"]
    assert hsm_signatures(signer) == before
