"""The key ceremony (`signer ceremony`, core/hsm/ceremony.py) on SoftHSM: every step kind, made
through the real command; the results checked with openssl and with PyKCS11 attributes read
back from the token; re-runs change nothing; what exists differently is refused.

The ceremony runs on the test process's token (the `softhsm` fixture) so this process can
read the keys' attributes; every label carries a per-module prefix.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from pathlib import Path

import PyKCS11
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from core.hsm.ceremony import load_ceremony
from core.dev.softhsm import SOFTHSM_MODULE
from tests.support.helpers import PIN, ROOT, TOKEN, run_tool, tool

PREFIX = f"cer-{secrets.token_hex(3)}-"


def openssl(*args: str, cwd: Path) -> str:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def write_ceremony(folder: Path, softhsm: dict, steps: list[dict], issuers: list | None = None,
                   name: str = "ceremony.yaml") -> Path:
    pin_file = private_file(folder / "pin", PIN + "\n")
    document = {"hsm": {"module": SOFTHSM_MODULE, "token_label": TOKEN,
                        "pin_file": str(pin_file), "softhsm_conf": softhsm["conf"]},
                "steps": steps}
    if issuers:
        document["issuers"] = issuers
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def ceremony(config: Path, *steps: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    # No terminal: a passphrase prompt would be refused, never wait.
    return subprocess.run([tool("signer"), "ceremony", "--config", str(config), *steps],
                          capture_output=True, text=True, timeout=300, stdin=stdin)


def log_lines(folder: Path) -> list[dict]:
    path = folder / "ceremony-log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def old_ca(folder: Path) -> dict[str, Path]:
    """Two old CAs as CAcert's openssl setup would have them: an RSA root whose PKCS#8 key is
    passphrase-protected, and an EC P-384 one in the traditional encrypted PEM form."""
    passphrase = private_file(folder / "old.pass", "an old passphrase with spaces\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-keyout", "old-root.key", "-passout",
            f"file:{passphrase}", "-subj", "/O=Old CA/CN=Old Root", "-days", "3650",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "old-root.pem", cwd=folder)
    openssl("ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "plain-ec.key", cwd=folder)
    openssl("ec", "-in", "plain-ec.key", "-aes256", "-passout", f"file:{passphrase}",
            "-out", "old-class3.key", cwd=folder)
    openssl("req", "-x509", "-key", "plain-ec.key", "-subj", "/O=Old CA/CN=Old Class 3",
            "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "old-class3.pem", cwd=folder)
    (folder / "plain-ec.key").unlink()
    # A subordinate CA's request made outside the token (another HSM, say).
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "outside.key", "-subj", "/O=New CA/CN=Outside Sub", "-out", "outside.csr",
            cwd=folder)
    return {"pass": passphrase, "root_key": folder / "old-root.key",
            "root_cert": folder / "old-root.pem", "class3_key": folder / "old-class3.key",
            "class3_cert": folder / "old-class3.pem", "csr": folder / "outside.csr"}


SUBJECT = {"O": "CAcert Inc. (test)", "OU": "http://www.CAcert.org", "CN": "Ceremony Root"}


def full_steps(old: dict[str, Path]) -> list[dict]:
    return [
        {"name": "root-key", "kind": "key", "key_label": PREFIX + "root", "key_type": "rsa-4096",
         "public_key": "out/root-key.pub.pem"},
        {"name": "root", "kind": "root", "key_label": PREFIX + "root", "subject": SUBJECT,
         "certificate": "out/root.pem", "validity_days": 3650},
        {"name": "sub-key", "kind": "key", "key_label": PREFIX + "sub", "key_type": "ecdsa-p384"},
        {"name": "sub-csr", "kind": "csr", "key_label": PREFIX + "sub",
         "subject": {"O": "CAcert Inc. (test)", "CN": "Ceremony Sub"}, "csr": "out/sub.csr",
         "hash": "sha384"},
        {"name": "sub", "kind": "subordinate", "csr": "out/sub.csr",
         "issuer_certificate": "out/root.pem", "issuer_key_label": PREFIX + "root",
         "certificate": "out/sub.pem", "validity_days": 1825, "path_length": 0,
         "crl_url": "http://crl.example.invalid/root.crl",
         "policy_oids": ["1.3.6.1.4.1.18506.4.4"]},
        {"name": "outside", "kind": "subordinate", "csr": str(old["csr"]),
         "issuer_certificate": "out/root.pem", "issuer_key_label": PREFIX + "root",
         "certificate": "out/outside.pem", "validity_days": 365, "path_length": 0},
        {"name": "audit-key", "kind": "key", "key_label": PREFIX + "audit",
         "key_type": "ecdsa-p256", "public_key": "out/audit-key.pem"},
        {"name": "import-root", "kind": "import", "key_file": str(old["root_key"]),
         "passphrase_file": str(old["pass"]), "certificate": str(old["root_cert"]),
         "key_label": PREFIX + "old-root"},
        {"name": "import-class3", "kind": "import", "key_file": str(old["class3_key"]),
         "passphrase_file": str(old["pass"]), "certificate": str(old["class3_cert"]),
         "key_label": PREFIX + "old-class3", "public_key": "out/old-class3.pub.pem"},
        {"name": "root-csr", "kind": "csr", "key_label": PREFIX + "root", "subject": SUBJECT,
         "csr": "out/root.csr"},
        {"name": "cross", "kind": "cross", "csr": "out/root.csr",
         "issuer_certificate": str(old["root_cert"]), "issuer_key_label": PREFIX + "old-root",
         "certificate": "out/cross.pem", "validity_days": 1825},
        {"name": "old-class3-signs", "kind": "subordinate", "csr": str(old["csr"]),
         "issuer_certificate": str(old["class3_cert"]), "issuer_key_label": PREFIX + "old-class3",
         "certificate": "out/by-old-class3.pem", "validity_days": 30, "hash": "sha384"},
    ]


@pytest.fixture(scope="module")
def done(softhsm, tmp_path_factory):
    """One whole ceremony, run through the command; then its folder and outputs."""
    folder = tmp_path_factory.mktemp("ceremony")
    old = old_ca(folder)
    config = write_ceremony(folder, softhsm, full_steps(old), issuers=[
        {"id": "root", "certificate": "out/root.pem", "key_label": PREFIX + "root"},
        {"id": "old", "certificate": str(old["root_cert"]), "key_label": PREFIX + "old-root"},
        {"id": "later", "certificate": "out/not-yet.pem", "key_label": PREFIX + "later"}])
    result = ceremony(config, "all")
    return {"folder": folder, "config": config, "result": result, "old": old}


def test_every_step_runs_and_the_certificates_verify_with_openssl(done):
    folder, result = done["folder"], done["result"]
    assert result.returncode == 0, result.stderr
    out = folder / "out"
    verify = openssl("verify", "-CAfile", "out/root.pem", "out/sub.pem", "out/outside.pem", cwd=folder)
    assert verify.count(": OK") == 2
    root = x509.load_pem_x509_certificate((out / "root.pem").read_bytes())
    sub = x509.load_pem_x509_certificate((out / "sub.pem").read_bytes())
    assert root.subject == root.issuer and root.public_key().key_size == 4096
    assert sub.public_key().curve.name == "secp384r1"
    assert sub.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert sub.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    csr = x509.load_pem_x509_csr((out / "sub.csr").read_bytes())
    assert csr.is_signature_valid and csr.public_key().public_numbers() == \
        sub.public_key().public_numbers()
    # the audit key kind: EC P-256, its public half written
    audit = serialization.load_pem_public_key((out / "audit-key.pem").read_bytes())
    assert audit.curve.name == "secp256r1"
    for name in ("root.pem", "sub.pem", "sub.csr", "root-key.pub.pem", "audit-key.pem"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_imported_passphrase_protected_keys_sign_certificates_openssl_verifies(done):
    folder = done["folder"]
    assert done["result"].returncode == 0, done["result"].stderr
    # the cross certificate: the new root's key certified by the old RSA root's imported key
    assert ": OK" in openssl("verify", "-CAfile", str(done["old"]["root_cert"]), "out/cross.pem",
                             cwd=folder)
    # the old EC class 3 key (traditional encrypted PEM), imported, signs too
    assert ": OK" in openssl("verify", "-CAfile", str(done["old"]["class3_cert"]),
                             "out/by-old-class3.pem", cwd=folder)


def test_fingerprints_printed_and_logged_match_the_files(done):
    folder, result = done["folder"], done["result"]
    assert result.returncode == 0, result.stderr
    root = x509.load_pem_x509_certificate((folder / "out" / "root.pem").read_bytes())
    cert_sha = root.fingerprint(hashes.SHA256()).hex()
    spki_sha = hashlib.sha256(root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    assert f"sha256 {cert_sha}, spki_sha256 {spki_sha}" in result.stdout
    records = {r["step"]: r for r in log_lines(folder)}
    assert set(records) == {s["name"] for s in full_steps(done["old"])}
    assert all(r["result"] == "made" for r in records.values())
    assert records["root"]["outputs"][str(folder / "out" / "root.pem")] == {
        "sha256": cert_sha, "spki_sha256": spki_sha}
    config_sha = hashlib.sha256(done["config"].read_bytes()).hexdigest()
    assert records["cross"]["inputs"]["ceremony_file"] == config_sha
    assert records["cross"]["inputs"][str(folder / "out" / "root.csr")] == \
        hashlib.sha256((folder / "out" / "root.csr").read_bytes()).hexdigest()
    # the issuers snippet: the issuers whose certificate exists, with their key labels
    snippet = yaml.safe_load(result.stdout.split("issuers configuration for signer.yaml:\n")[1])
    assert snippet == {"issuers": [
        {"id": "root", "certificate": str(folder / "out" / "root.pem"), "key_label": PREFIX + "root"},
        {"id": "old", "certificate": str(done["old"]["root_cert"]),
         "key_label": PREFIX + "old-root"}]}


def test_a_second_run_finds_everything_and_changes_nothing(softhsm, done):
    folder = done["folder"]
    assert done["result"].returncode == 0, done["result"].stderr
    before = {p: p.read_bytes() for p in (folder / "out").iterdir()}
    log_before = (folder / "ceremony-log.jsonl").read_bytes()
    # no passphrase file and no terminal: the imports must not even need the passphrase
    steps = full_steps(done["old"])
    for step in steps:
        step.pop("passphrase_file", None)
    again = write_ceremony(folder, softhsm, steps, name="again.yaml")
    result = ceremony(again, "all")
    assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in (folder / "out").iterdir()} == before
    assert (folder / "ceremony-log.jsonl").read_bytes() == log_before
    assert result.stdout.count("nothing to do") == len(steps)
    assert "generating" not in result.stdout and "issuing" not in result.stdout


def _private_key_attributes(label: str) -> dict[str, object]:
    lib = PyKCS11.PyKCS11Lib()
    lib.load(SOFTHSM_MODULE)
    slot = next(s for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == TOKEN)
    session = lib.openSession(slot)
    try:
        try:
            session.login(PIN)
        except PyKCS11.PyKCS11Error as exc:
            assert exc.value == PyKCS11.CKR_USER_ALREADY_LOGGED_IN
        (handle,) = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                                         (PyKCS11.CKA_LABEL, label)])
        names = [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE, PyKCS11.CKA_SIGN,
                 PyKCS11.CKA_DECRYPT, PyKCS11.CKA_UNWRAP, PyKCS11.CKA_DERIVE, PyKCS11.CKA_TOKEN]
        values = dict(zip(["sensitive", "extractable", "sign", "decrypt", "unwrap", "derive",
                           "token"], session.getAttributeValue(handle, names)))
        secret = (PyKCS11.CKA_PRIVATE_EXPONENT
                  if session.getAttributeValue(handle, [PyKCS11.CKA_KEY_TYPE])[0] == PyKCS11.CKK_RSA
                  else PyKCS11.CKA_VALUE)
        # PyKCS11 turns CKR_ATTRIBUTE_SENSITIVE into None for that attribute
        values["secret_readable"] = session.getAttributeValue(
            handle, [secret], allAsBinary=True)[0] is not None
        return values
    finally:
        session.closeSession()


@pytest.mark.parametrize("label", ["root", "sub", "audit", "old-root", "old-class3"])
def test_keys_on_the_token_are_sensitive_not_extractable_and_sign_only(done, label):
    assert done["result"].returncode == 0, done["result"].stderr
    attributes = _private_key_attributes(PREFIX + label)
    assert attributes == {"sensitive": True, "extractable": False, "sign": True,
                          "decrypt": False, "unwrap": False, "derive": False, "token": True,
                          "secret_readable": False}


def test_import_refuses_a_key_that_is_not_the_certificates(softhsm, done, tmp_path):
    old = done["old"]
    label = PREFIX + "mismatch"
    config = write_ceremony(tmp_path, softhsm, [
        {"name": "import", "kind": "import", "key_file": str(old["class3_key"]),
         "passphrase_file": str(old["pass"]), "certificate": str(old["root_cert"]),
         "key_label": label}])
    result = ceremony(config, "import")
    assert result.returncode == 1
    assert (f"the key in {old['class3_key']} does not match certificate {old['root_cert']}"
            in result.stderr and "nothing imported" in result.stderr)
    assert not _token_has_label(label)
    (record,) = log_lines(tmp_path)
    assert record["result"] == "refused" and "does not match" in record["error"]


def test_import_refuses_a_wrong_passphrase_and_a_missing_one(softhsm, done, tmp_path):
    old = done["old"]
    wrong = private_file(tmp_path / "wrong.pass", "not it\n")
    open_file = tmp_path / "open.pass"
    open_file.write_text(old["pass"].read_text())
    open_file.chmod(0o644)
    base = {"name": "import", "kind": "import", "key_file": str(old["root_key"]),
            "certificate": str(old["root_cert"]), "key_label": PREFIX + "never"}
    cases = [({"passphrase_file": str(wrong)}, "wrong passphrase"),
             ({"passphrase_file": str(open_file)}, "is open to group or others"),
             ({}, "give passphrase_file, or run at a terminal")]
    for extra, message in cases:
        config = write_ceremony(tmp_path, softhsm, [{**base, **extra}])
        result = ceremony(config, "import")
        assert result.returncode == 1 and message in result.stderr, (extra, result.stderr)
    assert not _token_has_label(PREFIX + "never")


def _token_has_label(label: str) -> bool:
    lib = PyKCS11.PyKCS11Lib()
    lib.load(SOFTHSM_MODULE)
    slot = next(s for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == TOKEN)
    session = lib.openSession(slot)
    try:
        try:
            session.login(PIN)
        except PyKCS11.PyKCS11Error as exc:
            assert exc.value == PyKCS11.CKR_USER_ALREADY_LOGGED_IN
        return bool(session.findObjects([(PyKCS11.CKA_LABEL, label)]))
    finally:
        session.closeSession()


def test_a_different_key_under_the_label_is_refused_not_replaced(softhsm, done, tmp_path):
    old = done["old"]
    # the audit key's label holds an EC P-256 key; a step wanting RSA there, and an import
    # of another key under it, are both refused
    config = write_ceremony(tmp_path, softhsm, [
        {"name": "rsa", "kind": "key", "key_label": PREFIX + "audit", "key_type": "rsa-2048"},
        {"name": "import", "kind": "import", "key_file": str(old["root_key"]),
         "passphrase_file": str(old["pass"]), "certificate": str(old["root_cert"]),
         "key_label": PREFIX + "audit"}])
    spki = (done["folder"] / "out" / "audit-key.pem").read_bytes()
    for step, message in (("rsa", "different key labelled"), ("import", "different key labelled")):
        result = ceremony(config, step)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "refusing to replace it" in result.stderr
    assert [r["result"] for r in log_lines(tmp_path)] == ["refused", "refused"]
    # the token's key is still the audit key
    check = write_ceremony(tmp_path, softhsm, [
        {"name": "audit", "kind": "key", "key_label": PREFIX + "audit", "key_type": "ecdsa-p256",
         "public_key": str(done["folder"] / "out" / "audit-key.pem")}], name="check.yaml")
    result = ceremony(check, "audit")
    assert result.returncode == 0 and "nothing to do" in result.stdout, result.stderr
    assert (done["folder"] / "out" / "audit-key.pem").read_bytes() == spki


def test_an_output_file_with_other_content_is_refused_not_overwritten(softhsm, done, tmp_path):
    folder = done["folder"]
    other_cert = done["old"]["root_cert"].read_bytes()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "root.pem").write_bytes(other_cert)
    (tmp_path / "out" / "root-key.pub.pem").write_text("something else\n")
    steps = [s for s in full_steps(done["old"]) if s["name"] in ("root-key", "root", "sub")]
    steps[2]["issuer_certificate"] = str(folder / "out" / "root.pem")
    (tmp_path / "out" / "sub.csr").write_bytes((folder / "out" / "sub.csr").read_bytes())
    (tmp_path / "out" / "sub.pem").write_bytes((folder / "out" / "outside.pem").read_bytes())
    config = write_ceremony(tmp_path, softhsm, steps)
    expected = {"root-key": "refusing to overwrite", "root": "it holds another certificate",
                "sub": "it holds another certificate (subject"}
    for name, message in expected.items():
        before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
        result = ceremony(config, name)
        assert result.returncode == 1 and message in result.stderr, (name, result.stderr)
        assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_the_example_ceremony_file_loads():
    loaded = load_ceremony(ROOT / "config" / "ceremony.example.yaml")
    assert [s.kind for s in loaded.steps.values()] == [
        "key", "root", "key", "csr", "subordinate", "import", "csr", "cross", "key"]
    assert loaded.steps["audit-key"].key_type == "ecdsa-p256"


def test_a_mistake_in_the_ceremony_file_names_the_key(softhsm, tmp_path):
    config = write_ceremony(tmp_path, softhsm, [
        {"name": "k", "kind": "key", "key_label": PREFIX + "x", "key_type": "rsa-1024"}])
    result = run_tool("signer", "ceremony", "--config", str(config), "k")
    assert result.returncode == 2
    assert "steps[0].key_type: expected one of rsa-2048" in result.stderr
    assert not _token_has_label(PREFIX + "x")
