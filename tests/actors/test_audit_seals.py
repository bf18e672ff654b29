"""Seals and heads of the audit log (issue 11, point 3): a log cut or rewritten, even with
its whole sha256 chain recomputed, no longer verifies against the seals the HSM made or
against a head seen earlier; the Repository and Hsm actors seal every commit (coalesced);
the head rides on answers and health; the WebDB daemon keeps it. The end-to-end half, with
a running signer and the daemon, is tests/e2e/test_audit.py."""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest
from thespian.actors import WakeupMessage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from actors.handlers.health import audit_problems
from actors.owners.repository import SEAL_PACE_S, Repository as RepositoryActor
from core.repository import audit
from core.repository.store import Repository, RepositoryError, verify_sealed_audit_file
from messages import HsmSealReply, HsmSealRequest, HsmSignReply, HsmSignRequest
from messages.repository import CompleteCertificate, RepoReply, ReserveSerial, RevokeCertificate
from tests.support.actor_harness import ActorHarness
from tests.unit.test_audit import (ISSUER, NOW, admin_config, independent_hash, issue, populate,
                              verify_audit_cli)

SEALED_AT = "2025-03-01T12:00:00Z"
AUDIT_KEY = ec.generate_private_key(ec.SECP256R1())  # plays the token's audit key
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())  # an attacker's key


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository(str(tmp_path / "a.sqlite"), "a")
    yield repository
    repository.close()


def seal(repo: Repository, key: ec.EllipticCurvePrivateKey = AUDIT_KEY) -> dict:
    """What the Hsm actor and the Repository actor do for one seal of the current head."""
    head = repo.audit_head()
    signature = key.sign(audit.seal_message(head["seq"], head["hash"], SEALED_AT),
                         ec.ECDSA(hashes.SHA256()))
    repo.store_audit_seal(head["seq"], head["hash"], SEALED_AT, signature)
    return head


def verify(repo: Repository, head: dict | None = None) -> audit.SealedAuditReport:
    return verify_sealed_audit_file(repo.path, AUDIT_KEY.public_key(),
                                    None if head is None else (head["seq"], head["hash"]))


def raw(path: str, *statements: tuple[str, tuple]) -> None:
    """What someone with write access to the file does: drop the guards, then edit."""
    with closing(sqlite3.connect(path)) as db:
        for trigger in ("audit_log_no_update", "audit_log_no_delete",
                        "audit_seals_no_update", "audit_seals_no_delete"):
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for statement, params in statements:
            db.execute(statement, params)
        db.commit()


