"""The WebDB client daemon end to end: rows inserted as CAcert's web application inserts them,
in SQLite and in a real MariaDB server started here; `signer-client run` and the signer
talking over a pty; results checked by openssl, gpg and the signer's own repository.

Also: the whole signer killed mid-run (and the daemon itself killed once): no row is lost,
none gets a second certificate.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from cryptography import x509

from tests.support.helpers import signer_config, tool
from tests.support.mariadb_server import MariaDbServer, mariadb_available
from tests.faults.test_crash_safety import kill_whole_signer, start_signer
from tests.e2e.test_openpgp import Gpg, ca_signatures, fingerprint
from tests.support.webdb_side import (CacertWebApp, SmtpSink, client_config, csr_pem, issued_serials, open_web_side,
                              org_prefix, xmpp_server_subject)

pytestmark = pytest.mark.e2e
MARKER = "1970-01-01 10:00:01"
PASSWORD_ENV = "WEBDB_TEST_PASSWORD"


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    if not mariadb_available():
        pytest.skip("mariadb-server is not installed (scripts/setup.sh installs it)")
    server = MariaDbServer(tmp_path_factory.mktemp("mariadb"))
    server.start()
    yield server
    server.stop()


def webdb_section(backend: str, folder: Path, request: pytest.FixtureRequest) -> tuple[dict, dict]:
    """The client's webdb section and the environment the daemon needs for it."""
    prefix = f"t{secrets.token_hex(4)}"  # request ids must not meet earlier tests' ids
    if backend == "sqlite":
        return {"driver": "sqlite", "path": str(folder / "webdb.sqlite"), "request_id_prefix": prefix}, {}
    server = request.getfixturevalue("mariadb")
    database = f"cacert_{prefix}"
    with server.root_connect() as conn:
        conn.cursor().execute(f"CREATE DATABASE `{database}` CHARACTER SET latin1")
        conn.cursor().execute(f"GRANT ALL ON `{database}`.* TO 'cacert'@'127.0.0.1'")
    os.environ[PASSWORD_ENV] = server.password  # the test process plays the web app with it too
    return ({"driver": "mysql", "host": "127.0.0.1", "port": server.port, "database": database,
             "user": server.user, "password_env": PASSWORD_ENV, "request_id_prefix": prefix},
            {PASSWORD_ENV: server.password})


class Daemon:
    """`signer-client run` as a child process, its log in a file."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.log = config.parent / "daemon.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([tool("signer-client"), "run", "--config", str(config)],
                                            stdout=log, stderr=log, env={**os.environ, **env})

    def status(self) -> tuple[int, dict[str, Any]]:
        result = subprocess.run([tool("signer-client"), "status", "--json", "--config", str(self.config)],
                                capture_output=True, text=True, timeout=30)
        return result.returncode, (json.loads(result.stdout) if result.stdout else {})

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        return self.process.returncode


def wait_until(what: str, check: Callable[[], Any], timeout: float = 120, daemon: Daemon | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    log = daemon.log.read_text()[-3000:] if daemon else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def openssl_spkac(folder: Path) -> str:
    """A real SPKAC as a browser's <keygen> made it (openssl spkac): the base64 after `SPKAC=`."""
    key = folder / "spkac-key.pem"
    assert openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)).returncode == 0
    result = openssl("spkac", "-key", str(key), "-challenge", "cacert-challenge", "-digest", "sha256")
    assert result.returncode == 0 and result.stdout.startswith("SPKAC="), result.stderr
    return result.stdout.strip().split("=", 1)[1]


@pytest.fixture(scope="module")
def member_key():
    """Alice's OpenPGP key as www/gpg.php would pass it on: a uid with her verified address, a
    name-only uid, and a uid with an address she has not verified."""
    gpg = Gpg()
    try:
        gpg("--quick-gen-key", "Alice Example <alice@example.org>", "ed25519", "default", "never")
        fpr = fingerprint(gpg, "alice@example.org")
        gpg("--quick-add-uid", fpr, "Alice Example")
        gpg("--quick-add-uid", fpr, "Alice Example <alice@unverified.example>")
        yield gpg("--export", fpr).stdout
    finally:
        gpg.close()


