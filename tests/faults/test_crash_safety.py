"""Crash safety (hardening item 1): pipelined sign_x509 / revoke_x509 (and a few
fetch_crl) requests with client-chosen ids over the pty while the WHOLE signer is killed
with SIGKILL at random moments and restarted with the same configuration.

The client behaves as docs/protocol.md tells a client to: every request that has no final
answer is resent with the SAME id and the SAME body until it has one (after each restart,
after an answer with id nil, after a retryable error, after a long silence). At the end:

- every certificate the client received is in the repository with the same DER, and each
  sign request id has exactly one ISSUED certificate (rows left `reserved` by a crash are
  allowed: they hold no DER and their serial was never returned to the client);
- no serial repeats; `Repository.consistency_check()` is []; the audit chain verifies;
- every CRL fetched (during the run and, for both issuers, at the end) verifies with the
  issuer certificate from ca_info (cryptography, and `openssl crl -verify` at the end),
  and lists every revocation the client got an answer for before it asked.

Sizes. Normal suite: 1,000 requests and 20 kills: 64 s on the 2-core dev machine when
quiet (~50 requests/s between kills, ~2 s lost per kill: ~0.9 s restart plus the pipeline
refilling); 3 min 48 s while other sessions' test suites loaded it (load average ~9).
`--run-slow`: 3,000 requests and 60 kills (~3 min quiet).
Override with CRASH_REQUESTS / CRASH_KILLS / CRASH_SEED (the seed is printed; timing makes
a run not exactly repeatable: the kill plan (thresholds, delays) is, the request mix
depends on which answers had arrived).

Finding (see test_group_kill_leaves_no_signer_process below): Thespian's multiprocTCPBase
admin daemonises (setsid + fork, thespian/system/multiprocCommon.py:154-161), so the actor
processes are NOT in the session / process group of `signer run`. `os.killpg(signer
pid, SIGKILL)` kills only `signer run` (and its pty relay): every actor survives, keeps the
admin port, the SQLite file and the HSM session, and a restart is refused ("admin port in
use"). This test therefore kills the `signer run` group and then the orphans it finds
in /proc (their own process group), and reports how many there were.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import serial
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from core.wire.framing import FrameError
from core.repository.store import Repository
from tests.support.helpers import SignerProcess, signer_config
from tools.client.library import Response, SignerClient, parse_response

pytestmark = pytest.mark.e2e

# Errors after which the identical request is resent (protocol.md section 5: retry safe,
# and may succeed). duplicate_request is not final either: the first attempt's answer follows.
RETRYABLE = {"handler_unavailable", "internal_error", "hsm_unavailable", "repository_error",
             "duplicate_serial"}
REASONS = [None, "keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged", 0, 4, 9]
WINDOW = 32            # requests in flight
STALL_RESEND_S = 90    # no answer at all for this long: resend everything unanswered
GIVE_UP_S = 600        # no progress for this long: fail


# -- processes ------------------------------------------------------------------------------

def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("State:"):
                    return line.split()[1]
    except OSError:
        return None
    return None


def signer_processes(config: Path) -> list[int]:
    """Live (not zombie) processes running `signer run --config <config>`: the main
    process and every Thespian fork of it (forks keep the command line)."""
    wanted = ["run", "--config", str(config)]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))) and _proc_state(int(entry)) not in (None, "Z", "X"):
            found.append(int(entry))
    return found


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if _proc_state(pid) not in (None, "Z", "X")]
        if left:
            time.sleep(0.02)
    return left


def kill_whole_signer(signer: SignerProcess, config: Path, admin_port: int) -> int:
    """SIGKILL the process group of `signer run`, then every signer process that survived
    it (found in /proc by its command line). Returns how many survived the group kill."""
    os.killpg(signer.process.pid, signal.SIGKILL)
    orphans = [pid for pid in signer_processes(config) if pid != signer.process.pid]
    for pgid in {_pgid_or_none(pid) for pid in orphans} - {None}:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    signer.process.wait(30)
    left = wait_gone(signer_processes(config))
    assert not left, f"signer processes survived SIGKILL: {left}"
    deadline = time.monotonic() + 30
    while not port_free(admin_port):
        assert time.monotonic() < deadline, f"admin port {admin_port} still taken after the kill"
        time.sleep(0.05)
    return len(orphans)


def _pgid_or_none(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def start_signer(config: Path, folder: Path) -> SignerProcess:
    last: Exception | None = None
    for _ in range(5):
        try:
            return SignerProcess(config, log_dir=folder)
        except RuntimeError as exc:  # e.g. the admin port still held for a moment
            last = exc
            time.sleep(1)
    raise AssertionError(f"the signer did not restart: {last}")


# -- client side ----------------------------------------------------------------------------

def drain(client: SignerClient, timeout: float) -> list[Response]:
    """Every answer that arrives within `timeout` (at least one read). Keeps all answers,
    also two for one id (duplicate_request + the real one), which SignerClient.waiting,
    a dict, would merge."""
    deadline = time.monotonic() + timeout
    answers: list[Response] = []
    while True:
        data = client.serial.read(client.serial.in_waiting or 1)
        for result in client.decoder.feed(data):
            answers.append(Response(None, error={"code": result.code, "message": result.message})
                           if isinstance(result, FrameError) else parse_response(result))
        if answers and not client.serial.in_waiting or time.monotonic() > deadline:
            return answers


def make_csrs(count: int) -> list[bytes]:
    csrs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ignored-{i}")]))
               .sign(key, hashes.SHA256()))
        csrs.append(csr.public_bytes(Encoding.DER))
    return csrs


@dataclass
class Request:
    rid: str
    cmd: str
    body: dict[str, Any]
    sends: int = 0
    first_sent: float = 0.0
    answer: Response | None = None
    answered_at: float = 0.0
    revoked_known: frozenset = frozenset()  # fetch_crl: (issuer, serial) answered before it was sent
    errors: list[str] = field(default_factory=list)


@dataclass
class Kill:
    at: float
    answered: int
    in_flight: int
    orphans: int
    restart_s: float


class CrashRun:
    def __init__(self, dev_data: Path, folder: Path, seed: int, total: int, kills: int) -> None:
        import random

        self.folder, self.seed, self.total = folder, seed, total
        self.rng = random.Random(seed)
        self.config = signer_config(dev_data, folder)
        self.admin_port = yaml.safe_load(self.config.read_text())["actor_system"]["admin_port"]
        self.csrs = make_csrs(16)
        # Kill points: after `threshold` final answers, wait `delay` s (answers go on
        # arriving meanwhile), then kill; in the tail (everything sent) a kill fires at
        # once while requests are in flight, so that every planned kill happens however
        # fast the machine is (and however many answers one read brings). Repeated thresholds give kills soon after a restart.
        self.kill_plan = sorted((self.rng.randrange(0, max(1, total - WINDOW)), self.rng.uniform(0.0, 1.2))
                                for _ in range(kills))
        self.requests: dict[str, Request] = {}
        self.order: list[str] = []
        self.certs: dict[str, dict] = {}  # rid -> sign answer body
        self.revoked: dict[tuple[str, str], dict] = {}  # (issuer, serial) -> first answer body
        self.revoke_targets: set[tuple[str, str]] = set()
        self.crl_answers: list[tuple[Request, dict]] = []
        self.counts: Counter = Counter()
        self.kills: list[Kill] = []
        self.signer: SignerProcess | None = None
        self.client: SignerClient | None = None
        self.t0 = time.monotonic()

    # -- requests -------------------------------------------------------------------
    def next_request(self, n: int) -> Request:
        rid = f"crash-{self.seed}-{n:05d}"
        roll = self.rng.random()
        issued = sorted((b["issuer"], b["serial"]) for b in self.certs.values())
        if roll < 0.14 and issued:
            fresh = [k for k in issued if k not in self.revoke_targets]
            # mostly certificates not asked for yet; sometimes a repeat (already_revoked)
            issuer, serial = self.rng.choice(fresh if fresh and self.rng.random() < 0.9 else issued)
            self.revoke_targets.add((issuer, serial))
            body: dict[str, Any] = {"issuer": issuer, "serial": serial}
            reason = self.rng.choice(REASONS)
            if reason is not None:
                body["reason"] = reason
            return Request(rid, "revoke_x509", body)
        if roll < 0.16:
            return Request(rid, "fetch_crl", {"issuer": self.rng.choice(["root", "class3"])})
        csr = self.rng.choice(self.csrs)
        if roll < 0.30:
            return Request(rid, "sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                              "subject": [["CN", f"r{n}.example.org"]],
                                              "sans": [["dns", f"r{n}.example.org"]]})
        return Request(rid, "sign_x509", {"issuer": "class3", "profile": "server-org", "csr": csr,
                                          "subject": [["CN", f"c{n}.example.org"], ["O", "Crash Test"]],
                                          "sans": [["dns", f"c{n}.example.org"]]})

    def send(self, request: Request) -> None:
        now = time.monotonic()
        if request.sends == 0:
            request.first_sent = now
            if request.cmd == "fetch_crl":
                request.revoked_known = frozenset(self.revoked)
        request.sends += 1
        self.counts["sends"] += 1
        if request.sends > 1:
            self.counts["resends"] += 1
        self.client.send(request.cmd, request.body, request_id=request.rid)

    def pending(self) -> list[Request]:
        return [self.requests[rid] for rid in self.order if self.requests[rid].answer is None]

    def resend_pending(self) -> None:
        for request in self.pending():
            self.send(request)

    def handle(self, response: Response) -> bool:
        """True when it was a final answer."""
        if response.request_id is not None and response.request_id not in self.requests:
            self.counts["answers to probe ids"] += 1  # a resent readiness probe answered twice
            return False
        request = self.requests.get(response.request_id)
        if request is None:
            self.counts[f"nil-id {response.error and response.error.get('code')}"] += 1
            self.resend_pending()  # protocol.md: treat every unanswered request as lost
            return False
        if request.answer is not None:  # an answer to an answered id (a resend raced it)
            self.counts["late duplicate answers"] += 1
            if response.ok and request.cmd == "sign_x509":
                assert response.body["certificate"] == request.answer.body["certificate"], request.rid
            return False
        if not response.ok:
            code = response.error["code"]
            request.errors.append(code)
            if code == "duplicate_request":
                self.counts["duplicate_request"] += 1
                return False
            if code in RETRYABLE:
                self.counts[f"retried after {code}"] += 1
                self.send(request)
                return False
            request.answer, request.answered_at = response, time.monotonic()
            self.counts[f"final error {code}"] += 1
            return True
        request.answer, request.answered_at = response, time.monotonic()
        body = response.body
        if request.cmd == "sign_x509":
            self.certs[request.rid] = body
            self.counts["replayed"] += bool(body.get("replayed"))
        elif request.cmd == "revoke_x509":
            key = (body["issuer"], body["serial"])
            first = self.revoked.setdefault(key, body)
            assert (first["reason"], first["revoked_at"]) == (body["reason"], body["revoked_at"]), key
            self.counts["already_revoked"] += bool(body["already_revoked"])
        elif request.cmd == "fetch_crl":
            self.crl_answers.append((request, body))
        return True

    # -- signer ---------------------------------------------------------------------
    def connect(self) -> None:
        self.client = SignerClient(self.signer.client_path, timeout=60)
        probe = f"probe-{self.seed}-{len(self.kills)}"
        deadline = time.monotonic() + 120
        while True:  # the first request after a start: is the signer reading?
            self.client.send("ca_info", request_id=probe)
            try:
                response = self.client.wait_for(probe, timeout=5)
            except Exception:
                assert time.monotonic() < deadline, "the restarted signer does not answer ca_info"
                continue
            if response.ok:
                self.ca_info = response.body
                return

    def start(self) -> None:
        self.signer = start_signer(self.config, self.folder)
        self.connect()

    def crash_and_restart(self) -> None:
        at, answered, in_flight = time.monotonic() - self.t0, self.answered, len(self.pending())
        orphans = kill_whole_signer(self.signer, self.config, self.admin_port)
        self.client.close()
        started = time.monotonic()
        self.start()
        self.kills.append(Kill(round(at, 2), answered, in_flight, orphans, round(time.monotonic() - started, 2)))
        self.resend_pending()

    # -- the run --------------------------------------------------------------------
    def run(self) -> None:
        self.start()
        self.answered, made = 0, 0
        kill_index, kill_due = 0, None
        last_progress = last_answer = time.monotonic()
        while self.answered < self.total:
            while made < self.total and len(self.pending()) < WINDOW:
                request = self.next_request(made)
                made += 1
                self.requests[request.rid] = request
                self.order.append(request.rid)
                self.send(request)
            # Checked before draining, right after sending or resending: answers can arrive
            # in batches (many in one read), so "few left" may never be seen after a drain.
            now = time.monotonic()
            if kill_index < len(self.kill_plan):
                threshold, delay = self.kill_plan[kill_index]
                if kill_due is None and self.answered >= threshold:
                    kill_due = now + delay
                pending = len(self.pending())
                tail = made == self.total
                if kill_due is not None and (now >= kill_due or tail) and pending:
                    self.crash_and_restart()
                    kill_index, kill_due = kill_index + 1, None
                    last_progress = last_answer = time.monotonic()
                    continue
            try:
                answers = drain(self.client, 0.05)
            except (serial.SerialException, OSError) as exc:
                raise AssertionError(f"the link failed without a kill: {exc!r}") from exc
            now = time.monotonic()
            for response in answers:
                last_answer = now
                if self.handle(response):
                    self.answered += 1
                    last_progress = now
            if now - last_answer > STALL_RESEND_S:
                self.counts["stall resends"] += 1
                self.resend_pending()
                last_answer = now
            assert now - last_progress < GIVE_UP_S, f"no progress for {GIVE_UP_S} s: {len(self.pending())} pending"
        assert len(self.kills) == len(self.kill_plan), "not every planned kill happened"


def issuer_certs(ca_info: dict) -> dict[str, x509.Certificate]:
    return {i["id"]: x509.load_der_x509_certificate(i["certificate"]) for i in ca_info["issuers"]}


def check_crl(der: bytes, issuer: x509.Certificate) -> x509.CertificateRevocationList:
    crl = x509.load_der_x509_crl(der)
    assert crl.issuer == issuer.subject
    assert crl.is_signature_valid(issuer.public_key())
    return crl


def verify_outcome(run: CrashRun, tmp_path: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    answers = [r for r in run.requests.values() if r.answer is not None]
    bad = {r.rid: r.answer.error for r in answers if not r.answer.ok}
    assert not bad, f"requests refused for good: {bad}"
    cas = issuer_certs(run.ca_info)

    # CRLs fetched during the run: each verifies and lists what was revoked before it was asked.
    for request, body in run.crl_answers:
        crl = check_crl(body["crl"], cas[body["issuer"]])
        listed = {format(entry.serial_number, "x") for entry in crl}
        missing = [s for issuer, s in request.revoked_known if issuer == body["issuer"] and s not in listed]
        assert not missing, f"CRL {body['number']} of {request.rid} lacks revoked serials {missing}"

    # The final CRLs, fetched now from the running signer.
    final_crls = {}
    for issuer in ("root", "class3"):
        response = run.client.call("fetch_crl", {"issuer": issuer}, request_id=f"final-crl-{issuer}", timeout=120)
        assert response.ok, response.error
        final_crls[issuer] = response.body["crl"]
    run.client.close()
    run.signer.stop()
    assert not wait_gone(signer_processes(run.config)), "signer processes left after SIGTERM"

    for issuer, der in final_crls.items():
        crl = check_crl(der, cas[issuer])
        (tmp_path / f"{issuer}.crl").write_bytes(der)
        (tmp_path / f"{issuer}.pem").write_bytes(cas[issuer].public_bytes(Encoding.PEM))
        result = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / f"{issuer}.crl"),
                                 "-CAfile", str(tmp_path / f"{issuer}.pem"), "-noout", "-verify"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "verify OK" in result.stdout + result.stderr, result.stderr
        listed = {format(entry.serial_number, "x") for entry in crl}
        revoked_here = {s for i, s in run.revoked if i == issuer}
        assert revoked_here <= listed, f"{issuer}: answered revocations not on the CRL: {revoked_here - listed}"
        figures[f"crl {issuer} entries"] = len(listed)

    repo_path = run.folder / "repository.sqlite"
    with sqlite3.connect(repo_path) as db:
        rows = db.execute("SELECT issuer, serial, request_id, status, der FROM certificates").fetchall()
        stored_requests = dict(db.execute("SELECT request_id, result FROM requests").fetchall())
        revocations = {(i, s): (reason, at) for i, s, reason, at in
                       db.execute("SELECT issuer, serial, reason, revoked_at FROM revocations")}
        events = dict(db.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
    by_key = {(issuer, serial): (rid, status, der) for issuer, serial, rid, status, der in rows}
    serials = Counter(serial for _, serial, _, _, _ in rows)
    assert max(serials.values(), default=0) == 1, "a serial repeats"
    issued_per_id = Counter(rid for _, _, rid, status, _ in rows if status == "issued")
    reserved = [(issuer, serial, rid, der) for issuer, serial, rid, status, der in rows if status == "reserved"]

    sign_ids = {r.rid for r in run.requests.values() if r.cmd == "sign_x509"}
    assert set(issued_per_id) == sign_ids, "issued certificates and sign request ids differ"
    assert set(issued_per_id.values()) == {1}, "a request id has more than one issued certificate"
    assert sign_ids <= set(stored_requests), "a sign request without its stored result"
    returned = set()
    for rid, body in run.certs.items():
        key = (body["issuer"], body["serial"])
        assert by_key[key][:2] == (rid, "issued") and by_key[key][2] == body["certificate"], rid
        cert = x509.load_der_x509_certificate(body["certificate"])
        assert format(cert.serial_number, "x") == body["serial"]
        assert cert.verify_directly_issued_by(cas[body["issuer"]]) is None
        returned.add(key)
    assert len(returned) == len(run.certs)
    assert all(der is None for *_, der in reserved), "a reserved row holds a DER"
    assert not returned & {(i, s) for i, s, _, _ in reserved}, "a reserved serial was returned"
    assert set(run.revoked) <= set(revocations)
    # The event log (what replication publishes) has each change exactly once.
    assert events.get("x509_issued", 0) == sum(issued_per_id.values()), events
    assert events.get("x509_revoked", 0) == len(revocations), events
    for key, body in run.revoked.items():
        assert by_key[key][1] == "issued" and revocations[key][0] == body["reason"], key

    repo = Repository(str(repo_path), "crash-check")
    try:
        problems = repo.consistency_check()
        audit = repo.verify_audit()
        health = repo.health()
    finally:
        repo.close()
    assert problems == [], problems
    assert audit.ok, audit
    assert health["quick_check"] == "ok", health
    figures.update({
        "requests": len(run.requests), "sign": len(sign_ids),
        "revoke": sum(r.cmd == "revoke_x509" for r in run.requests.values()),
        "fetch_crl": len(run.crl_answers), "certificates issued": sum(issued_per_id.values()),
        "reserved rows left by crashes": len(reserved), "revoked": len(run.revoked),
        "audit entries": audit.entries_checked,
    })
    return figures


def crash_soak(dev_data: Path, tmp_path: Path, total: int, kills: int) -> None:
    seed = int(os.environ.get("CRASH_SEED") or secrets.randbits(31))
    total = int(os.environ.get("CRASH_REQUESTS") or total)
    kills = int(os.environ.get("CRASH_KILLS") or kills)
    print(f"\ncrash soak: seed {seed} (CRASH_SEED={seed} repeats the plan), {total} requests, {kills} kills")
    folder = tmp_path / "signer"
    folder.mkdir()
    run = CrashRun(dev_data, folder, seed, total, kills)
    started = time.monotonic()
    try:
        run.run()
        figures = verify_outcome(run, tmp_path)
    finally:
        if run.signer is not None and run.signer.process.poll() is None:
            kill_whole_signer(run.signer, run.config, run.admin_port)
        for kill in run.kills:
            print(f"  kill at {kill.at:7.2f} s: {kill.answered:5d} answered, {kill.in_flight:3d} in flight,"
                  f" {kill.orphans:2d} orphans survived the group kill, restart {kill.restart_s:.2f} s")
        print(f"  client counts: {dict(sorted(run.counts.items()))}")
    print(f"  outcome: {figures}")
    print(f"  run time {time.monotonic() - started:.1f} s")


def test_crash_soak(dev_data, tmp_path):
    crash_soak(dev_data, tmp_path, total=1000, kills=20)


@pytest.mark.slow
def test_crash_soak_long(dev_data, tmp_path):
    crash_soak(dev_data, tmp_path, total=3000, kills=60)


def test_group_kill_leaves_no_signer_process(dev_data, tmp_path):
    config = signer_config(dev_data, tmp_path)
    admin_port = yaml.safe_load(config.read_text())["actor_system"]["admin_port"]
    signer = SignerProcess(config, log_dir=tmp_path)
    actors = [r["pid"] for r in signer.status() if r.get("pid")]
    try:
        os.killpg(signer.process.pid, signal.SIGKILL)
        signer.process.wait(30)
        survivors = wait_gone(actors, timeout=10)
        # The Supervisor's watchdog ends the actors first, then the detached admin (which
        # holds the admin port) a moment later.
        deadline = time.monotonic() + 15
        while not port_free(admin_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert survivors == [] and port_free(admin_port), \
            f"{len(survivors)} actor processes survived the group kill; admin port free: {port_free(admin_port)}"
    finally:
        for pid in signer_processes(config):
            os.kill(pid, signal.SIGKILL)
        wait_gone(signer_processes(config))
