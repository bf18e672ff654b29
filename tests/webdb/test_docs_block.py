"""The copy-paste block of docs/webdb-client.md ("Running it") that puts one request into the
development WebDB: run exactly as written (bash, in the repository's folder, DATA set), on a
WebDB made from config/client.dev.yaml by `signer-client init-webdb`; then the daemon (against
the fake signer) issues the row into the file the block names.
"""
from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.support.fake_signer import FakeSigner
from tools.client import cli as client_cli
from tools.webdb.config import load_client_config
from tools.webdb.daemon import ClientDaemon
from tools.webdb.db import WebDb

ROOT = Path(__file__).resolve().parents[2]


def docs_block() -> str:
    text = (ROOT / "docs" / "webdb-client.md").read_text()
    match = re.search(r"<!-- dev-request-block -->\n```sh\n(.*?)\n```", text, re.S)
    assert match, "the dev request block is missing from docs/webdb-client.md"
    return match.group(1)


@pytest.fixture
def fake():
    made = FakeSigner()
    yield made
    made.close()


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_the_docs_block_puts_a_request_the_daemon_serves(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    config = yaml.safe_load((ROOT / "config" / "client.dev.yaml").read_text().replace("@DATA@", str(data)))
    config["signer"]["device"] = fake.device  # the fake signer instead of the dev signer's pty
    config_path = data / "client.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert client_cli.main(["init-webdb", "--config", str(config_path)]) == 0

    for expected_id in (1, 2):  # pasted twice: the second row gets its own id and file
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", docs_block()], cwd=ROOT, env={
            "DATA": str(data), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        crt = data / "www" / "crt" / "client" / "0" / f"client-{expected_id}.crt"
        assert done.stdout.strip().endswith(f"row {expected_id}: the certificate will be {crt}")

    db = WebDb(load_client_config(config_path).webdb)
    try:
        rows = db.query("SELECT id, memid, csr_name, crt_name, subject, rootcert FROM emailcerts ORDER BY id")
        assert [r["csr_name"] for r in rows] == ["csr/client/0/client-1.csr", "csr/client/0/client-2.csr"]
        assert rows[0]["subject"] == "/CN=Alice Example/emailAddress=alice@example.org" and rows[0]["crt_name"] == ""
        x509.load_pem_x509_csr((data / "www" / rows[0]["csr_name"]).read_bytes())

        daemon = ClientDaemon(load_client_config(config_path))
        try:
            daemon.cycle()
        finally:
            daemon.link.close()
            daemon.db.close()
        for row_id in (1, 2):
            row = db.query("SELECT crt_name, serial FROM emailcerts WHERE id=?", (row_id,))[0]
            assert row["crt_name"] == f"crt/client/0/client-{row_id}.crt"
            cert = x509.load_pem_x509_certificate((data / "www" / row["crt_name"]).read_bytes())
            assert f"{cert.serial_number:X}" == row["serial"]
            assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 180  # member 1: no points
    finally:
        db.close()
