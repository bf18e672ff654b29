"""The WebDB daemon's loop and error paths (tools/webdb/daemon.py), against a fake signer.

The fake (tests/support/fake_signer.py) serves the master end of a pty; the daemon gets the slave end
as signer.device and an SQLite WebDB. Each test programs the fake's answers and looks at
what the daemon left behind: the rows, its bookkeeping table, the certificate and CRL
files, status.json and `signer-client status`. The real signer is not involved
(tests/webdb/test_e2e.py does that).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.openpgp.packets import serialise_packet
from tests.support.fake_signer import FakeCa, FakeSigner, crl_answer
from tests.support.webdb_side import PREFIX, CacertWebApp, SmtpSink, WebSide, client_config, open_web_side
from tools.client import cli as client_cli
from tools.webdb.config import load_client_config
from tools.webdb.daemon import ClientDaemon
from tools.webdb.link import PIN_NAME, SignerAway
from tools.webdb.work import db_time

SUBJECT = "/CN=Alice/emailAddress=alice@example.org"
SERVER_SUBJECT = "/CN=www.example.org/subjectAltName=DNS:www.example.org"
GPG_KEY = serialise_packet(13, b"Alice <alice@example.org>")  # the daemon only reads the uids
MARKER = "1970-01-01 10:00:01"


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """ClientDaemon.run installs SIGTERM/SIGINT handlers; pytest's must come back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def nothing_left_open():
    """Every test closes what it opened: the fake's thread and pty, the daemons' ports and
    database connections."""
    threads_before = set(threading.enumerate())
    fds_before = set(os.listdir("/proc/self/fd"))
    yield
    assert set(threading.enumerate()) <= threads_before
    leaked = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - fds_before
              if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked


@pytest.fixture
def fakes():
    """Makes fake signers; every one is stopped (thread joined, pty closed) afterwards."""
    made: list[FakeSigner] = []

    def make(ca: FakeCa | None = None) -> FakeSigner:
        made.append(FakeSigner(ca))
        return made[-1]

    yield make
    for fake in made:
        fake.close()
    for fake in made:
        assert not fake.errors, f"the fake signer failed: {fake.errors!r}"


@pytest.fixture
def fake(fakes) -> FakeSigner:
    return fakes()


class Env:
    """One WebDB (SQLite), its files, the client YAML, and the daemons made on it."""

    def __init__(self, folder: Path, device: str) -> None:
        self.folder = folder
        self.daemons: list[ClientDaemon] = []
        self.configure(device)
        self.side: WebSide = open_web_side(self.config_path)

    def configure(self, device: str, **sections: Any) -> None:
        webdb = {"driver": "sqlite", "path": str(self.folder / "webdb.sqlite"), "retry_delay_s": 0,
                 "poll_interval_s": 0.05, **sections.pop("webdb", {})}
        signer = {"timeout_s": 2, "backoff_initial_s": 0.05, "backoff_max_s": 0.4, **sections.pop("signer", {})}
        self.config_path = client_config(self.folder, device, webdb, signer=signer, **sections)
        self.config = load_client_config(self.config_path)

    def daemon(self) -> ClientDaemon:
        self.daemons.append(ClientDaemon(load_client_config(self.config_path)))
        return self.daemons[-1]

    def round_catching(self, daemon: ClientDaemon) -> None:
        """One round through run()'s own handling (away, local trouble), left running."""
        daemon.run(cycles=1)
        daemon.status.update(running=True)
        daemon._write_status()

    def round(self, daemon: ClientDaemon) -> None:
        """One round as run() makes it, but with the status left as a running daemon's."""
        daemon.cycle()
        daemon._refresh_queue()
        daemon._write_status()

    def status(self) -> dict[str, Any]:
        return json.loads((Path(self.config.state_dir) / "status.json").read_text())

    def row(self, table: str, row_id: int) -> dict[str, Any]:
        return self.side.row(table, row_id)

    def book(self, table: str, row_id: int, action: str = "sign") -> dict[str, Any] | None:
        return self.side.bookkeeping(table, row_id, action)

    def crl_dir(self) -> Path:
        return Path(self.config.crl.publish_dir)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.link.close()
            daemon.db.close()
        self.side.db.close()


@pytest.fixture
def env(tmp_path: Path, fake: FakeSigner):
    made = Env(tmp_path, fake.device)
    yield made
    made.close()


def rid(table: str, row_id: int, action: str = "sign") -> str:
    return f"webdb:{table}:{row_id}:{action}"


