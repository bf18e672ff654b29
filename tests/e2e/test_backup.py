"""`signer-admin backup --to FILE` (issue 16.5): an online, consistent, verified copy that a
signer runs with after a restore (docs/operations.md, "Backup and restore")."""
from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import threading
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests.support.helpers import SignerProcess, run_tool, signer_config
from tools.client.library import SignerClient


def csr_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(Encoding.DER)


SIGN_BODY = {"issuer": "root", "profile": "server", "csr": csr_der(),
             "subject": [["CN", "www.example.org"]], "sans": [["dns", "www.example.org"]]}


def issued(repository: Path) -> int:
    with sqlite3.connect(f"file:{repository}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM certificates WHERE status = 'issued'").fetchone()[0]


def backup(config: Path, target: Path) -> tuple[int, dict]:
    result = run_tool("signer-admin", "--config", str(config), "backup", "--to", str(target), "--json",
                      timeout=120)
    return result.returncode, json.loads(result.stdout) if result.stdout else {"stderr": result.stderr}


def test_a_backup_taken_while_signing_restores_into_a_running_signer(signer, dev_data, tmp_path):
    signed, refused = [], []
    stop = threading.Event()
    enough = threading.Event()

    def keep_signing() -> None:
        with SignerClient(signer.client_path, timeout=60) as client:
            while not stop.is_set():
                answer = client.call("sign_x509", SIGN_BODY)
                (signed if answer.ok else refused).append(answer)
                if len(signed) >= 3:
                    enough.set()

    worker = threading.Thread(target=keep_signing)
    worker.start()
    try:
        assert enough.wait(120), "the signer did not sign 3 requests"
        before = len(signed)
        code, report = backup(signer.config, tmp_path / "signer.backup")
        after = len(signed)
        # Signing goes on after the backup: it did not stop or block the signer.
        deadline_count = after + 3
        while len(signed) < deadline_count and worker.is_alive():
            worker.join(0.1)
    finally:
        stop.set()
        worker.join(120)
    assert code == 0, report
    assert not refused, [r.error for r in refused]
    target = tmp_path / "signer.backup"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert report["integrity"] == "ok" and report["audit_head"].startswith(f"{report['audit_entries']}:")
    # One snapshot: every certificate answered before the backup began, at most those
    # answered by the time it ended (+1: the one committed but not yet answered).
    assert before <= issued(target) <= after + 1
    assert not Path(f"{target}-wal").exists()  # one self-contained file

    # Restore: the backup becomes the repository of a signer, which runs and signs.
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy2(target, restored / "repository.sqlite")
    config = signer_config(dev_data, restored)
    process = SignerProcess(config, log_dir=restored)
    try:
        with SignerClient(process.client_path, timeout=60) as client:
            answer = client.call("sign_x509", SIGN_BODY)
        assert answer.ok, answer.error
    finally:
        assert process.stop() == 0
    audit = run_tool("signer-admin", "--config", str(config), "verify-audit", "--head", report["audit_head"])
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert issued(restored / "repository.sqlite") == issued(target) + 1


def test_a_copy_that_does_not_verify_is_not_written(signer, tmp_path):
    # A repository whose audit log was rewritten: its backup must not pass as good.
    folder = tmp_path / "tampered"
    folder.mkdir()
    with SignerClient(signer.client_path, timeout=60) as client:
        assert client.call("sign_x509", SIGN_BODY).ok  # at least one audit entry
    code, _ = backup(signer.config, folder / "repository.sqlite")
    assert code == 0
    with sqlite3.connect(folder / "repository.sqlite") as db:
        db.execute("DROP TRIGGER audit_log_no_update")
        db.execute("UPDATE audit_log SET body = body || ' ' WHERE seq = 1")
    config = yaml.safe_load(signer.config.read_text())
    config["repository"]["path"] = str(folder / "repository.sqlite")
    (folder / "signer.yaml").write_text(yaml.safe_dump(config))
    code, report = backup(folder / "signer.yaml", tmp_path / "bad.backup")
    assert code == 1 and report["error"]["code"] == "backup_not_verified", report
    assert "BROKEN at entry 1" in report["error"]["message"]
    assert not (tmp_path / "bad.backup").exists() and list(tmp_path.glob(".bad.backup*")) == []


def test_an_existing_file_is_never_overwritten(signer, tmp_path):
    target = tmp_path / "keep.me"
    target.write_text("precious")
    code, report = backup(signer.config, target)
    assert code == 2 and report["error"]["code"] == "backup_failed"
    assert target.read_text() == "precious"