@pytest.fixture
def smtp(tmp_path):
    """A real SMTP server process on loopback for the notification mails."""
    sink = SmtpSink(tmp_path)
    yield sink
    sink.stop()


def days_of(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_cacert_rows_end_as_client_pl_left_them(backend, signer, dev_data, member_key, smtp, tmp_path, request):
    """Rows inserted as CAcert's PHP inserts them (tests/support/webdb_side.py CacertWebApp), on the
    real schema; each row checked against what client.pl would have left."""
    webdb, env = webdb_section(backend, tmp_path, request)
    site = tmp_path / "site"  # CAcert's layout: site/www (names ../csr/...), site/csr, site/crt
    (site / "www").mkdir(parents=True)
    config = client_config(tmp_path, signer.client_path,
                           {**webdb, "files_root": str(site), "names_relative_to": str(site / "www")},
                           mail={"host": "127.0.0.1", "port": smtp.port})
    app = CacertWebApp(open_web_side(config).db, site)
    app.member(11, "alice@example.org", "Alice", "de_DE", awarded=[35, 20], deleted_awards=[100])  # 55 points
    app.member(12, "bob@example.org", "Bob", "", awarded=[10], deleted_awards=[90])  # 10 points
    app.member(13, "carol@corp.example", "Carol", "en_AU")
    app.member(14, "dave@corp.example", "Dave", "")
    app.db.execute("INSERT INTO email (memid, email, hash) VALUES (11, 'alice@unverified.example', 'pending')")
    app.organisation(5, "Corp Ltd", admins=[13, 14])
    domid = app.domain(11, "example.org")
    alice = "/CN=Alice Example/emailAddress=alice@example.org"
    org = org_prefix("IT", "Corp Ltd", "Berlin", "Berlin", "DE")
    rows = {  # name: (table, row id, issuer, days, hash, profile)
        "class3": ("emailcerts", app.client_csr(11, alice, csr_pem(), rootcert=2, cn="alice@example.org"),
                   "class3", 730, "sha512", "client"),
        "root": ("emailcerts", app.client_csr(11, alice, csr_pem(), rootcert=1, cn="alice@example.org"),
                 "root", 730, "sha512", "client"),
        "unassured": ("emailcerts", app.client_csr(12, "/CN=CAcert WoT User/emailAddress=bob@example.org", csr_pem(),
                                                   cn="bob@example.org"), "root", 180, "sha512", "client"),
        "server": ("domaincerts", app.server(domid, ["www.example.org", "example.org", "mail.example.org"], csr_pem()),
                   "root", 730, "sha512", "server-jabber"),
        "org-client": ("orgemailcerts", app.org_client(5, org + "/CN=Bob Corp/emailAddress=bob@corp.example", csr_pem(),
                                                       rootcert=2, orgadminid=13, cn="bob@corp.example"),
                       "class3", 365, "sha256", "client-org"),
        # md sha384, which the real enum cannot hold: stored as '', signed with the signer's default
        "org-server": ("orgdomaincerts", app.org_server(5, org + xmpp_server_subject(["corp.example", "www.corp.example"]),
                                                        csr_pem(), rootcert=2, orgadminid=14, md="sha384",
                                                        cn="corp.example"),
                       "class3", 730, "sha256", "server-org"),
        "codesign": ("emailcerts", app.client_csr(11, alice, csr_pem(), rootcert=2, codesign=1), "class3", 730,
                     "sha512", "client-codesign"),
        "sso": ("emailcerts", app.client_csr(11, alice + "/emailAddress = " + "f" * 40, csr_pem(), rootcert=1),
                "root", 730, "sha512", "client"),
        "spkac": ("emailcerts", app.client_spkac(12, ["bob@example.org"], "CAcert WoT User", openssl_spkac(tmp_path)),
                  "root", 180, "sha512", "client"),
    }
    not_a_csr = app.client_csr(11, alice, b"not a CSR")
    gpg_row = app.gpg(11, "alice@example.org", member_key)

    daemon = Daemon(config, env)
    try:
        wait_until("every row issued", lambda: all(app.row(t, i)["crt_name"] for t, i, *_ in rows.values())
                   and app.row("gpg", gpg_row)["crt"], daemon=daemon)
        wait_until("the bad row given up", lambda: app.row("emailcerts", not_a_csr)["warning"] == 3, daemon=daemon)
        root_ca, class3_ca = dev_data / "ca" / "root.pem", dev_data / "ca" / "class3.pem"
        repository = Path(yaml_load(signer.config)["repository"]["path"])
        for name, (table, row_id, issuer, days, hash_name, profile) in rows.items():
            row = app.row(table, row_id)
            assert row["crt_name"] == app.certpath("crt", table, row_id), name  # from the id, as client.pl
            path = site / "www" / row["crt_name"]
            result = openssl("verify", "-CAfile", str(root_ca), "-untrusted", str(class3_ca), str(path))
            assert result.returncode == 0 and "OK" in result.stdout, (name, result.stderr)
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            ca = x509.load_pem_x509_certificate((root_ca if issuer == "root" else class3_ca).read_bytes())
            assert cert.issuer == ca.subject, name
            assert abs(days_of(cert) - days) < 0.01, (name, days_of(cert))
            assert cert.signature_hash_algorithm.name == hash_name, name
            assert row["serial"] == f"{cert.serial_number:X}" and row["warning"] == 0, name
            assert row["expire"] == cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"), name
            with sqlite3.connect(f"file:{repository}?mode=ro", uri=True) as conn:
                assert conn.execute("SELECT profile FROM certificates WHERE serial=?",
                                    (f"{cert.serial_number:x}",)).fetchone() == (profile,), name
        assert app.row("orgdomaincerts", rows["org-server"][1])["md"] == ""
        # SANs: every name as DNS and XmppAddr, org rows too
        for name, names in (("server", ["www.example.org", "example.org", "mail.example.org"]),
                            ("org-server", ["corp.example", "www.corp.example"])):
            table, row_id = rows[name][:2]
            san = x509.load_pem_x509_certificate((site / "www" / app.row(table, row_id)["crt_name"]).read_bytes()) \
                .extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == names
            assert [o.value for o in san.get_values_for_type(x509.OtherName)] == [b"\x0c" + bytes([len(n)]) + n.encode()
                                                                                  for n in names]
        # SSO: issued without the hash attribute, and the log says so
        sso = x509.load_pem_x509_certificate((site / "www" / app.row(*rows["sso"][:2])["crt_name"]).read_bytes())
        assert [a.value for a in sso.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)] == ["alice@example.org"]
        assert "emailAddress = " + "f" * 40 in daemon.log.read_text() and "skipped" in daemon.log.read_text()
        # SPKAC: the subject the request file names
        spkac = x509.load_pem_x509_certificate((site / "www" / app.row(*rows["spkac"][:2])["crt_name"]).read_bytes())
        assert spkac.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "CAcert WoT User"
        assert spkac.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)[0].value == "bob@example.org"
        assert "no PKCS#10 request" in app.db.query("SELECT last_error FROM signer_client_requests WHERE row_id=? "
                                                    "AND tbl='emailcerts'", (not_a_csr,))[0]["last_error"]
        # OpenPGP: the verified-address uid and the name-only uid, not the unverified one
        signed = (site / "www" / app.row("gpg", gpg_row)["crt"]).read_text()
        assert app.row("gpg", gpg_row)["crt"] == app.certpath("crt", "gpg", gpg_row)
        sigs = ca_signatures(signed, dev_data / "ca" / "openpgp-ca.asc")
        assert set(sigs) == {"Alice Example <alice@example.org>", "Alice Example"}, sigs
        assert all(s[0][1] == "!" for s in sigs.values())

        # A renewal: the daemon serves the row in the web app's INSERT-then-UPDATE window
        old_table, old_id = rows["class3"][:2]
        old_file = site / "www" / app.row(old_table, old_id)["crt_name"]
        old_pem = old_file.read_bytes()
        renewed = app.renew_start(old_id)
        wait_until("the renewal issued", lambda: app.row("emailcerts", renewed)["crt_name"], daemon=daemon)
        app.renew_finish(old_id, renewed)
        assert old_file.read_bytes() == old_pem  # the old certificate's file is untouched
        new_row = app.row("emailcerts", renewed)
        assert new_row["crt_name"] == app.certpath("crt", "emailcerts", renewed)
        new_cert = x509.load_pem_x509_certificate((site / "www" / new_row["crt_name"]).read_bytes())
        assert f"{new_cert.serial_number:X}" == new_row["serial"] != app.row(old_table, old_id)["serial"]
        assert abs(days_of(new_cert) - 730) < 0.01  # rootcert 2 is copied: class 3 again
        assert new_cert.issuer == x509.load_pem_x509_certificate(class3_ca.read_bytes()).subject

        # Revocations: a personal one (mail to the member), an org one (mail to every admin)
        revoked = [rows["root"], rows["org-server"], rows["class3"]]
        for table, row_id, *_ in revoked:
            app.revoke(table, row_id)
        wait_until("revocations written back", lambda: all(app.row(t, i)["revoked"] not in (MARKER, "0000-00-00 00:00:00")
                                                            for t, i, *_ in revoked), daemon=daemon)
        for table, row_id, issuer, *_ in revoked:
            crl_file = tmp_path / "crl" / ("revoke.crl" if issuer == "root" else "class3-revoke.crl")
            serial = int(app.row(table, row_id)["serial"], 16)
            wait_until(f"{crl_file.name} listing {serial:x}", lambda: crl_file.exists() and x509.load_der_x509_crl(
                crl_file.read_bytes()).get_revoked_certificate_by_serial_number(serial) is not None, daemon=daemon)
            other = tmp_path / "crl" / ("class3-revoke.crl" if issuer == "root" else "revoke.crl")
            assert x509.load_der_x509_crl(other.read_bytes()).get_revoked_certificate_by_serial_number(serial) is None
            ca = root_ca if issuer == "root" else class3_ca
            result = openssl("crl", "-verify", "-noout", "-CAfile", str(ca), "-inform", "DER", "-in", str(crl_file))
            assert result.returncode == 0 and "verify OK" in result.stderr + result.stdout, result

        # The mails client.pl sent: issuance per row, OpenPGP, revocations; in the member's language
        def to(address: str) -> list:
            return [m for m in smtp.messages() if m["To"] == address]
        wait_until("the revocation mails", lambda: len([m for m in to("dave@corp.example")
                                                        if "revoked" in m.get_content()]) == 1, daemon=daemon)
        alice_mails = to("alice@example.org")
        assert all(m["Subject"].startswith("[CAcert.org] Ihr") for m in alice_mails)
        issued_ids = sorted(int(m.get_content().split("&cert=")[1].split()[0]) for m in alice_mails
                            if "account.php" in m.get_content())
        assert issued_ids == sorted([rows[n][1] for n in ("class3", "root", "server", "codesign", "sso")] + [renewed])
        assert len([m for m in alice_mails if "gpg.php?id=3&cert=" in m.get_content()]) == 1
        assert len([m for m in alice_mails if "widerrufen" in m.get_content()]) == 2  # root and class3
        assert len([m for m in to("bob@example.org") if m["Subject"] == "[CAcert.org] Your certificate"]) == 2
        assert [m.get_content().count("Hi Carol") for m in to("carol@corp.example")] == [1, 1]  # org client, revocation
        dave = to("dave@corp.example")  # org server: issued to the admin who asked, revoked to every admin
        assert len(dave) == 2 and any("corp.example' with the serial number" in m.get_content() for m in dave)

        code, status = daemon.status()
        assert code == 0 and status["health"]["clock_skew_s"] is not None
        assert sum(status["queue"].values()) == 0
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_signer_killed_mid_run_loses_no_row_and_issues_none_twice(backend, dev_data, tmp_path, request):
    folder = tmp_path / "signer"
    folder.mkdir()
    signer_yaml = signer_config(dev_data, folder)
    admin_port = yaml_load(signer_yaml)["actor_system"]["admin_port"]
    signer = start_signer(signer_yaml, folder)
    webdb, env = webdb_section(backend, tmp_path, request)
    # the signer's client-tty link: the same path after every restart
    config = client_config(tmp_path, str(folder / "client-tty"), webdb, signer={"max_in_flight": 4})
    web = open_web_side(config)
    subjects = {"emailcerts": "/CN=U{n}/emailAddress=u{n}@example.org/subjectAltName=email:u{n}@example.org",
                "domaincerts": "/CN=h{n}.example.org/subjectAltName=DNS:h{n}.example.org"}
    rows = [(table, web.add_certificate(table, subjects[table].format(n=n)))
            for n in range(40) for table in (("emailcerts",) if n % 2 else ("domaincerts",))]
    done = lambda: [(t, i) for t, i in rows if web.row(t, i)["crt_name"]]  # noqa: E731
    daemon = Daemon(config, env)
    try:
        wait_until("some rows issued", lambda: len(done()) >= 8, daemon=daemon)
        kill_whole_signer(signer, signer_yaml, admin_port)
        wait_until("the daemon to see the signer away",
                   lambda: daemon.status()[0] == 1 and not daemon.status()[1]["signer"]["reachable"], daemon=daemon)
        issued_before = len(done())
        assert issued_before < len(rows), "the signer was killed too late to test anything"

        # The web side keeps working while the signer is away; nothing is marked failed.
        rows += [(t, web.add_certificate(t, subjects[t].format(n=100 + n))) for n, t in
                 enumerate(["emailcerts", "domaincerts"] * 5)]
        to_revoke = done()[:3]
        for table, row_id in to_revoke:
            web.request_revocation(table, row_id)
        time.sleep(3)
        assert all(web.row(t, i)["warning"] == 0 for t, i in rows)
        assert all(web.row(t, i)["revoked"] == MARKER for t, i in to_revoke)
        _, status = daemon.status()
        assert status["queue"]["emailcerts.revoke"] + status["queue"]["domaincerts.revoke"] == 3
        assert "signer away" in status["last_error"]["message"]

        # The daemon dies too (its in-memory state is gone); a new one takes over.
        daemon.process.kill()
        daemon.process.wait(30)
        daemon = Daemon(config, env)
        signer = start_signer(signer_yaml, folder)
        wait_until("a few more rows issued", lambda: len(done()) >= issued_before + 4, daemon=daemon)
        daemon.process.kill()  # once more, mid-run: an answer may be lost between signer and row
        daemon.process.wait(30)
        daemon = Daemon(config, env)
        wait_until("every row issued", lambda: len(done()) == len(rows), timeout=180, daemon=daemon)
        wait_until("every revocation written back",
                   lambda: all(web.row(t, i)["revoked"] != MARKER for t, i in to_revoke), daemon=daemon)
        wait_until("the daemon to see the signer healthy", lambda: daemon.status()[0] == 0, daemon=daemon)
    finally:
        daemon.stop()
        signer.stop()

    issued = issued_serials(Path(yaml_load(signer_yaml)["repository"]["path"]))
    prefix = webdb["request_id_prefix"]
    ours = {rid: serials for rid, serials in issued.items() if rid.startswith(prefix + ":")}
    assert len(ours) == len(rows)  # nothing issued that has no row
    serials = set()
    for table, row_id in rows:
        row = web.row(table, row_id)
        assert ours[f"{prefix}:{table}:{row_id}:sign"] == [row["serial"].lower()]  # exactly one certificate
        assert row["warning"] == 0
        serials.add(row["serial"])
        cert = web.certificate(table, row_id)
        assert f"{cert.serial_number:X}" == row["serial"]
    assert len(serials) == len(rows)
    crl = x509.load_der_x509_crl((tmp_path / "crl" / "revoke.crl").read_bytes())
    for table, row_id in to_revoke:
        assert crl.get_revoked_certificate_by_serial_number(web.certificate(table, row_id).serial_number)


def yaml_load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())