def assert_issued(env: Env, fake: FakeSigner, table: str, row_id: int, issuer: str,
                  warning: int = 0) -> x509.Certificate:
    """The row has its certificate: the file parses, is the fake issuer's, and the columns match it
    (`warning`: the failed attempts before, which stay counted)."""
    row = env.row(table, row_id)
    assert row["crt_name"] == f"crt/{PREFIX[table]}/0/{PREFIX[table]}-{row_id}.crt"
    cert = env.side.certificate(table, row_id)
    cert.verify_directly_issued_by(fake.issuer(issuer).certificate)
    assert row["serial"] == format(cert.serial_number, "X")
    assert row["expire"] == cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S")
    assert row["warning"] == warning
    assert env.book(table, row_id)["state"] == "done"
    return cert


def assert_untouched(env: Env, table: str, row_id: int) -> None:
    row = env.row(table, row_id)
    assert (row["crt_name"], row["serial"], row["warning"]) == ("", "", 0)


def answering(fake: FakeSigner, special) -> None:
    """fake.respond = special, falling back to the standard signer where special returns ...
    (Ellipsis)."""
    def respond(cmd, body, request_id):
        answer = special(cmd, body, request_id)
        return fake.standard(cmd, body, request_id) if answer is ... else answer
    fake.respond = respond


