"""The takeover of an old `openssl ca` signer, end to end (docs/MIGRATION.md): an old CA
built with real `openssl ca` commands (a root and a class 3 under it, like CAcert's), its
keys imported into SoftHSM by `signer ceremony`, its history by `signer-admin
import-openssl-ca`, then the signer run: the first CRL it publishes over a folder holding
the old CA's CRL files (what `signer-client fetch-crl --out` and the WebDB daemon both do
through tools/crl_fetch.fetch_crl) lists every old revocation not past the grace period with
a higher number; pre-switch certificates revoked through revoke_x509 are in the next CRL; the WebDB
daemon on a real MariaDB, with a row for every old certificate as client.pl left it and the
old CA's CRL files in its publish folder, publishes CRLs continuing the old ones and revokes a
pre-switch certificate through its row; a second signer (real, over NATS) bootstraps
the imported history from the first; a second repository bootstrapped from the events ends with the same content."""
from __future__ import annotations

import json
import secrets
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.sync.event_signing import sign_event
from core.sync.peer_validation import PeerValidator
from core.repository.store import Repository
from tests.e2e.test_sync import Node, authenticated_nats, converge
from tests.e2e.test_sync import wait_until as wait_for
from tests.support.helpers import NatsUsers, SignerProcess, run_tool, signer_config
from tests.support.old_openssl_ca import OldCa
from tests.support.webdb_side import CacertWebApp, client_config, open_web_side
from tests.webdb.test_e2e import Daemon, mariadb, wait_until, webdb_section  # noqa: F401 (mariadb: a fixture)

pytestmark = pytest.mark.e2e
NOW = datetime.now(timezone.utc)
WEBDB_FILES = {"root": "revoke.crl", "class3": "class3-revoke.crl"}


