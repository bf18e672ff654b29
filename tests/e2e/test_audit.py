"""The audit head and seals end to end (issue 11, point 3): a signer made by `signer
dev-init` (its token holds the audit key) serves the WebDB daemon; every state-changing
answer and health carry the repository's head, the Hsm actor seals it, the daemon keeps
the newest head, and once the signer's last entries are deleted that kept head makes
`signer-admin verify-audit --head` fail although the chain and the remaining seals verify.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import SignerProcess, run_tool, signer_config
from tests.webdb.test_e2e import Daemon, wait_until, webdb_section
from tests.support.webdb_side import client_config, open_web_side
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e
SUBJECT = "/CN=www.example.org/subjectAltName=DNS:www.example.org"


def repository_head(path: Path) -> dict:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        seq, digest = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return {"seq": seq, "hash": digest}


def verify_audit(config: Path, *extra: str) -> tuple[int, dict, str]:
    result = run_tool("signer-admin", "--config", str(config), "verify-audit", "--json", *extra)
    return result.returncode, (json.loads(result.stdout) if result.stdout else {}), result.stderr


def test_heads_in_answers_seals_and_a_cut_log_caught_by_the_daemons_head(dev_data, tmp_path, request):
    target = tmp_path / "signer"
    target.mkdir()
    config = signer_config(dev_data, target)
    repository = Path(yaml.safe_load(config.read_text())["repository"]["path"])
    signer = SignerProcess(config, log_dir=target)
    try:
        node = yaml.safe_load(config.read_text())["node_id"]
        webdb, env = webdb_section("sqlite", tmp_path, request)
        client_yaml = client_config(tmp_path, signer.client_path, webdb)
        web = open_web_side(client_yaml)
        rows = [web.add_certificate("domaincerts", SUBJECT) for _ in range(3)]
        daemon = Daemon(client_yaml, env)
        try:
            wait_until("rows issued", lambda: all(web.row("domaincerts", r)["crt_name"] for r in rows),
                       daemon=daemon)
            # The daemon keeps the head the last answer or health carried: the log's end.
            kept = wait_until("the daemon's head at the log's end", lambda: (
                (heads := daemon.status()[1].get("audit_heads") or {}).get(node, {}).get("seq")
                == repository_head(repository)["seq"] and heads[node]), daemon=daemon)
            code, status = daemon.status()
            assert code == 0 and status["audit_warning"] is None
        finally:
            assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
        assert kept["hash"] == repository_head(repository)["hash"]
        text = run_tool("signer-client", "status", "--config", str(client_yaml)).stdout
        assert f"audit head {node}: {kept['seq']}:{kept['hash']}" in text

        with SignerClient(signer.client_path, timeout=30) as client:
            serial = web.row("domaincerts", rows[0])["serial"]
            revoked = client.call("revoke_x509", {"issuer": "root", "serial": serial})
            assert revoked.ok, revoked.error
            assert revoked.body["audit_head"] == {**repository_head(repository), "node_id": node}
            again = client.call("revoke_x509", {"issuer": "root", "serial": serial})
            assert again.body["already_revoked"] and "audit_head" not in again.body  # nothing changed
            built = client.call("fetch_crl", {"issuer": "root"})
            assert built.ok and built.body["audit_head"] == {**repository_head(repository), "node_id": node}
            unchanged = client.call("fetch_crl", {"issuer": "root", "have_number": built.body["number"]})
            assert unchanged.body["status"] == "unchanged" and "audit_head" not in unchanged.body
            health = client.call("health").body
            assert health["audit_head"] == {**repository_head(repository), "node_id": node}
            assert health["hsm"]["audit_key"] == {"label": "audit-key", "present": True}
            assert not [p for p in health["problems"] if p.startswith("audit")], health["problems"]

        # The Hsm actor seals asynchronously: wait until nothing is left unsealed.
        deadline = time.monotonic() + 60
        while True:
            code, report, stderr = verify_audit(config, "--head", f"{kept['seq']}:{kept['hash']}")
            assert code == 0, (report, stderr)
            if report["unsealed_entries"] == 0:
                break
            assert time.monotonic() < deadline, report
            time.sleep(0.5)
        final = repository_head(repository)
        assert report["last_sealed_seq"] == final["seq"] and report["seals_checked"] >= 1
    finally:
        signer.stop()

    # Someone with the file deletes the last entries, and the seals that named them.
    with closing(sqlite3.connect(repository)) as db:
        for trigger in ("audit_log_no_delete", "audit_seals_no_delete"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DELETE FROM audit_log WHERE seq >= ?", (kept["seq"] - 1,))
        db.execute("DELETE FROM audit_seals WHERE seq >= ?", (kept["seq"] - 1,))
        db.commit()
    code, report, _ = verify_audit(config)
    assert code == 0 and report["chain_ok"]  # what is left verifies: chain and seals alone miss it
    code, report, _ = verify_audit(config, "--head", f"{kept['seq']}:{kept['hash']}")
    assert code == 1 and report["chain_ok"] and not report["seal_problems"]
    assert report["head_problem"] == (f"head {kept['seq']}:{kept['hash'][:16]}... is not in the log:"
                                      f" it ends at entry {kept['seq'] - 2} (entries were cut)")