def cli_status(env: Env, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = client_cli.main(["status", "--config", str(env.config_path)])
    return code, capsys.readouterr().out


# -- 1. the happy path ------------------------------------------------------------------------

def test_rows_of_two_tables_and_gpg_are_issued_and_status_counts_them(env, fake):
    alice = [env.side.add_certificate("emailcerts", SUBJECT) for _ in range(2)]
    org = env.side.add_certificate("orgdomaincerts", SERVER_SUBJECT, rootcert=2)
    gpg = env.side.add_gpg(GPG_KEY, "alice@example.org")

    env.daemon().run(cycles=1)

    certs = [assert_issued(env, fake, "emailcerts", row_id, "root") for row_id in alice]
    assert_issued(env, fake, "orgdomaincerts", org, "class3")
    assert certs[0].serial_number != certs[1].serial_number
    assert certs[0].subject.rfc4514_string() == "CN=Alice"  # the row's subject, not the CSR's
    signed = {request_id: body for cmd, body, request_id in fake.seen if cmd == "sign_x509"}
    assert {k: (v["issuer"], v["profile"]) for k, v in signed.items()} == {
        rid("emailcerts", 1): ("root", "client"), rid("emailcerts", 2): ("root", "client"),
        rid("orgdomaincerts", 1): ("class3", "server-org")}
    gpg_row = env.row("gpg", gpg)
    assert gpg_row["crt"] == "crt/gpg/0/gpg-1.crt" and gpg_row["warning"] == 0
    assert (env.side.files_root / gpg_row["crt"]).read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert fake.commands()[:2] == ["ca_info", "health"]  # a new link is checked first

    status = env.status()
    assert status["counters"] == {"issued": 3, "openpgp_signed": 1}
    assert set(status["queue"].values()) == {0}
    assert status["signer"]["reachable"] is True
    assert status["health"]["healthy"] is True and status["health"]["node_id"] == "fake"
    assert status["last_error"] is None and status["blocked"] == {}
    assert status["running"] is False  # run() ended
    assert {issuer: crl["number"] for issuer, crl in status["crl"].items()} == {"root": 1, "class3": 1}
    assert (env.crl_dir() / "revoke.crl").exists() and (env.crl_dir() / "class3-revoke.crl.pem").exists()


# -- 2. one odd row does not stall the others -------------------------------------------------

def test_a_row_failing_with_internal_error_does_not_stall_the_others(env, fake):
    odd = env.side.add_certificate("emailcerts", SUBJECT)
    others = [env.side.add_certificate("emailcerts", SUBJECT) for _ in range(5)]  # two windows of 4
    server = env.side.add_certificate("domaincerts", SERVER_SUBJECT)
    gpg = env.side.add_gpg(GPG_KEY, "alice@example.org")
    answering(fake, lambda cmd, body, request_id: ("error", "internal_error", "boom")
              if request_id == rid("emailcerts", odd) else ...)

    daemon = env.daemon()
    daemon.run(cycles=1)
    for row_id in others:
        assert_issued(env, fake, "emailcerts", row_id, "root")
    assert_issued(env, fake, "domaincerts", server, "root")
    assert env.row("gpg", gpg)["crt"] != ""
    assert env.row("emailcerts", odd)["warning"] == 1
    book = env.book("emailcerts", odd)
    assert (book["state"], book["attempts"], book["last_error"]) == ("retrying", 1, "internal_error: boom")
    assert env.status()["signer"]["reachable"] is True  # a row's trouble is not the signer away

    daemon.run(cycles=3)  # retry_delay_s 0: tried again each round until max_attempts
    row = env.row("emailcerts", odd)
    assert (row["warning"], row["crt_name"]) == (3, "")
    book = env.book("emailcerts", odd)
    assert (book["state"], book["attempts"]) == ("failed", 3)
    assert fake.ids("sign_x509").count(rid("emailcerts", odd)) == 3  # not sent in the 4th round
    assert env.status()["counters"] == {"issued": 6, "openpgp_signed": 1, "failed": 3}


# -- 3. the signer cannot serve (HSM) ---------------------------------------------------------

def test_hsm_unavailable_leaves_every_row_alone_and_the_rows_are_served_after(env, fake):
    rows = [env.side.add_certificate("emailcerts", SUBJECT) for _ in range(2)]
    server = env.side.add_certificate("domaincerts", SERVER_SUBJECT)
    hsm_down = True
    answering(fake, lambda cmd, body, request_id: ("error", "hsm_unavailable", "token gone")
              if cmd == "sign_x509" and hsm_down else ...)

    daemon = env.daemon()
    daemon.run(cycles=1)
    for row_id in rows:
        assert_untouched(env, "emailcerts", row_id)
    assert_untouched(env, "domaincerts", server)
    book = env.book("emailcerts", rows[0])
    assert (book["state"], book["attempts"], book["last_error"]) == ("retrying", 0, "hsm_unavailable: token gone")
    assert rid("domaincerts", server) not in fake.ids("sign_x509")  # the round stopped
    status = env.status()
    assert status["signer"]["reachable"] is False
    assert "hsm_unavailable" in status["signer"]["reason"]
    assert status["last_error"]["message"].startswith("signer away")
    assert "failed" not in status["counters"]
    assert status["queue"]["emailcerts.sign"] == 2 and status["queue"]["domaincerts.sign"] == 1

    hsm_down = False
    daemon.run(cycles=1)
    for row_id in rows:
        assert_issued(env, fake, "emailcerts", row_id, "root")
    assert_issued(env, fake, "domaincerts", server, "root")
    status = env.status()
    assert status["signer"]["reachable"] is True and status["counters"] == {"issued": 3}


# -- 4. a kind of work this signer cannot serve (setup) --------------------------------------

def test_unknown_profile_blocks_only_its_kind_and_status_exits_1(env, fake, capsys):
    org = env.side.add_certificate("orgemailcerts", SUBJECT, rootcert=2)
    alice = env.side.add_certificate("emailcerts", SUBJECT)
    gpg = env.side.add_gpg(GPG_KEY, "alice@example.org")
    known = {"client", "server"}
    answering(fake, lambda cmd, body, request_id: ("error", "unknown_profile", f"no profile {body['profile']}")
              if cmd == "sign_x509" and body["profile"] not in known else ...)

    daemon = env.daemon()
    env.round(daemon)
    assert_untouched(env, "orgemailcerts", org)
    book = env.book("orgemailcerts", org)  # nothing counted against the row, the reason kept
    assert (book["state"], book["attempts"]) == ("retrying", 0) and "unknown_profile" in book["last_error"]
    assert_issued(env, fake, "emailcerts", alice, "root")
    assert env.row("gpg", gpg)["crt"] != ""
    status = env.status()
    assert status["blocked"] == {"orgemailcerts.sign (client-org)": "unknown_profile: no profile client-org"}
    assert status["signer"]["reachable"] is True
    code, out = cli_status(env, capsys)
    assert code == 1
    assert "blocked: orgemailcerts.sign (client-org): unknown_profile" in out

    env.round(daemon)  # still blocked: the row is asked again, still untouched
    assert_untouched(env, "orgemailcerts", org)
    assert fake.ids("sign_x509").count(rid("orgemailcerts", org)) == 2

    known.add("client-org")  # the operator fixes the signer
    env.round(daemon)
    assert_issued(env, fake, "orgemailcerts", org, "class3")
    assert env.status()["blocked"] == {}
    assert cli_status(env, capsys)[0] == 0


def test_a_blocked_kind_with_several_rows_is_served_in_the_first_round_after_the_fix(env, fake):
    rows = [env.side.add_certificate("orgemailcerts", SUBJECT, rootcert=2) for _ in range(3)]  # one window
    known = {"client", "server"}
    slow = []

    def special(cmd, body, request_id):
        if cmd != "sign_x509":
            return ...
        if slow:
            time.sleep(0.1)  # a signature takes a while: the answers come one after the other
        return ("error", "unknown_profile", f"no profile {body['profile']}") if body["profile"] not in known else ...
    answering(fake, special)
    daemon = env.daemon()
    env.round(daemon)
    assert env.status()["blocked"] == {"orgemailcerts.sign (client-org)": "unknown_profile: no profile client-org"}
    fake.settle()  # all three requests of the window were answered (refused)

    known.add("client-org")  # later, the operator fixes the signer
    slow.append(True)
    env.round(daemon)
    assert env.status()["blocked"] == {}
    for row_id in rows:
        assert_issued(env, fake, "orgemailcerts", row_id, "class3")



def test_a_profile_the_signer_lacks_holds_up_no_other_row_of_its_table(env, fake):
    codesign = [env.side.add_certificate("emailcerts", SUBJECT, codesign=1) for _ in range(5)]  # first
    plain = [env.side.add_certificate("emailcerts", SUBJECT) for _ in range(3)]
    answering(fake, lambda cmd, body, request_id: ("error", "unknown_profile", "no profile client-codesign")
              if cmd == "sign_x509" and body["profile"] == "client-codesign" else ...)
    daemon = env.daemon()
    env.round(daemon)
    for row_id in plain:
        assert_issued(env, fake, "emailcerts", row_id, "root")
    for row_id in codesign:
        assert_untouched(env, "emailcerts", row_id)
    assert env.status()["blocked"] == {"emailcerts.sign (client-codesign)": "unknown_profile: no profile client-codesign"}


# -- 5. / 6. the request itself is wrong; the request is still in flight -------------------

def test_malformed_csr_fails_the_row_at_once(env, fake):
    bad = env.side.add_certificate("emailcerts", SUBJECT)
    good = env.side.add_certificate("emailcerts", SUBJECT)
    answering(fake, lambda cmd, body, request_id: ("error", "malformed_csr", "not a DER PKCS#10 request")
              if request_id == rid("emailcerts", bad) else ...)

    env.daemon().run(cycles=2)
    row = env.row("emailcerts", bad)
    assert (row["warning"], row["crt_name"]) == (3, "")
    book = env.book("emailcerts", bad)
    assert book["state"] == "failed" and book["attempts"] == 3
    assert book["last_error"] == "refused: malformed_csr: not a DER PKCS#10 request"
    assert fake.ids("sign_x509").count(rid("emailcerts", bad)) == 1  # not retried
    assert_issued(env, fake, "emailcerts", good, "root")
    assert env.status()["counters"] == {"issued": 1, "failed": 1}


def test_duplicate_request_is_not_counted_and_the_row_is_served_next_round(env, fake):
    row_id = env.side.add_certificate("emailcerts", SUBJECT)
    later = env.side.add_certificate("emailcerts", SUBJECT)
    first = []

    def special(cmd, body, request_id):
        if request_id == rid("emailcerts", row_id) and not first:
            first.append(request_id)
            return "error", "duplicate_request", "still in flight"
        return ...
    answering(fake, special)

    daemon = env.daemon()
    daemon.run(cycles=1)
    assert_untouched(env, "emailcerts", row_id)
    book = env.book("emailcerts", row_id)
    assert (book["state"], book["attempts"], book["last_error"]) == ("retrying", 0, "duplicate_request: still in flight")
    assert_issued(env, fake, "emailcerts", later, "root")  # the round went on
    status = env.status()
    assert status["signer"]["reachable"] is True and "failed" not in status["counters"]

    daemon.run(cycles=1)
    assert_issued(env, fake, "emailcerts", row_id, "root")
    assert env.book("emailcerts", row_id)["attempts"] == 0


# -- 7. no answer at all ------------------------------------------------------------------------

def test_a_silent_signer_is_away_nothing_is_marked_and_the_daemon_backs_off(tmp_path, fake):
    env = Env(tmp_path, fake.device)
    env.configure(fake.device, signer={"timeout_s": 1})
    try:
        row_id = env.side.add_certificate("emailcerts", SUBJECT)
        silent = {"all"}
        answering(fake, lambda cmd, body, request_id: None
                  if "all" in silent or (cmd == "sign_x509" and "sign" in silent) else ...)

        daemon = env.daemon()
        daemon.run(cycles=1)  # not even ca_info is answered
        status = env.status()
        assert status["signer"]["reachable"] is False
        assert "no answer" in status["signer"]["reason"]
        assert status["signer"]["retry_in_s"] == pytest.approx(0.05)
        assert fake.commands() == ["ca_info"]

        silent.clear()
        silent.add("sign")  # the link comes up, but the request gets no answer
        daemon.run(cycles=1)
        status = env.status()
        assert status["signer"]["reachable"] is False and "no answer" in status["signer"]["reason"]
        assert status["signer"]["retry_in_s"] == pytest.approx(0.1)  # doubled
        assert rid("emailcerts", row_id) in fake.ids("sign_x509")
        assert_untouched(env, "emailcerts", row_id)
        assert env.book("emailcerts", row_id) is None
        assert status["counters"] == {}
        assert status["signer"]["since"]  # away since the request went unanswered

        silent.clear()
        daemon.run(cycles=1)
        assert_issued(env, fake, "emailcerts", row_id, "root")
        assert env.status()["signer"]["reachable"] is True
    finally:
        env.close()


def test_a_signer_away_from_the_start_has_a_since_time(tmp_path, capsys):
    env = Env(tmp_path, str(tmp_path / "no-such-tty"))
    try:
        env.daemon().run(cycles=2)
        signer = env.status()["signer"]
        assert signer["reachable"] is False and "cannot open" in signer["reason"]
        assert "since None" not in cli_status(env, capsys)[1]
        assert signer["since"] is not None
    finally:
        env.close()


# -- 8. / 9. the answer cannot be written back ------------------------------------------------

def test_a_garbage_certificate_is_a_counted_write_back_failure(env, fake):
    bad = env.side.add_certificate("emailcerts", SUBJECT)
    good = env.side.add_certificate("emailcerts", SUBJECT)
    garbage = True

    def special(cmd, body, request_id):
        if request_id == rid("emailcerts", bad) and garbage:
            answer = fake.standard(cmd, body, "not-stored")
            return "ok", {**answer[1], "certificate": b"\x30\x03garbage"}
        return ...
    answering(fake, special)

    daemon = env.daemon()
    daemon.run(cycles=1)
    row = env.row("emailcerts", bad)
    assert (row["warning"], row["crt_name"], row["serial"]) == (1, "", "")
    assert not (env.side.files_root / "crt/client/0/client-1.crt").exists()
    book = env.book("emailcerts", bad)
    assert book["state"] == "retrying" and book["attempts"] == 1
    assert book["last_error"].startswith("write-back failed: ValueError")
    assert_issued(env, fake, "emailcerts", good, "root")
    status = env.status()
    assert status["signer"]["reachable"] is True
    assert status["counters"] == {"issued": 1, "failed": 1}

    garbage = False
    daemon.run(cycles=1)
    assert_issued(env, fake, "emailcerts", bad, "root", warning=1)


def test_an_unwritable_crt_folder_retries_the_row_and_is_not_signer_away(env, fake):
    row_id = env.side.add_certificate("emailcerts", SUBJECT)
    (env.side.files_root / "crt").write_text("a file where the crt folder should be")

    daemon = env.daemon()
    daemon.run(cycles=1)
    row = env.row("emailcerts", row_id)
    assert (row["warning"], row["crt_name"]) == (1, "")  # one row alone: it may be its own problem
    book = env.book("emailcerts", row_id)
    assert book["state"] == "retrying" and book["last_error"].startswith("write-back failed:")
    status = env.status()
    assert status["signer"]["reachable"] is True
    assert "away" not in status["last_error"]["message"]

    (env.side.files_root / "crt").unlink()
    daemon.run(cycles=1)
    cert = assert_issued(env, fake, "emailcerts", row_id, "root", warning=1)
    # the same request id got the signer's stored answer: one certificate for the row
    assert format(cert.serial_number, "x") == fake.stored[rid("emailcerts", row_id)]["serial"]
    assert fake.ids("sign_x509") == [rid("emailcerts", row_id)] * 2


def test_a_crt_folder_failing_every_row_stops_the_counting(env, fake):
    rows = [env.side.add_certificate("emailcerts", SUBJECT) for _ in range(12)]
    (env.side.files_root / "crt").write_text("a file where the crt folder should be")
    daemon = env.daemon()
    for _ in range(3):
        env.round_catching(daemon)
    assert [env.row("emailcerts", r)["warning"] for r in rows] == [1] * 8 + [0] * 4
    assert "rows in a row failed on this side" in env.status()["blocked"]["local files"]
    (env.side.files_root / "crt").unlink()
    daemon.run(cycles=2)
    for row_id in rows:
        assert env.row("emailcerts", row_id)["crt_name"]
    assert "local files" not in env.status()["blocked"]


# -- 10. revocations and CRLs -------------------------------------------------------------------

def test_a_revocation_is_in_the_crl_of_the_same_round_and_a_lower_number_is_refused(env, fake):
    row_id = env.side.add_certificate("emailcerts", SUBJECT)
    daemon = env.daemon()
    daemon.run(cycles=1)
    cert = assert_issued(env, fake, "emailcerts", row_id, "root")
    der_path, pem_path = env.crl_dir() / "revoke.crl", env.crl_dir() / "revoke.crl.pem"
    assert x509.load_der_x509_crl(der_path.read_bytes()).get_revoked_certificate_by_serial_number(
        cert.serial_number) is None

    env.side.request_revocation("emailcerts", row_id)
    before = len(fake.seen)
    daemon.run(cycles=1)  # crl.interval_s is 600: only the revocation makes this fetch
    round_cmds = [cmd for cmd, _, _ in fake.seen[before:]]
    assert round_cmds.index("revoke_x509") < round_cmds.index("fetch_crl")
    revoked_at = fake.issuer("root").revoked[cert.serial_number]
    assert env.row("emailcerts", row_id)["revoked"] == db_time(revoked_at.isoformat())
    assert env.book("emailcerts", row_id, "revoke")["state"] == "done"
    crl = x509.load_der_x509_crl(der_path.read_bytes())
    assert crl.is_signature_valid(fake.issuer("root").key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert pem_path.read_bytes() == crl.public_bytes(Encoding.PEM)
    status = env.status()
    assert status["crl"]["root"]["number"] == 2 and status["counters"]["revoked"] == 1

    # A signer answering an older CRL (restored backup, another signer) must not roll it back.
    published = (der_path.read_bytes(), pem_path.read_bytes())
    root = fake.issuer("root")
    answering(fake, lambda cmd, body, request_id: ("ok", crl_answer(root, root.crl(number=1)))
              if cmd == "fetch_crl" and body["issuer"] == "root" else ...)
    env.daemon().run(cycles=1)  # a restarted daemon fetches at once
    assert (der_path.read_bytes(), pem_path.read_bytes()) == published
    status = env.status()
    assert "not above" in status["last_error"]["message"]
    assert status["last_error"]["message"].startswith("CRL root not published")
    assert "root" not in status["crl"] and status["crl"]["class3"]["number"] == 1


# -- 11. the signer is not the one pinned -----------------------------------------------------

def test_a_signer_with_other_issuer_certificates_is_refused(env, fake, fakes):
    env.daemon().run(cycles=1)
    pin_path = Path(env.config.state_dir) / PIN_NAME
    pinned = json.loads(pin_path.read_text())
    assert set(pinned) == {"root", "class3"}

    other = fakes(FakeCa("two"))
    env.configure(other.device)
    row_id = env.side.add_certificate("emailcerts", SUBJECT)
    env.daemon().run(cycles=2)
    status = env.status()
    assert status["signer"]["reachable"] is False
    assert "not the pinned one" in status["signer"]["reason"]
    assert set(other.commands()) == {"ca_info"}  # nothing else is sent to it
    assert other.ids("sign_x509") == []
    assert_untouched(env, "emailcerts", row_id)
    assert env.book("emailcerts", row_id) is None
    assert json.loads(pin_path.read_text()) == pinned


# -- 12. the PEM copy follows the DER file ---------------------------------------------------

@pytest.mark.parametrize("damage", ["delete", "alter"])
def test_a_damaged_pem_copy_is_rewritten_when_the_crl_is_unchanged(env, fake, damage):
    env.daemon().run(cycles=1)
    der_path, pem_path = env.crl_dir() / "revoke.crl", env.crl_dir() / "revoke.crl.pem"
    der = der_path.read_bytes()
    if damage == "delete":
        pem_path.unlink()
    else:  # another valid CRL: only the comparison with the DER file can tell
        pem_path.write_bytes(fake.issuer("root").crl(number=99).public_bytes(Encoding.PEM))
    answers = []

    def special(cmd, body, request_id):
        answer = fake.standard(cmd, body, request_id)
        if cmd == "fetch_crl":
            answers.append(answer[1]["status"])
        return answer
    answering(fake, special)

    env.daemon().run(cycles=1)
    assert answers == ["unchanged", "unchanged"]
    assert der_path.read_bytes() == der
    assert pem_path.read_bytes() == x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    crl_status = env.status()["crl"]["root"]
    assert (crl_status["status"], crl_status["number"], crl_status["bytes_moved"]) == ("unchanged", 1, 0)


# -- later hardening: revocation of a pending row, circuit breaker, prefix, explicit pins -------

def test_a_revocation_asked_for_before_the_certificate_is_written_is_not_lost(env, fake):
    row_id = env.side.add_certificate("emailcerts", SUBJECT)
    env.side.request_revocation("emailcerts", row_id)  # before the daemon ever saw the row
    daemon = env.daemon()
    env.round(daemon)  # revocation waits (no serial yet), then the certificate is issued
    cert = assert_issued(env, fake, "emailcerts", row_id, "root")
    assert env.row("emailcerts", row_id)["revoked"] == MARKER
    assert env.book("emailcerts", row_id, "revoke")["attempts"] == 0
    env.round(daemon)  # now it has a serial: revoked, and in the CRL
    assert env.row("emailcerts", row_id)["revoked"] not in (MARKER, "0000-00-00 00:00:00")
    crl = x509.load_der_x509_crl((env.crl_dir() / "revoke.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_a_signer_failing_every_request_alike_stops_the_counting(env, fake):
    rows = [env.side.add_certificate("emailcerts", SUBJECT) for _ in range(12)]
    failing = [True]
    answering(fake, lambda cmd, body, request_id: ("error", "internal_error", "handler bug")
              if cmd == "sign_x509" and failing else ...)
    daemon = env.daemon()
    with pytest.raises(SignerAway, match="8 requests in a row failed at the signer"):
        env.round(daemon)
    for _ in range(3):  # later rounds: still failing, and nothing more is counted
        with pytest.raises(SignerAway):
            daemon.link.open()
            env.round(daemon)
    warnings = [env.row("emailcerts", r)["warning"] for r in rows]
    assert warnings == [1] * 8 + [0] * 4  # two windows of 4 counted, the rest untouched
    failing.clear()
    daemon.run(cycles=2)
    assert all(env.row("emailcerts", r)["crt_name"] for r in rows)


def test_a_changed_request_id_prefix_stops_the_daemon_before_any_request(env, fake):
    env.round(env.daemon())  # the WebDB is now served with prefix "webdb"
    env.side.add_certificate("emailcerts", SUBJECT)
    env.configure(fake.device, webdb={"request_id_prefix": "other"})
    sent = len(fake.seen)
    daemon = env.daemon()
    daemon.run(cycles=3)
    assert daemon.exit_code == 2
    assert len(fake.seen) == sent  # not even ca_info: the check comes first
    assert "request_id_prefix" in env.status()["last_error"]["message"]


def test_configured_issuer_pins_refuse_another_ca_from_the_first_contact(env, fake):
    env.configure(fake.device, signer={"issuer_sha256": [{"issuer": "root", "sha256": "ab" * 32}]})
    env.side.add_certificate("emailcerts", SUBJECT)
    daemon = env.daemon()
    daemon.run(cycles=1)
    assert "not the configured one" in env.status()["signer"]["reason"]
    assert fake.commands() == ["ca_info"]


def test_line_noise_does_not_keep_a_silence_timeout_waiting_for_ever():
    """timeout_is_silence: clean bytes push the deadline on, error frames do not."""
    import os
    import random
    import threading

    from tools.client.library import SignerClient, SignerTimeout
    master, slave = os.openpty()
    stop = threading.Event()

    def noise() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            os.write(master, bytes(rng.randrange(256) for _ in range(64)))  # zeros end bad frames
            time.sleep(0.01)
    writer = threading.Thread(target=noise, daemon=True)
    writer.start()
    client = SignerClient(os.ttyname(slave), timeout=1.0, timeout_is_silence=True)
    try:
        started = time.monotonic()
        with pytest.raises(SignerTimeout, match="error frames|in time"):
            client.call("health")
        assert time.monotonic() - started < 10
        aborted = [False]
        client.abort = lambda: aborted[0]
        aborted[0] = True
        with pytest.raises(SignerTimeout, match="stopped"):
            client.call("health", timeout=60)
    finally:
        stop.set()
        writer.join(5)
        client.close()
        os.close(master)
        os.close(slave)


# -- 12. what client.pl did besides signing: mails, the clock, renewals -------------------------

@pytest.fixture
def smtp(tmp_path):
    sink = SmtpSink(tmp_path)
    yield sink
    sink.stop()


def mails_to(smtp: SmtpSink, address: str) -> list:
    return [m for m in smtp.messages() if m["To"] == address]


def test_notification_mails_reach_a_real_smtp_server_in_the_members_language(env, fake, smtp):
    env.configure(env.config.signer.device, mail={"host": "127.0.0.1", "port": smtp.port})
    app = CacertWebApp(env.side.db, env.side.files_root)
    app.member(11, "anna@example.org", "Anna", "de_DE")
    app.member(12, "ben@example.org", "Ben", "")
    app.member(13, "cleo@example.org", "Cleo", "en_AU")
    app.organisation(5, "Corp Ltd", admins=[12, 13])
    personal = env.side.add_certificate("emailcerts", SUBJECT, memid=11, CN="anna@example.org")
    org = env.side.add_certificate("orgemailcerts", SUBJECT, orgid=5, rootcert=2, CN="bob@corp.example",
                                   orgadminid=13)
    gpg = env.side.add_gpg(GPG_KEY, "alice@example.org", memid=12)
    daemon = env.daemon()
    env.round(daemon)
    assert env.row("emailcerts", personal)["crt_name"] and env.row("orgemailcerts", org)["crt_name"]
    assert env.row("gpg", gpg)["crt"]
    (anna,) = mails_to(smtp, "anna@example.org")  # issuance, in German
    assert anna["Subject"] == "[CAcert.org] Ihr Zertifikat" and anna["From"] == "CAcert Support <support@cacert.org>"
    assert f"https://www.cacert.org/account.php?id=6&cert={personal}" in anna.get_content()
    assert "Hallo Anna" in anna.get_content() and "anna@example.org" in anna.get_content()
    (cleo,) = mails_to(smtp, "cleo@example.org")  # the org admin who asked for it
    assert cleo["Subject"] == "[CAcert.org] Your certificate" and "Hi Cleo" in cleo.get_content()
    (ben,) = mails_to(smtp, "ben@example.org")  # his OpenPGP key
    assert ben["Subject"] == "[CAcert.org] Your GPG/PGP Key"
    assert f"gpg.php?id=3&cert={gpg}" in ben.get_content() and "alice@example.org" in ben.get_content()

    env.round(daemon)  # nothing new: no second mail for the same rows
    assert len(smtp.messages()) == 3

    env.side.request_revocation("orgemailcerts", org)
    env.round(daemon)
    serial = env.row("orgemailcerts", org)["serial"]
    for address in ("ben@example.org", "cleo@example.org"):  # every admin of the organisation
        revoked = [m for m in mails_to(smtp, address) if "revoked" in m.get_content()]
        assert len(revoked) == 1 and f"'bob@corp.example' with the serial number '{serial}'" in revoked[0].get_content()
    assert env.status()["counters"]["mails_sent"] == 5


def test_mails_off_or_unreachable_never_hold_up_a_row(env, fake, smtp, tmp_path):
    app = CacertWebApp(env.side.db, env.side.files_root)
    app.member(11, "anna@example.org", "Anna")
    env.configure(env.config.signer.device, mail={"enabled": False, "host": "127.0.0.1", "port": smtp.port})
    first = env.side.add_certificate("emailcerts", SUBJECT, memid=11)
    daemon = env.daemon()
    env.round(daemon)
    daemon.link.close()
    assert env.row("emailcerts", first)["crt_name"] and smtp.messages() == []
    smtp.stop()  # nothing listens on the port any more
    env.configure(env.config.signer.device, mail={"host": "127.0.0.1", "port": smtp.port, "timeout_s": 5})
    second = env.side.add_certificate("emailcerts", SUBJECT, memid=11)
    daemon = env.daemon()
    env.round(daemon)
    assert env.row("emailcerts", second)["crt_name"] and env.row("emailcerts", second)["warning"] == 0
    status = env.status()
    assert status["counters"]["mail_failed"] == 1 and "issued mail to member 11 not sent" in status["last_error"]["message"]
    # an address with a line break (no header may hold it) is a mail error too, not the row's
    env.side.db.execute("UPDATE users SET email=? WHERE id=11", ("anna@example.org\r\nBcc: x@example.net",))
    third = env.side.add_certificate("emailcerts", SUBJECT, memid=11)
    env.round(daemon)
    assert env.row("emailcerts", third)["crt_name"] and env.book("emailcerts", third)["state"] == "done"
    assert env.status()["counters"]["mail_failed"] == 2
    assert "ValueError" in env.status()["last_error"]["message"]


@pytest.mark.parametrize("offset, problem", [(0, False), (-90, False), (400, True), (-400, True)])
def test_a_signer_clock_off_by_more_than_the_threshold_is_a_problem(env, fake, capsys, offset, problem):
    fake.clock_offset_s = offset
    env.configure(env.config.signer.device, health={"interval_s": 60, "max_clock_skew_s": 120})
    env.round(env.daemon())
    health = env.status()["health"]
    assert abs(health["clock_skew_s"] - offset) < 30  # a loaded box: the poll itself takes time
    assert health["healthy"] is not problem
    code, out = cli_status(env, capsys)
    assert code == (1 if problem else 0)
    assert ("problem: clock: the signer's clock is more than 120 s" in out) is problem
    assert f"signer clock: {health['clock_skew_s']:+g} s" in out


def test_a_renewal_in_its_insert_window_never_overwrites_the_old_certificate(env, fake):
    """account.php inserts the renewal with the OLD row's csr_name, then copies the file and
    updates it: the certificate's file comes from the row id, so the old file stays."""
    app = CacertWebApp(env.side.db, env.side.files_root)
    app.member(11, "anna@example.org", "Anna")
    old = env.side.add_certificate("emailcerts", SUBJECT, memid=11)
    daemon = env.daemon()
    env.round(daemon)
    old_name = env.row("emailcerts", old)["crt_name"]
    old_pem = (env.side.files_root / old_name).read_bytes()
    new = app.renew_start(old)  # the daemon's round falls into the window
    assert env.row("emailcerts", new)["csr_name"] == env.row("emailcerts", old)["csr_name"]
    env.round(daemon)
    row = env.row("emailcerts", new)
    assert row["crt_name"] == f"crt/client/0/client-{new}.crt" != old_name
    assert (env.side.files_root / old_name).read_bytes() == old_pem
    assert x509.load_pem_x509_certificate((env.side.files_root / row["crt_name"]).read_bytes()).serial_number \
        == int(row["serial"], 16)