def rewrite_and_rehash(path: str, seq: int, body: str) -> None:
    """Rewrite entry `seq` and recompute the whole sha256 chain from it: the plain chain
    verifies again (the hole this issue closes)."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT seq, at, kind, body, hash FROM audit_log ORDER BY seq").fetchall()
    updates, prev_hash = [], audit.GENESIS_HASH
    for number, at, kind, text, stored_hash in rows:
        if number < seq:
            prev_hash = stored_hash
            continue
        text = body if number == seq else text
        digest = independent_hash(prev_hash, number, at, kind, text)
        updates.append(("UPDATE audit_log SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                        (text, prev_hash, digest, number)))
        prev_hash = digest
    raw(path, *updates)


# -- core: verify_sealed_chain on a real repository ---------------------------------------

def test_a_sealed_log_verifies_and_entries_after_the_seal_are_shown_unsealed(repo) -> None:
    populate(repo)
    head = seal(repo)
    report = verify(repo, head)
    assert report.ok and report.chain.entries_checked == 4
    assert (report.seals_checked, report.last_sealed_seq, report.unsealed_entries) == (1, 4, 0)
    assert report.head_problem is None
    issue(repo, "2")
    report = verify(repo, head)  # the newer entry is not sealed yet: shown, not an error
    assert report.ok and (report.last_sealed_seq, report.unsealed_entries) == (4, 1)


def test_a_rewritten_log_with_its_whole_chain_recomputed_fails_at_the_seal(repo) -> None:
    populate(repo)
    sealed = seal(repo)
    forged = repo.audit_entries()[1]["body"] | {"reason": 0}
    rewrite_and_rehash(repo.path, 2, audit.canonical_body(forged))
    assert repo.verify_audit().ok  # the sha256 chain alone cannot see it
    report = verify(repo)
    assert not report.ok and report.chain.ok
    assert report.seal_problems == [f"seal of entry 4: it seals hash {sealed['hash'][:16]}"
                                    f"... but the entry's hash is {repo.audit_head()['hash'][:16]}..."
                                    " (the log was rewritten)"]


def test_a_forged_seal_signed_by_another_key_fails(repo) -> None:
    populate(repo)
    seal(repo)
    rewrite_and_rehash(repo.path, 3, '{"forged":true}')
    raw(repo.path, ("DELETE FROM audit_seals", ()))  # the true seal goes ...
    seal(repo, OTHER_KEY)  # ... and one of the attacker's key takes its place
    report = verify(repo)
    assert not report.ok and report.chain.ok and report.seals_checked == 0
    assert report.seal_problems == ["seal of entry 4: its signature does not verify with the"
                                    " audit public key (a forged seal)"]


def test_a_cut_log_fails_at_the_seal_and_at_a_head_seen_before(repo) -> None:
    populate(repo)
    seal(repo)
    issue(repo, "2")
    issue(repo, "3")
    kept = repo.audit_head()  # entry 6, unsealed, as an answer carried it
    assert verify(repo, kept).ok
    raw(repo.path, ("DELETE FROM audit_log WHERE seq > 4", ()))  # the unsealed tail
    report = verify(repo, kept)
    assert report.chain.ok and not report.seal_problems  # seals alone cannot see this cut
    assert not report.ok and report.head_problem == (
        f"head 6:{kept['hash'][:16]}... is not in the log: it ends at entry 4 (entries were cut)")
    raw(repo.path, ("DELETE FROM audit_log WHERE seq > 2", ()))  # into the sealed part
    report = verify(repo)
    assert not report.ok and report.seal_problems == [
        "seal of entry 4: the log ends at entry 2 (entries after it were cut)"]


def test_a_head_whose_entry_was_rewritten_is_not_in_the_log(repo) -> None:
    populate(repo)
    kept = repo.audit_head()
    rewrite_and_rehash(repo.path, 1, '{"forged":true}')
    report = verify(repo, kept)
    assert report.chain.ok and not report.ok
    assert report.head_problem.startswith(f"head 4:{kept['hash'][:16]}... is not in the log: entry 4"
                                          " now has hash ")


def test_a_seal_of_a_head_the_log_does_not_have_is_refused(repo) -> None:
    populate(repo)
    with pytest.raises(RepositoryError, match="is not the sealed head"):
        repo.store_audit_seal(4, "f" * 64, SEALED_AT, b"sig")
    with pytest.raises(RepositoryError, match="is not the sealed head"):
        repo.store_audit_seal(9, repo.audit_head()["hash"], SEALED_AT, b"sig")
    assert repo.last_audit_seal() is None


def test_the_log_must_extend_the_last_seal_before_it_is_sealed_again(repo) -> None:
    populate(repo)
    sealed = seal(repo)
    issue(repo, "2")
    assert repo.audit_extends(sealed, repo.audit_head()) is None
    rewrite_and_rehash(repo.path, 2, '{"forged":true}')
    assert repo.audit_extends(sealed, repo.audit_head()) == (
        "sealed entry 4 is changed (the log was cut or rewritten under the signer)")


# -- the actors: seal after every commit, one in flight, head in the reply ---------------

@pytest.fixture
def audit_public_key(softhsm):
    from tests.support.fixtures_shared import token_audit_key
    return token_audit_key()


@pytest.fixture
def hsm(audit_public_key, monkeypatch):
    from tests.support.fixtures_shared import hsm_actor, token_rsa_key
    token_rsa_key("audit-test-ca")
    harness = hsm_actor("audit-test-ca", monkeypatch)
    yield harness
    harness.actor.shutdown()


def repository_actor(tmp_path: Path) -> ActorHarness:
    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")),
                             sync=None)
    return ActorHarness(RepositoryActor, config, {"hsm": "HSM"})


def complete(h: ActorHarness, serial: str, tag: int) -> RepoReply:
    h.deliver(ReserveSerial(tag, ISSUER, serial, f"req-{serial}", "server", "CN=x", NOW, NOW), "handler")
    (_, reserved), = h.take(RepoReply)
    assert reserved.error is None and reserved.audit_head is None  # a reservation signs nothing
    h.deliver(CompleteCertificate(tag, ISSUER, serial, b"DER", f"req-{serial}", "sign_x509", "d", {}),
              "handler")
    (_, reply), = h.take(RepoReply)
    return reply


def test_each_commit_is_sealed_on_the_hsm_one_seal_in_flight(tmp_path, hsm, audit_public_key) -> None:
    h = repository_actor(tmp_path)
    store = h.actor.store
    first = complete(h, "1", 1)
    assert first.audit_head == {"seq": 1, "hash": store.audit_head()["hash"], "node_id": "n1"}
    (address, request), = h.take(HsmSealRequest)
    assert address == "HSM" and (request.seq, request.hash) == (1, first.audit_head["hash"])
    second = complete(h, "2", 2)
    assert second.audit_head["seq"] == 2
    assert h.take(HsmSealRequest) == []  # one in flight: the next seal covers entry 2

    hsm.deliver(request, "repository")
    (_, sealed), = hsm.take(HsmSealReply)
    assert sealed.error is None
    h.deliver(sealed, "HSM")
    assert store.last_audit_seal() == {"seq": 1, "hash": request.hash}
    # The next seal is paced: asked SEAL_PACE_S after the last one, not at once (under load
    # the head moves with every message), and it covers everything committed meanwhile.
    assert h.take(HsmSealRequest) == []
    (delay, payload), = [w for w in h.wakeups if w[1] == ("seal_pace", None)]
    assert 0 < delay <= SEAL_PACE_S
    complete(h, "3", 3)
    assert h.take(HsmSealRequest) == []
    h.pass_time(delay)
    h.deliver(WakeupMessage(delay, payload), "repository")
    (_, coalesced), = h.take(HsmSealRequest)
    assert coalesced.seq == 3
    hsm.deliver(coalesced, "repository")
    h.deliver(hsm.take(HsmSealReply)[0][1], "HSM")
    assert h.take(HsmSealRequest) == []

    # A change after a quiet spell is sealed at once.
    h.pass_time(SEAL_PACE_S)
    complete(h, "4", 4)
    (_, lone), = h.take(HsmSealRequest)
    assert lone.seq == 4
    hsm.deliver(lone, "repository")
    h.deliver(hsm.take(HsmSealReply)[0][1], "HSM")

    report = verify_sealed_audit_file(store.path, audit_public_key)
    assert report.ok and (report.seals_checked, report.unsealed_entries) == (3, 0)
    h.deliver(RevokeCertificate(3, ISSUER, "1", 1, NOW, "rev-1"), "handler")
    assert h.take(RepoReply)[0][1].audit_head["seq"] == 5
    h.deliver(RevokeCertificate(4, ISSUER, "1", 4, NOW, "rev-1b"), "handler")
    assert h.take(RepoReply)[0][1].audit_head is None  # already revoked: nothing changed
    h.actor.shutdown()


def test_a_failed_seal_is_a_health_problem_and_retried(tmp_path, hsm) -> None:
    h = repository_actor(tmp_path)
    complete(h, "1", 1)
    (_, request), = h.take(HsmSealRequest)
    hsm.actor.audit_key = "no-such-audit-key"  # a token without the audit key
    hsm.deliver(request, "repository")
    (_, failed), = hsm.take(HsmSealReply)
    assert failed.error["code"] == "hsm_key_not_found"
    h.deliver(failed, "HSM")
    health = h.actor.store.audit_head()
    assert h.actor.seal_error.startswith("hsm_key_not_found")
    assert any(payload == ("seal_retry", None) for _, payload in h.wakeups)
    from messages import RepoHealthReply, RepoHealthRequest
    h.deliver(RepoHealthRequest(9), "health")
    (_, reply), = h.take(RepoHealthReply)
    assert reply.health["audit"] == {"head": {**health, "node_id": "n1"}, "sealed_seq": 0,
                                     "unsealed": 1, "seal_error": h.actor.seal_error}
    assert audit_problems({}, reply.health) == [f"audit: {h.actor.seal_error}"]
    h.actor.shutdown()


def test_the_audit_key_signs_seals_only(hsm) -> None:
    hsm.deliver(HsmSignRequest(5, hsm.actor.audit_key, audit.SEAL_MECHANISM,
                               audit.seal_message(1, "0" * 64, SEALED_AT)), "attacker")
    (_, reply), = hsm.take(HsmSignReply)
    assert reply.signature is None and "signs audit seals only" in reply.error["message"]


def test_a_token_without_the_audit_key_is_a_health_problem(hsm) -> None:
    from messages import HsmHealthReply, HsmHealthRequest
    hsm.deliver(HsmHealthRequest(1), "health")
    (_, reply), = hsm.take(HsmHealthReply)
    assert reply.health["audit_key"] == {"label": hsm.actor.audit_key, "present": True}
    hsm.actor.audit_key = "no-such-audit-key"
    hsm.deliver(HsmHealthRequest(2), "health")
    (_, reply), = hsm.take(HsmHealthReply)
    assert reply.health["audit_key"]["present"] is False
    assert audit_problems(reply.health, {}) == [
        "audit: no audit key 'no-such-audit-key' on the token: the audit log is not sealed"
        " (create it: docs/operations.md, 'The audit key')"]


# -- signer-admin verify-audit --head -----------------------------------------------------

def write_public_key(tmp_path: Path) -> Path:
    path = tmp_path / "audit-key.pem"
    path.write_bytes(AUDIT_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def test_verify_audit_cli_head_and_seals(tmp_path, repo) -> None:
    populate(repo)
    seal(repo)
    issue(repo, "2")
    head = repo.audit_head()
    config = admin_config(tmp_path, repo.path)
    key = write_public_key(tmp_path)
    good = verify_audit_cli(config, "--public-key", str(key), "--head", f"{head['seq']}:{head['hash']}")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[2:] == [
        "seals: 1 verified, last sealed entry 4",
        "unsealed: 1 entries after entry 4 (not sealed yet, or the token lacks the audit key)",
        f"head 5:{head['hash']}: in the log"]

    raw(repo.path, ("DELETE FROM audit_log WHERE seq = 5", ()))
    cut = verify_audit_cli(config, "--public-key", str(key), "--head", f"5:{head['hash']}")
    assert cut.returncode == 1
    assert (f"head 5:{head['hash']}: NOT in the log: head 5:{head['hash'][:16]}... is not in the log:"
            " it ends at entry 4 (entries were cut)") in cut.stdout.splitlines()
    as_json = json.loads(verify_audit_cli(config, "--public-key", str(key), "--json",
                                          "--head", f"5:{head['hash']}").stdout)
    assert (as_json["ok"], as_json["chain_ok"], as_json["last_sealed_seq"]) == (False, True, 4)

    wrong = verify_audit_cli(config, "--public-key", str(key), "--head", "5:xyz")
    assert wrong.returncode == 2 and "is not SEQ:HASH" in wrong.stderr
    other = tmp_path / "other.pem"
    other.write_bytes(OTHER_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    forged = verify_audit_cli(config, "--public-key", str(other))
    assert forged.returncode == 1 and "seal BAD: seal of entry 4: its signature does not verify" in forged.stdout


# -- the WebDB daemon keeps the newest head ------------------------------------------------

def test_the_daemon_keeps_the_newest_head_per_signer_and_warns_of_a_cut(tmp_path) -> None:
    from tools.webdb.status import StatusFile, status_lines
    from tools.webdb.work import audit_head_of, keep_audit_head

    def head(seq: int, digest: str = "a", node: str = "s1") -> dict:
        return audit_head_of({"audit_head": {"seq": seq, "hash": digest * 64, "node_id": node}})
    assert audit_head_of({"audit_head": {"seq": 1, "hash": "nothex", "node_id": "s1"}}) is None
    assert audit_head_of({"serial": "1f"}) is None
    kept: dict = {}
    assert keep_audit_head(kept, head(5), "t1", False) is None
    assert keep_audit_head(kept, head(3), "t2", False) is None  # an earlier answer of the window
    assert keep_audit_head(kept, head(2, node="s2"), "t2", True) is None  # the other signer's log
    assert kept["s1"] == {"seq": 5, "hash": "a" * 64, "at": "t1"}
    assert "changed its hash" in keep_audit_head(kept, head(5, "b"), "t3", False)
    cut = keep_audit_head(kept, head(4), "t4", True)  # health says the log ends before entry 5
    assert cut == (f"signer s1: its audit log ends at entry 4, before entry 5 seen at t1 (the log was"
                   f" cut?); check with signer-admin verify-audit --head 5:{'a' * 64}")
    assert kept["s1"]["seq"] == 5  # never lowered

    status = StatusFile(tmp_path)
    status.data["audit_heads"].update(kept)
    status.write()
    again = StatusFile(tmp_path)  # a restarted daemon still knows them
    assert again.data["audit_heads"] == kept
    assert f"audit head s1: 5:{'a' * 64} (seen t1)" in status_lines(again.data, True)
