"""sign_openpgp end to end: user keys made by real gpg, certified over the pty by a signer
whose OpenPGP CA key is on SoftHSM (RSA-4096 and ECDSA P-256), checked by gpg itself."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.helpers import SignerProcess, dev_init, run_tool, signer_config
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e
ALICE, ALICE_WORK, ALICE_OLD = "Alice <alice@example.org>", "Alice Work <alice@work.example>", "Alice Old <alice@old.example>"


class Gpg:
    """gpg in its own short-lived home."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="g", dir="/tmp")
        os.chmod(self.home, 0o700)

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["gpg", "--homedir", self.home, "--batch", "--yes", "--pinentry-mode", "loopback",
                                 "--passphrase", "", *args], input=input, capture_output=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr.decode()
        return result

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def user_keys():
    """Public keys of users, as gpg makes and exports them."""
    gpg = Gpg()
    keys = {}
    try:
        for name, algo in (("rsa3072", "rsa3072"), ("ed25519", "ed25519"), ("p256", "nistp256")):
            uid = f"{name} user <{name}@example.org>"
            gpg("--quick-gen-key", uid, algo, "default", "never")
            if name == "ed25519":
                fpr = fingerprint(gpg, uid)
                gpg("--quick-add-key", fpr, "cv25519", "encr", "never")
            keys[name] = (uid, gpg("--export", uid).stdout)
        gpg("--quick-gen-key", ALICE, "rsa3072", "default", "never")
        fpr = fingerprint(gpg, ALICE)
        gpg("--quick-add-uid", fpr, ALICE_WORK)
        gpg("--quick-add-uid", fpr, ALICE_OLD)
        keys["three_uids"] = (ALICE, gpg("--export", fpr).stdout)
        gpg("--quick-revoke-uid", fpr, ALICE_OLD)
        keys["revoked_uid"] = (ALICE, gpg("--export", fpr).stdout)
        gpg("--quick-gen-key", "Weak <weak@example.org>", "rsa1024", "default", "never")
        keys["weak"] = ("Weak <weak@example.org>", gpg("--export", "weak@example.org").stdout)
        keys["secret"] = (ALICE, gpg("--export-secret-keys", fpr).stdout)
        yield keys
    finally:
        gpg.close()


def fingerprint(gpg: Gpg, uid: str) -> str:
    out = gpg("--with-colons", "--list-keys", uid).stdout.decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module", params=["rsa-4096", "ecdsa-p256"])
def pgp_signer(request, tmp_path_factory):
    data = dev_init(tmp_path_factory.mktemp(f"pgp-{request.param}"), "--openpgp-key", request.param)
    target = tmp_path_factory.mktemp("pgp-run")
    signer = SignerProcess(signer_config(data, target), log_dir=target)
    yield signer, data
    signer.stop()


def certify(signer, key: bytes, uids: list[str], **extra):
    with SignerClient(signer.client_path, timeout=60) as client:
        return client.call("sign_openpgp", {"key": key, "uids": uids, **extra})


def ca_signatures(result_armour: str, ca_key: Path) -> dict[str, list[list[str]]]:
    """uid -> colon records of the CA's signatures on it, as `gpg --check-sigs` reports them."""
    gpg = Gpg()
    try:
        gpg("--import", str(ca_key))
        gpg("--import", input=result_armour.encode())
        ca_fpr_out = gpg("--with-colons", "--list-keys", "--fingerprint", "gpg@cacert.invalid").stdout.decode()
        ca_keyid = next(line.split(":")[4] for line in ca_fpr_out.splitlines() if line.startswith("pub:"))
        out = gpg("--with-colons", "--check-sigs", check=False).stdout.decode()
    finally:
        gpg.close()
    sigs: dict[str, list[list[str]]] = {}
    uid, on_user_key = None, False
    for line in out.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            uid, on_user_key = None, fields[4] != ca_keyid  # skip the CA key's self-signature
        elif fields[0] == "uid":
            uid = fields[9]
        elif fields[0] == "sig" and on_user_key and uid is not None and fields[4] == ca_keyid:
            sigs.setdefault(uid, []).append(fields)
    return sigs


