"""HSM faults (hardening item 2): each fault gives typed errors while it lasts, makes
`health` unhealthy with its cause, and is recovered from without restarting anything once
it ends; a signature that fails leaves nothing half-written in the repository.

What SoftHSM 2.6.1 actually does, measured here (these tests pin it down):

- Sessions closed under the actor (C_CloseAllSessions in its process): the next call fails
  with CKR_SESSION_HANDLE_INVALID; HsmSession re-opens, logs in, finds the key and retries
  once, so the request itself succeeds. A fault that persists across the retry (sessions
  closed before every C_Sign) is answered with hsm_unavailable and named in the health
  reply; the first request after it ends succeeds.
- Logout from another session of the same process (login is per process and token): the
  actor's cached key handle fails with CKR_OBJECT_HANDLE_INVALID; re-login and a new key
  lookup make the retry succeed.
- The token's files made unreadable (chmod 000) or the token directory moved out of the
  token dir: SoftHSM does NOT keep serving from its cache; it checks the object files on
  use. A cached key handle fails with CKR_OBJECT_HANDLE_INVALID; a key not looked up yet
  is simply not found (findObjects answers, with nothing, and the session still looks
  logged in); C_GetTokenInfo on the old slot fails with CKR_GENERAL_ERROR, and only
  C_Finalize + C_Initialize rescans the token directory (then the token is missing:
  hsm_token_not_found). core/hsm/session.py checks the token on a key miss and escalates a session
  re-open that meets such a library error to a re-initialisation, so even the first
  request of the fault gets hsm_token_not_found (not hsm_key_not_found or a bare
  CKR_GENERAL_ERROR, as before); once the files are back, the next call's
  re-initialisation finds the token again: healthy, no restart. Two traps: the root user
  ignores file modes (the chmod case runs the signer without CAP_DAC_OVERRIDE, via
  setpriv), and a token directory renamed INSIDE the token dir is still a token to SoftHSM
  (it scans every folder there), so the rename moves it out.
- A hung call (the Hsm actor's process SIGSTOPped): health answers after PART_TIMEOUT_S
  (5 s) with hsm error code "timeout"; a sign_x509 waiting for the Hsm actor is answered
  when the process continues (or with hsm_unavailable after ASK_TIMEOUT_S = 30 s, the slow
  variant, which also checks that the late signature is ignored and the reservation freed).
- Keys gone (token deleted and re-initialised empty with the same label and PINs): the
  re-initialisation finds the new token, the login succeeds, the key is not there:
  hsm_key_not_found on every call, a permanent and clear state; other commands still work.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import PyKCS11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from actors.handlers.handler import ASK_TIMEOUT_S
from actors.handlers.health import PART_TIMEOUT_S
from core.dev.devca import TOKEN_LABEL as DEV_TOKEN
from core.hsm.session import HsmSession
from core.x509.profiles import load_profiles
from core.wire.protocol import ERROR_CODES
from core.repository.store import Repository
from core.dev.softhsm import SOFTHSM_MODULE, SOFTHSM_UTIL, softhsm_env
from messages import HsmHealthReply, HsmHealthRequest, HsmSignReply, HsmSignRequest
from tests.support import helpers
from tests.support.fixtures_shared import hsm_actor as start_hsm_actor, token_rsa_key
from tests.support.helpers import PIN, ROOT, TOKEN, SignerProcess, dev_init, signer_config, tool
from tools.client.library import SignerClient

KEY = "fault-test-rsa"
MECHANISM = "sha256-rsa-pkcs1"


# -- (a), (b): in-process, on the process-wide token -------------------------------------
# Login and session state are per process, so "from under the actor" must happen in the
# actor's own process: the Hsm actor runs here, driven by the harness.

@pytest.fixture(scope="module")
def token_key(softhsm):
    return token_rsa_key(KEY)


@pytest.fixture
def hsm_actor(token_key, monkeypatch):
    harness = start_hsm_actor(KEY, monkeypatch)
    yield harness
    harness.actor.shutdown()


def sign(h, data: bytes = b"to be signed") -> HsmSignReply:
    h.deliver(HsmSignRequest(1, KEY, MECHANISM, data), "handler")
    (_, reply), = h.take(HsmSignReply)
    return reply


def health(h) -> HsmHealthReply:
    h.deliver(HsmHealthRequest(2), "health")
    (_, reply), = h.take(HsmHealthReply)
    return reply


def assert_signs(h, token_key, data: bytes) -> None:
    reply = sign(h, data)
    assert reply.error is None, reply.error
    token_key.verify(reply.signature, data, padding.PKCS1v15(), hashes.SHA256())


def assert_healthy(h) -> None:
    reply = health(h)
    assert reply.error is None and reply.health["ok"] and reply.health["logged_in"] is True


@pytest.fixture
def persistent_fault(monkeypatch):
    """Run `fault(session)` right before every C_Sign of every session of this process
    (a wrapper around PyKCS11's Session.sign) until the returned `end()` is called."""
    original = PyKCS11.Session.sign

    def start(fault):
        def faulty_sign(session, *args, **kwargs):
            fault(session)
            return original(session, *args, **kwargs)
        monkeypatch.setattr(PyKCS11.Session, "sign", faulty_sign)
        return lambda: monkeypatch.setattr(PyKCS11.Session, "sign", original)
    return start


def test_a_sessions_closed_under_the_actor_recover_on_the_next_signature(hsm_actor, token_key):
    session = hsm_actor.actor.session
    before = session.recoveries
    session._lib.closeAllSessions(session._slot)
    assert_signs(hsm_actor, token_key, b"after closeAllSessions")
    figures = hsm_actor.actor.figures()
    assert figures["recoveries"] == before + 1 and figures["sign_errors"] == 0
    assert "CKR_SESSION_HANDLE_INVALID" in figures["last_hsm_error"]
    assert_healthy(hsm_actor)


def test_a_sessions_closed_during_every_call_are_typed_errors_until_it_stops(
        hsm_actor, token_key, persistent_fault):
    session = hsm_actor.actor.session
    end = persistent_fault(lambda _: session._lib.closeAllSessions(session._slot))
    try:
        reply = sign(hsm_actor)
        assert reply.signature is None and reply.error["code"] == "hsm_unavailable"
        assert "CKR_SESSION_HANDLE_INVALID" in reply.error["message"]
        unhealthy = health(hsm_actor)
        assert unhealthy.error["code"] == "hsm_unavailable"
        assert "CKR_SESSION_HANDLE_INVALID" in unhealthy.error["message"]
    finally:
        end()
    assert_signs(hsm_actor, token_key, b"fault over")
    assert_healthy(hsm_actor)
    assert hsm_actor.actor.figures()["sign_errors"] == 1


def test_b_logout_from_a_second_hsm_session_recovers(hsm_actor, token_key):
    actor_session = hsm_actor.actor.session
    assert_signs(hsm_actor, token_key, b"handle cached")
    with HsmSession(SOFTHSM_MODULE, TOKEN, PIN) as second:  # same process, same token
        assert second.logged_in()
        second._session.logout()
        assert not second._session_logged_in()
        before = actor_session.recoveries
        assert_signs(hsm_actor, token_key, b"after logout elsewhere")
        assert actor_session.recoveries == before + 1
        assert "CKR_OBJECT_HANDLE_INVALID" in actor_session.last_error
        assert second.logged_in()  # the actor's re-login is the process's login again
    assert_healthy(hsm_actor)


def test_b_logout_from_a_raw_pykcs11_session_recovers(hsm_actor, token_key):
    actor_session = hsm_actor.actor.session
    assert_signs(hsm_actor, token_key, b"handle cached")
    raw = actor_session._lib.openSession(actor_session._slot)  # read-only, not ours
    try:
        raw.logout()
        assert_signs(hsm_actor, token_key, b"after raw logout")
    finally:
        raw.closeSession()
    assert_healthy(hsm_actor)


def test_b_logout_before_every_call_is_a_typed_error_until_it_stops(
        hsm_actor, token_key, persistent_fault):
    with HsmSession(SOFTHSM_MODULE, TOKEN, PIN) as second:
        other = second._session

        def logout(_):
            try:
                other.logout()
            except PyKCS11.PyKCS11Error:
                pass  # already logged out: the fault is in place
        end = persistent_fault(logout)
        try:
            reply = sign(hsm_actor)
            assert reply.signature is None and reply.error["code"] in ERROR_CODES
            assert reply.error["code"] == "hsm_unavailable"
            assert health(hsm_actor).error["code"] == "hsm_unavailable"
        finally:
            end()
    assert_signs(hsm_actor, token_key, b"fault over")
    assert_healthy(hsm_actor)


# -- (c), (d), keys gone: the real signer process over its pty ---------------------------

PROFILE = load_profiles(ROOT / "config" / "profiles")["server"]
ROOT_USER = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
# Root ignores file modes; without these capabilities it obeys them like anyone else.
NO_DAC = ["--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]


class FaultSigner(SignerProcess):
    """SignerProcess, started under `setpriv` without CAP_DAC_OVERRIDE when the tests run as
    root, so that chmod 000 on the token files means to the signer what it means to anyone.
    The `signer` it starts is then a script that execs setpriv, which execs the real one
    (same pid, so stop() and status() work as usual)."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.repository = log_dir / "repository.sqlite"  # signer_config puts it there
        self.obeys_file_modes = not ROOT_USER or SETPRIV is not None
        if not (ROOT_USER and SETPRIV):
            super().__init__(config, log_dir=log_dir)
            return
        wrapper = log_dir / "signer-without-dac-override"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join([SETPRIV, *NO_DAC, tool("signer")])} "$@"\n')
        wrapper.chmod(0o755)
        real_tool = helpers.tool
        helpers.tool = lambda name: str(wrapper) if name == "signer" else real_tool(name)
        try:
            super().__init__(config, log_dir=log_dir)
        finally:
            helpers.tool = real_tool

    def hsm_record(self) -> dict:
        return next(r for r in self.status() if r["name"] == "hsm")


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory) -> Path:
    """A development CA of this module only: its token is broken on purpose."""
    return dev_init(tmp_path_factory.mktemp("hsm-fault-data"))


@pytest.fixture(scope="module")
def fault_signer(fault_data, tmp_path_factory):
    target = tmp_path_factory.mktemp("hsm-fault-run")
    process = FaultSigner(signer_config(fault_data, target), target)
    yield process
    process.stop()


@pytest.fixture
def client(fault_signer):
    with SignerClient(fault_signer.client_path, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(Encoding.DER)


def sign_body(csr: bytes) -> dict:
    return {"issuer": "root", "profile": PROFILE.name, "csr": csr,
            "subject": [["CN", "www.example.org"]], "sans": [["dns", "www.example.org"]]}


def token_dir(data: Path) -> Path:
    (found,) = (data / "tokens").iterdir()
    return found


def assert_typed_hsm_error(response, code: str) -> None:
    assert response.error is not None, response.body
    assert response.error["code"] in ERROR_CODES and response.error["code"] == code, response.error


def assert_healthy_again(client, signer, hsm_pid: int) -> None:
    body = client.call("health").body
    assert body["healthy"] is True, body["problems"]
    assert body["hsm"]["ok"] and body["hsm"]["logged_in"] is True
    record = signer.hsm_record()
    assert record["alive"] and record["restarts"] == 0 and record["pid"] == hsm_pid


def assert_nothing_half_written(path: Path, failed_ids=()) -> None:
    """No issued row without DER, no reservation left, no trace of a failed request. The
    handler's DiscardReservation is fire-and-forget, so reservations get a moment to go."""
    deadline = time.monotonic() + 5
    while True:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT request_id, status, der IS NULL FROM certificates").fetchall()
            stored = {r[0] for r in db.execute("SELECT request_id FROM requests")}
        reserved = [r for r in rows if r[1] == "reserved"]
        if not reserved or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reserved == []
    assert [r for r in rows if r[1] == "issued" and r[2]] == []
    for request_id in failed_ids:
        assert request_id not in {r[0] for r in rows} and request_id not in stored
    store = Repository(str(path), "fault-checker")
    try:
        assert store.consistency_check() == []
    finally:
        store.close()


def move_token_away(data: Path):
    token, away = token_dir(data), data / "token-away"  # out of tokens/: see the docstring
    token.rename(away)
    return lambda: away.rename(token)


def make_token_unreadable(data: Path):
    token = token_dir(data)
    files = list(token.iterdir())
    for path in [*files, token]:
        path.chmod(0)

    def restore() -> None:
        token.chmod(0o700)
        for path in files:
            path.chmod(0o600)
    return restore


@pytest.mark.e2e
@pytest.mark.parametrize("fault", [move_token_away, make_token_unreadable],
                         ids=["moved_away", "chmod_000"])
def test_c_token_gone_typed_errors_unhealthy_then_recovers_without_restart(
        fault_signer, fault_data, client, csr, fault):
    if fault is make_token_unreadable and not fault_signer.obeys_file_modes:
        pytest.skip("running as root without setpriv: file modes do not apply to the signer")
    assert client.call("health").body["healthy"] is True
    hsm_pid = fault_signer.hsm_record()["pid"]
    restore = fault(fault_data)
    try:
        failed = client.call("sign_x509", sign_body(csr))
        assert_typed_hsm_error(failed, "hsm_token_not_found")
        body = client.call("health").body
        assert body["healthy"] is False
        assert body["hsm"]["ok"] is False and body["hsm"]["error"]["code"] == "hsm_token_not_found"
        assert f"no token labelled {DEV_TOKEN!r}" in body["hsm"]["error"]["message"]
        assert any(p.startswith("hsm: hsm_token_not_found") for p in body["problems"])
        assert body["repository"]["ok"] is True
        assert client.call("ca_info").ok  # the rest of the signer keeps answering
        assert_typed_hsm_error(client.call("sign_x509", sign_body(csr)), "hsm_token_not_found")
    finally:
        restore()
    assert_healthy_again(client, fault_signer, hsm_pid)
    signed = client.call("sign_x509", sign_body(csr))
    assert signed.ok, signed.error
    assert_nothing_half_written(fault_signer.repository, [failed.request_id])


def stopped_hsm(signer: FaultSigner):
    pid = signer.hsm_record()["pid"]
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.e2e
def test_d_hung_hsm_health_times_out_and_a_waiting_signature_completes(fault_signer, client, csr):
    pid = stopped_hsm(fault_signer)
    try:
        waiting = client.send("sign_x509", sign_body(csr))  # reaches the Hsm actor's queue
        started = time.monotonic()
        body = client.call("health", timeout=PART_TIMEOUT_S + 10).body
        elapsed = time.monotonic() - started
        assert PART_TIMEOUT_S - 0.5 < elapsed < PART_TIMEOUT_S + 2.0
        assert body["healthy"] is False and body["hsm"]["ok"] is False
        assert body["hsm"]["error"]["code"] == "timeout"
        assert "hsm did not answer" in body["hsm"]["error"]["message"]
        assert body["repository"]["ok"] is True
        assert client.call("ca_info").ok
    finally:
        os.kill(pid, signal.SIGCONT)
    signed = client.wait_for(waiting, timeout=20)
    assert signed.ok, signed.error  # answered once the HSM continues, well inside 30 s
    assert_healthy_again(client, fault_signer, pid)
    assert_nothing_half_written(fault_signer.repository)


@pytest.mark.e2e
@pytest.mark.slow
def test_d_hung_hsm_signature_is_hsm_unavailable_after_the_ask_timeout(fault_signer, client, csr):
    pid = stopped_hsm(fault_signer)
    try:
        request_id = client.send("sign_x509", sign_body(csr))
        failed = client.wait_for(request_id, timeout=ASK_TIMEOUT_S + 15)
        assert_typed_hsm_error(failed, "hsm_unavailable")
        assert "did not answer" in failed.error["message"]
        assert_nothing_half_written(fault_signer.repository, [request_id])
    finally:
        os.kill(pid, signal.SIGCONT)
    # The Hsm actor now signs the stale request; the handler drops that late reply.
    assert_healthy_again(client, fault_signer, pid)
    assert_nothing_half_written(fault_signer.repository, [request_id])
    retried = client.call("sign_x509", sign_body(csr), request_id=request_id)
    assert retried.ok and "replayed" not in retried.body
    assert_nothing_half_written(fault_signer.repository)


@pytest.mark.e2e
def test_keys_gone_is_a_clear_permanent_unhealthy_state(fault_data, csr, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fault_data, data)  # its own token: the shared one is left alone
    signer = FaultSigner(signer_config(data, tmp_path), tmp_path)
    try:
        with SignerClient(signer.client_path, timeout=30) as client:
            assert client.call("health").body["healthy"] is True
            hsm_pid = signer.hsm_record()["pid"]
            conf = softhsm_env(str(data / "softhsm2.conf"))
            so_pin = (data / "secrets" / "hsm-so-pin").read_text().strip()
            user_pin = (data / "secrets" / "hsm-user-pin").read_text().strip()
            for args in (["--delete-token", "--token", DEV_TOKEN],
                         ["--init-token", "--free", "--label", DEV_TOKEN,
                          "--so-pin", so_pin, "--pin", user_pin]):
                subprocess.run([SOFTHSM_UTIL, *args], env=conf, check=True, capture_output=True)
            for _ in range(2):  # the same answer every time: nothing recovers a lost key
                body = client.call("health").body
                assert body["healthy"] is False
                assert body["hsm"]["error"]["code"] == "hsm_key_not_found"
                assert "no private key labelled 'class3-key'" in body["hsm"]["error"]["message"]
                assert body["hsm"]["logged_in"] is True  # the new token took the PIN
            failed = client.call("sign_x509", sign_body(csr))
            assert_typed_hsm_error(failed, "hsm_key_not_found")
            assert client.call("ca_info").ok
            record = signer.hsm_record()
            assert record["alive"] and record["restarts"] == 0 and record["pid"] == hsm_pid
        assert_nothing_half_written(signer.repository, [failed.request_id])
    finally:
        signer.stop()