@pytest.fixture(scope="module")
def takeover(dev_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("takeover")
    cas = {"root": OldCa(base / "old" / "root", "CAcert Root (old)", "0A10", "1000")}
    cas["class3"] = OldCa(base / "old" / "class3", "CAcert Class 3 (old)", "0B10", "2000",
                          parent=cas["root"])
    serials, old_crls = {}, {}
    publish = base / "www"  # the WebDB's publish folder, with the old CA's CRL files
    publish.mkdir()
    daemon_publish = base / "www-daemon"
    daemon_publish.mkdir()
    for issuer, ca in cas.items():
        for cn, not_after in [("live", None), ("revoked-key", None), ("revoked-plain", None),
                              ("pre-switch", None), ("pre-switch-lost", None), ("pre-switch-webdb", None),
                              ("expired-in-grace", NOW - timedelta(days=2)),
                              ("expired-past-grace", NOW - timedelta(days=500))]:
            serials[issuer, cn] = ca.issue(f"{cn}.{issuer}.example.org", not_after=not_after).serial_number
        for cn, reason in [("revoked-key", "keyCompromise"), ("revoked-plain", None),
                           ("expired-in-grace", "superseded"), ("expired-past-grace", "keyCompromise")]:
            ca.revoke(f"{cn}.{issuer}.example.org", reason)
        ca.gencrl(base / "discard.crl")
        old_crls[issuer] = ca.gencrl(publish / WEBDB_FILES[issuer])  # number N
        (base / "old-crls").mkdir(exist_ok=True)
        (base / "old-crls" / WEBDB_FILES[issuer]).write_bytes((publish / WEBDB_FILES[issuer]).read_bytes())
        # The WebDB daemon's publish folder: the old CA's files too, untouched until it runs.
        (daemon_publish / WEBDB_FILES[issuer]).write_bytes((publish / WEBDB_FILES[issuer]).read_bytes())
        ca.newcerts_file(serials[issuer, "pre-switch-lost"]).unlink()
    # The old keys onto the signer's token, by the ceremony's import step.
    dev = yaml.safe_load((dev_data / "signer.yaml").read_text())
    labels = {issuer: f"old-{issuer}-{secrets.token_hex(4)}" for issuer in cas}
    ceremony = base / "ceremony.yaml"
    ceremony.write_text(yaml.safe_dump({
        "hsm": {"module": dev["hsm"]["module"], "token_label": dev["hsm"]["token_label"],
                "pin_file": str(dev_data / dev["hsm"]["pin_file"]),
                "softhsm_conf": str(dev_data / dev["hsm"]["softhsm_conf"])},
        "log": str(base / "ceremony-log.jsonl"),
        "steps": [{"name": f"import-{issuer}", "kind": "import", "key_file": str(ca.key),
                   "certificate": str(ca.cert_path), "key_label": labels[issuer]}
                  for issuer, ca in cas.items()]}))
    made = run_tool("signer", "ceremony", "--config", str(ceremony), "all", timeout=120)
    assert made.returncode == 0, made.stderr
    config_path = signer_config(dev_data, base)
    config = yaml.safe_load(config_path.read_text())
    config["issuers"] = [{"id": issuer, "certificate": str(ca.cert_path), "key_label": labels[issuer]}
                         for issuer, ca in cas.items()]
    config_path.write_text(yaml.safe_dump(config))
    summaries = {}
    for issuer, ca in cas.items():
        result = run_tool("signer-admin", "--config", str(config_path), "import-openssl-ca",
                          "--issuer", issuer, "--ca-dir", str(ca.dir), "--crl",
                          str(publish / WEBDB_FILES[issuer]), "--json", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        summaries[issuer] = json.loads(result.stdout)
    signer = SignerProcess(config_path, log_dir=base)
    state = {"signer": signer, "cas": cas, "serials": serials, "old_crls": old_crls,
             "publish": publish, "daemon_publish": daemon_publish, "config": config_path, "summaries": summaries, "base": base}
    yield state
    signer.stop()


def fetch(state, issuer: str) -> x509.CertificateRevocationList:
    out = state["publish"] / WEBDB_FILES[issuer]
    result = run_tool("signer-client", "--port", state["signer"].client_path, "--timeout", "120",
                      "--json", "fetch-crl", "--issuer", issuer, "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    verified = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(out), "-CAfile",
                               str(state["cas"][issuer].cert_path), "-noout", "-verify"],
                              capture_output=True, text=True)
    assert "verify OK" in verified.stdout + verified.stderr, verified.stderr
    return x509.load_der_x509_crl(out.read_bytes())


def number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_first_crl_continues_the_old_one(takeover):
    for issuer in ("root", "class3"):
        old = takeover["old_crls"][issuer]
        assert takeover["summaries"][issuer]["crl_number"] == number(old)
        first = fetch(takeover, issuer)
        assert number(first) > number(old)
        old_entries = {entry.serial_number: entry for entry in old}
        new_entries = {entry.serial_number: entry for entry in first}
        past_grace = takeover["serials"][issuer, "expired-past-grace"]
        assert past_grace in old_entries and past_grace not in new_entries
        assert set(new_entries) == set(old_entries) - {past_grace}
        for serial, entry in new_entries.items():
            assert entry.revocation_date_utc == old_entries[serial].revocation_date_utc
            old_reason = old_entries[serial].extensions
            new_reason = entry.extensions
            assert [e.value for e in new_reason] == [e.value for e in old_reason]


def test_pre_switch_certificates_revoked_through_revoke_x509_are_in_the_next_crl(takeover):
    signer = takeover["signer"]
    fetch(takeover, "class3")  # the first CRL after the takeover, if not fetched yet
    for cn in ("pre-switch", "pre-switch-lost"):  # with its DER; index line only
        serial = takeover["serials"]["class3", cn]
        result = run_tool("signer-client", "--port", signer.client_path, "--timeout", "120",
                          "--json", "revoke-x509", "--issuer", "class3", "--serial",
                          format(serial, "x"), "--reason", "keyCompromise", timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
    crl = fetch(takeover, "class3")
    listed = {entry.serial_number for entry in crl}
    assert {takeover["serials"]["class3", cn] for cn in ("pre-switch", "pre-switch-lost")} <= listed
    assert takeover["serials"]["class3", "live"] not in listed


def test_the_webdb_daemon_on_mariadb_continues_the_old_crls_and_revokes_a_pre_switch_row(takeover, tmp_path,
                                                                                      request):
    signer, cas, serials = takeover["signer"], takeover["cas"], takeover["serials"]
    webdb, env = webdb_section("mariadb", tmp_path, request)
    site = tmp_path / "site"
    (site / "www").mkdir(parents=True)
    config = client_config(tmp_path, signer.client_path,
                           {**webdb, "files_root": str(site), "names_relative_to": str(site / "www")},
                           crl={"publish_dir": str(takeover["daemon_publish"])})
    app = CacertWebApp(open_web_side(config).db, site)
    app.member(11, "alice@example.org", "Alice")
    rows = {}  # every old certificate has its row, as the old signer left it (rootcert 1: root, 2: class3)
    for (issuer, cn) in serials:
        pem = (cas[issuer].dir / f"{cn}.{issuer}.example.org.crt").read_bytes()
        rows[issuer, cn] = app.issued_by_old_signer(11, pem, rootcert=1 if issuer == "root" else 2)
    files = {issuer: takeover["daemon_publish"] / name for issuer, name in WEBDB_FILES.items()}
    old = {issuer: x509.load_der_x509_crl(files[issuer].read_bytes()) for issuer in files}

    def published(issuer: str) -> x509.CertificateRevocationList:
        return x509.load_der_x509_crl(files[issuer].read_bytes())

    daemon = Daemon(config, env)
    try:
        wait_until("the daemon's first CRLs", lambda: all(number(published(i)) > number(old[i]) for i in files),
                   daemon=daemon)
        for issuer in files:
            verified = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(files[issuer]), "-CAfile",
                                       str(cas[issuer].cert_path), "-noout", "-verify"], capture_output=True, text=True)
            assert "verify OK" in verified.stdout + verified.stderr, verified.stderr
            listed = {entry.serial_number for entry in published(issuer)}
            past_grace = serials[issuer, "expired-past-grace"]
            assert {entry.serial_number for entry in old[issuer]} - {past_grace} <= listed
            assert past_grace not in listed  # its row says it expired 500 days ago: the drop is allowed
        target = serials["class3", "pre-switch-webdb"]
        assert published("class3").get_revoked_certificate_by_serial_number(target) is None
        app.revoke("emailcerts", rows["class3", "pre-switch-webdb"])
        wait_until("the pre-switch row's revocation in the class3 CRL", lambda: published(
            "class3").get_revoked_certificate_by_serial_number(target) is not None, daemon=daemon)
        wait_until("the row marked revoked as client.pl did", lambda: not str(
            app.row("emailcerts", rows["class3", "pre-switch-webdb"])["revoked"]).startswith("1970"), daemon=daemon)
        assert published("root").get_revoked_certificate_by_serial_number(target) is None
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]