@pytest.mark.parametrize("name", ["rsa3072", "ed25519", "p256"])
def test_certifies_gpg_keys_and_gpg_checks_them(pgp_signer, user_keys, name):
    signer, data = pgp_signer
    uid, key = user_keys[name]
    response = certify(signer, key, [uid], days=30)
    assert response.ok, response.error
    sigs = ca_signatures(response.body["key"], data / "ca" / "openpgp-ca.asc")
    assert list(sigs) == [uid]
    (record,) = sigs[uid]
    assert record[1] == "!"  # good signature
    created, expires = int(record[5]), int(record[6])
    assert expires - created == 30 * 86400
    assert record[10].startswith("10")  # generic certification, exportable


def test_only_requested_uids_are_certified(pgp_signer, user_keys):
    signer, data = pgp_signer
    _, key = user_keys["three_uids"]
    response = certify(signer, key, [ALICE, ALICE_OLD, "Mallory <m@evil.example>"])
    assert response.ok, response.error
    assert response.body["certified_uids"] == [ALICE, ALICE_OLD]
    sigs = ca_signatures(response.body["key"], data / "ca" / "openpgp-ca.asc")
    assert sorted(sigs) == sorted([ALICE, ALICE_OLD])
    assert all(r[1] == "!" and int(r[6]) - int(r[5]) == 366 * 86400 for rs in sigs.values() for r in rs)


@pytest.mark.parametrize("case, code", [
    ("revoked uid requested", "openpgp_uid_revoked"),
    ("no requested uid", "openpgp_no_uid"),
    ("weak key", "openpgp_weak_key"),
    ("secret key", "openpgp_secret_key"),
    ("two keys", "openpgp_multiple_keys"),
    ("truncated", "openpgp_malformed"),
    ("garbage", "openpgp_malformed"),
    ("oversized", "openpgp_oversized"),
    ("too many days", "validity_too_long"),
])
def test_refusals_are_typed_and_the_signer_keeps_answering(pgp_signer, user_keys, case, code):
    signer, _ = pgp_signer
    uid, key = user_keys["three_uids"]
    uids, extra = [uid], {}
    if case == "revoked uid requested":
        key, uids = user_keys["revoked_uid"][1], [ALICE, ALICE_OLD]
    elif case == "no requested uid":
        uids = ["Nobody <nobody@example.org>"]
    elif case == "weak key":
        uid, key = user_keys["weak"]
        uids = [uid]
    elif case == "secret key":
        key = user_keys["secret"][1]
    elif case == "two keys":
        key = key + user_keys["rsa3072"][1]
    elif case == "truncated":
        key = key[: len(key) // 2]
    elif case == "garbage":
        key = os.urandom(500)
    elif case == "oversized":
        key = b"\x99" + os.urandom(2 * 1024 * 1024)
    elif case == "too many days":
        extra["days"] = 400
    response = certify(signer, key, uids, **extra)
    assert response.error is not None and response.error["code"] == code, response.error
    with SignerClient(signer.client_path, timeout=30) as client:
        assert client.call("ca_info").ok


def test_same_request_id_yields_one_stored_result(pgp_signer, user_keys, tmp_path):
    signer, data = pgp_signer
    uid, key = user_keys["p256"]
    with SignerClient(signer.client_path, timeout=60) as client:
        first = client.call("sign_openpgp", {"key": key, "uids": [uid]}, request_id="pgp-idem")
        time.sleep(1.1)  # a second certification would carry another creation time
        second = client.call("sign_openpgp", {"key": key, "uids": [uid]}, request_id="pgp-idem")
    assert first.ok and second.ok and second.body["replayed"] is True
    assert first.body["key"] == second.body["key"]
    import sqlite3
    with sqlite3.connect(Path(signer.config).parent / "repository.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM openpgp_signatures WHERE request_id = 'pgp-idem'").fetchone()[0] == 1


def test_cli_writes_an_armoured_certified_key(pgp_signer, user_keys, tmp_path):
    signer, data = pgp_signer
    uid, key = user_keys["ed25519"]
    (tmp_path / "user.gpg").write_bytes(key)
    result = run_tool("signer-client", "--port", signer.client_path, "sign-openpgp", "--key",
                      str(tmp_path / "user.gpg"), "--uid", uid, "--out", str(tmp_path / "signed.asc"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "signed.asc").read_text()
    assert text.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert ca_signatures(text, data / "ca" / "openpgp-ca.asc")[uid][0][1] == "!"
