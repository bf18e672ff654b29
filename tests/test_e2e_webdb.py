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
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from cryptography import x509

from tests.helpers import signer_config, tool
from tests.mariadb_server import MariaDbServer, mariadb_available
from tests.test_crash_safety import kill_whole_signer, start_signer
from tests.test_e2e_openpgp import ALICE, ALICE_WORK, Gpg, ca_signatures, fingerprint
from tests.webdb_side import client_config, issued_serials, open_web_side

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


GOOD_ROWS = [  # table, subject column as the web app writes it, extra columns, expected profile
    ("emailcerts", "/CN=Alice Example/emailAddress=alice@example.org/subjectAltName=email:alice@example.org",
     {}, "root"),
    ("emailcerts", "/CN=Alice Example/emailAddress=alice@example.org/subjectAltName=email:alice@example.org",
     {"codesign": 1}, "class3"),
    ("domaincerts", "/CN=www.example.org/subjectAltName=DNS:www.example.org/subjectAltName=DNS:example.org",
     {"md": "sha256"}, "root"),
    ("domaincerts", "/CN=chat.example.org/subjectAltName=DNS:chat.example.org/"
     "subjectAltName=otherName:1.3.6.1.5.5.7.8.5;UTF8:chat.example.org", {}, "root"),
    ("orgemailcerts", "/CN=Bob/emailAddress=bob@corp.example/O=Corp Ltd/OU=IT/L=Berlin/ST=Berlin/C=DE/"
     "subjectAltName=email:bob@corp.example", {}, "class3"),
    ("orgdomaincerts", "/CN=corp.example/O=Corp Ltd/C=DE/subjectAltName=DNS:corp.example/"
     "subjectAltName=DNS:www.corp.example", {"md": "sha384"}, "class3"),
]
BAD_ROWS = [  # table, subject, extra columns, csr bytes or None, what the reason must say
    ("emailcerts", "/CN=x/emailAddress=x@example.org/subjectAltName=email:x@example.org", {},
     b"not a CSR", "no PKCS#10 request"),
    ("domaincerts", "/CN=www.example.org/O=Not Allowed Ltd/subjectAltName=DNS:www.example.org", {},
     None, "attribute_not_allowed"),
    ("domaincerts", "/CN=old.example.org/subjectAltName=DNS:old.example.org", {"md": "sha1"},
     None, "hash_not_allowed"),
]


@pytest.fixture(scope="module")
def user_key():
    """Alice's key as gpg makes it, with a verified and an unverified address."""
    gpg = Gpg()
    try:
        gpg("--quick-gen-key", ALICE, "ed25519", "default", "never")
        gpg("--quick-add-uid", fingerprint(gpg, ALICE), ALICE_WORK)
        yield gpg("--export", ALICE).stdout
    finally:
        gpg.close()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_daemon_serves_every_table_and_publishes_crls(backend, signer, dev_data, user_key, tmp_path, request):
    webdb, env = webdb_section(backend, tmp_path, request)
    config = client_config(tmp_path, signer.client_path, webdb)
    web = open_web_side(config)
    good = [(table, web.add_certificate(table, subject, **extra), issuer)
            for table, subject, extra, issuer in GOOD_ROWS]
    bad = [(table, web.add_certificate(table, subject, csr=csr, **extra), reason)
           for table, subject, extra, csr, reason in BAD_ROWS]
    web.add_email(7, "alice@example.org")  # verified; alice@work.example is not
    gpg_row = web.add_gpg(user_key, "alice@example.org", multiple=1)

    daemon = Daemon(config, env)
    try:
        wait_until("every good row issued", lambda: all(web.row(t, i)["crt_name"] for t, i, _ in good)
                   and web.row("gpg", gpg_row)["crt"], daemon=daemon)
        wait_until("every bad row given up", lambda: all(web.row(t, i)["warning"] == 3 for t, i, _ in bad),
                   daemon=daemon)

        root, class3 = dev_data / "ca" / "root.pem", dev_data / "ca" / "class3.pem"
        for table, row_id, issuer in good:
            row, path = web.row(table, row_id), tmp_path / "www" / web.row(table, row_id)["crt_name"]
            result = openssl("verify", "-CAfile", str(root), "-untrusted", str(class3), str(path))
            assert result.returncode == 0 and "OK" in result.stdout, (table, row_id, result.stderr)
            cert = web.certificate(table, row_id)
            assert row["serial"] == f"{cert.serial_number:X}"
            assert row["expire"] == cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S")
            assert row["warning"] == 0 and row["crt_name"].startswith("crt/")
            expected_ca = x509.load_pem_x509_certificate((root if issuer == "root" else class3).read_bytes())
            assert cert.issuer == expected_ca.subject
            # the subject is the row's, not the CSR's ("ignored")
            cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            assert f"/CN={cn}/" in row["subject"]
            assert web.bookkeeping(table, row_id, "sign")["state"] == "done"
        for table, row_id, reason in bad:
            record = web.bookkeeping(table, row_id, "sign")
            assert web.row(table, row_id)["crt_name"] == "" and record["state"] == "failed"
            assert reason in record["last_error"], record

        signed = (tmp_path / "www" / web.row("gpg", gpg_row)["crt"]).read_text()
        sigs = ca_signatures(signed, dev_data / "ca" / "openpgp-ca.asc")
        assert set(sigs) == {ALICE}, sigs  # only the verified address was certified
        assert sigs[ALICE][0][1] == "!"  # gpg: good signature
        assert web.row("gpg", gpg_row)["expire"] > "2027-"

        # revocation requests, marked as the web app marks them
        revoked = [good[0], good[4]]  # one per issuer
        for table, row_id, _ in revoked:
            web.request_revocation(table, row_id)
        wait_until("revocations written back",
                   lambda: all(web.row(t, i)["revoked"] not in (MARKER, "0000-00-00 00:00:00") for t, i, _ in revoked),
                   daemon=daemon)
        for table, row_id, issuer in revoked:
            crl_file = tmp_path / "crl" / ("revoke.crl" if issuer == "root" else "class3-revoke.crl")
            serial = web.certificate(table, row_id).serial_number
            wait_until(f"{crl_file.name} listing {serial:x}",
                       lambda: crl_file.exists() and x509.load_der_x509_crl(crl_file.read_bytes())
                       .get_revoked_certificate_by_serial_number(serial) is not None, daemon=daemon)
            ca = root if issuer == "root" else class3
            for path, form in ((crl_file, "DER"), (crl_file.with_name(crl_file.name + ".pem"), "PEM")):
                result = openssl("crl", "-verify", "-noout", "-CAfile", str(ca), "-inform", form, "-in", str(path))
                assert result.returncode == 0 and "verify OK" in result.stderr + result.stdout, result
            pem = x509.load_pem_x509_crl(crl_file.with_name(crl_file.name + ".pem").read_bytes())
            assert pem.get_revoked_certificate_by_serial_number(serial) is not None

        code, status = daemon.status()
        assert code == 0 and status["alive"] and status["health"]["healthy"]
        assert sum(status["queue"].values()) == 0
        assert status["counters"]["issued"] == len(good) and status["counters"]["revoked"] == 2
        assert "last_error" in status and status["last_error"]["message"]
        assert set(status["crl"]) == {"root", "class3"}
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
    assert daemon.status()[0] == 3  # not running any more
    issued = issued_serials(Path(yaml_load(signer.config)["repository"]["path"]))
    for table, row_id, _ in good:
        assert issued[f"{webdb['request_id_prefix']}:{table}:{row_id}:sign"] == [web.row(table, row_id)["serial"].lower()]


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