def test_a_second_signer_bootstraps_the_imported_history_over_nats(takeover, dev_data, tmp_path):
    """Two real signers with sync (their own nats-servers, users, event keys): the old CA's
    history imported into a stopped A, then A and an empty B started: B applies the whole
    history from A's stream and ends with the same content digest and CRL number floors."""
    users = NatsUsers(tmp_path / "nats-users")
    nodes = {n: Node(n, dev_data, tmp_path, authenticated_nats(tmp_path, n, users)) for n in "ab"}
    issuers = yaml.safe_load(takeover["config"].read_text())["issuers"]
    try:
        nodes["a"].configure_sync(nodes["b"])
        nodes["b"].configure_sync(nodes["a"])
        for node in nodes.values():
            config = yaml.safe_load(node.config.read_text())
            config["issuers"] = issuers
            node.config.write_text(yaml.safe_dump(config))
        for issuer, ca in takeover["cas"].items():
            result = run_tool("signer-admin", "--config", str(nodes["a"].config), "import-openssl-ca",
                              "--issuer", issuer, "--ca-dir", str(ca.dir), "--crl", str(takeover["base"] / "old-crls"
                                                                                      / WEBDB_FILES[issuer]),
                              "--json", timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
        imported = nodes["a"].digest()
        for node in nodes.values():
            node.start()
        # B holds the imported content, then the same events as A (A may add its own once
        # running: converge waits until both hold the same event ids and content).
        wait_for(lambda: nodes["b"].digest() == imported, timeout=120)
        assert converge(nodes["a"], nodes["b"], timeout=120) == imported
        repos = {n: Repository(str(node.repo_path), "reader") for n, node in nodes.items()}
        try:
            for issuer in takeover["cas"]:
                assert repos["b"].previous_crl_number(issuer) == repos["a"].previous_crl_number(issuer) > 0
            assert repos["b"].quarantine_count() == 0
        finally:
            for repo in repos.values():
                repo.close()
    finally:
        for node in nodes.values():
            if node.signer:
                node.signer.stop()
            node.nats.stop()


def test_a_second_repository_bootstraps_the_same_content(takeover, tmp_path):
    takeover["signer"].stop()  # its repository file, complete and quiet
    config = yaml.safe_load(takeover["config"].read_text())
    source = Repository(config["repository"]["path"], config["node_id"])
    key = Ed25519PrivateKey.generate()
    events = source.events_after(0, 100_000)
    for event in events:
        event["signature"] = sign_event(key, event)
    validator = PeerValidator({config["node_id"]: key.public_key()},
                              {issuer: ca.certificate for issuer, ca in takeover["cas"].items()}, None)
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    outcomes, waiting = peer.apply_peer_events(events, validator)
    assert waiting is None and outcomes.count("quarantined") == 0
    assert peer.content_digest() == source.content_digest()
    for issuer in ("root", "class3"):
        assert peer.previous_crl_number(issuer) == source.previous_crl_number(issuer)
