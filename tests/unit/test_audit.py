"""The audit log: core/repository/audit.py's hash chain, the entries core/repository/store.py writes with
every signature, revocation and CRL, and `signer-admin verify-audit`."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgpack
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.repository import audit

from core.repository import schema as repository_schema
from core.repository.store import Repository, RepositoryError, verify_audit_file
from tests.support.helpers import BIN

ISSUER = "class3"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "signer.example.yaml"


def independent_hash(prev_hash: str, seq: int, at: str, kind: str, body: str) -> str:
    """The documented formula spelled out again, not core.repository.audit's code."""
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{at}\n{kind}\n{body}".encode()).hexdigest()


# -- core/repository/audit.py -----------------------------------------------------------------------

VECTOR = [  # (seq, at, kind, body)
    (1, "2025-03-01T12:00:00Z", "x509_issued", '{"issuer":"class3","serial":"1f"}'),
    (2, "2025-03-01T12:00:05Z", "x509_revoked", '{"issuer":"class3","reason":1,"serial":"1f"}'),
    (3, "2025-03-01T12:01:00Z", "crl_issued", '{"issuer":"class3","number":7}'),
]
VECTOR_HEAD = "29763ee105a5e84d36fd73a1f218cbfdde49b6609a9630582b56068fcc9b9219"


def vector_chain() -> list[list]:
    rows, prev_hash = [], "0" * 64
    for seq, at, kind, body in VECTOR:
        digest = independent_hash(prev_hash, seq, at, kind, body)
        rows.append([seq, at, kind, body, prev_hash, digest])
        prev_hash = digest
    return rows


def test_entry_hash_matches_the_vector() -> None:
    rows = vector_chain()
    assert rows[-1][5] == VECTOR_HEAD  # pinned: a change of formula breaks every old log
    for seq, at, kind, body, prev_hash, digest in rows:
        assert audit.entry_hash(prev_hash, seq, at, kind, body) == digest
    assert rows[0][4] == audit.GENESIS_HASH == "0" * 64


def test_canonical_body() -> None:
    body = audit.canonical_body({"serial": "1f", "der": b"\x00\xff", "uids": ["Zoë <z@x>"],
                                 "issuer": "class3", "reason": None, "nested": {"b": 1, "a": 2}})
    assert body == ('{"der":"AP8=","issuer":"class3","nested":{"a":2,"b":1},"reason":null,'
                    '"serial":"1f","uids":["Zo\\u00eb <z@x>"]}')
    assert body.isascii()
    assert audit.canonical_body({"b": 1, "a": 2}) == audit.canonical_body({"a": 2, "b": 1})
    for unsupported in ({"t": NOW}, {"x": float("nan")}):
        with pytest.raises((TypeError, ValueError)):
            audit.canonical_body(unsupported)


def test_intact_chain_verifies() -> None:
    report = audit.verify_chain(vector_chain())
    assert report == audit.AuditReport(True, 3, None, None, VECTOR_HEAD)
    assert audit.verify_chain([]) == audit.AuditReport(True, 0, last_hash=audit.GENESIS_HASH)


@pytest.mark.parametrize("column, value", [
    (1, "2025-03-01T12:00:06Z"), (2, "x509_issued"),
    (3, '{"issuer":"class3","reason":0,"serial":"1f"}'), (4, "1" * 64), (5, "2" * 64)])
def test_any_changed_column_of_entry_2_fails_at_entry_2(column: int, value: str) -> None:
    rows = vector_chain()
    rows[1][column] = value
    report = audit.verify_chain(rows)
    assert (report.ok, report.first_bad_seq, report.entries_checked) == (False, 2, 1)
    assert report.last_hash == rows[0][5]


def test_a_rehashed_forgery_fails_at_the_next_entry() -> None:
    rows = vector_chain()
    rows[1][3] = '{"issuer":"class3","reason":0,"serial":"1f"}'
    rows[1][5] = independent_hash(*(rows[1][4], *rows[1][:4]))
    report = audit.verify_chain(rows)
    assert report.first_bad_seq == 3 and "prev_hash" in report.problem


@pytest.mark.parametrize("drop, bad_seq, problem", [
    (1, 3, "entry 2 missing (seq 3 follows 1)"),
    (0, 2, "entry 1 missing (the log starts at seq 2)"),
])
def test_a_deleted_entry_fails_at_the_next(drop: int, bad_seq: int, problem: str) -> None:
    rows = vector_chain()
    del rows[drop]
    report = audit.verify_chain(rows)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, bad_seq, problem)


def test_reordered_and_mistyped_entries_fail() -> None:
    rows = vector_chain()
    assert audit.verify_chain([rows[0], rows[2], rows[1]]).first_bad_seq == 3
    assert "out of order" in audit.verify_chain([rows[0], rows[0]]).problem
    rows[1][3] = b"not text"
    report = audit.verify_chain(rows)
    assert (report.first_bad_seq, report.problem) == (2, "a column is not text")


def test_verification_streams_and_stops_at_the_first_bad_entry() -> None:
    def rows() -> Iterator[tuple]:
        prev_hash = audit.GENESIS_HASH
        for seq in range(1, 50_001):
            body = "{}" if seq != 40_000 else '{"forged":true}'
            digest = audit.entry_hash(prev_hash, seq, "t", "crl_issued", "{}")
            yield seq, "t", "crl_issued", body, prev_hash, digest
            prev_hash = digest
        raise AssertionError("read past the broken entry")
    report = audit.verify_chain(rows())
    assert (report.first_bad_seq, report.entries_checked) == (40_000, 39_999)


def test_event_summary_hashes_blobs_and_keeps_the_audited_fields() -> None:
    body = {"issuer": ISSUER, "serial": "1f", "der": b"DER", "request_id": "r",
            "profile": "server", "not_before": "a", "not_after": "b",
            "request": {"result": {"pem": "..."}}}
    assert audit.event_summary("x509_issued", body, "node-a", "ev1") == {
        "issuer": ISSUER, "serial": "1f", "der_sha256": hashlib.sha256(b"DER").hexdigest(),
        "request_id": "r", "profile": "server", "not_before": "a", "not_after": "b",
        "origin_node": "node-a", "event_id": "ev1"}  # no subject: this event lacks one
    with pytest.raises(ValueError):
        audit.event_summary("x509_deleted", body, "node-a", "ev1")


# -- the repository writes the entries ---------------------------------------------------

@pytest.fixture
def open_repo(tmp_path: Path) -> Iterator[Callable[[str], Repository]]:
    opened: list[Repository] = []

    def open_node(node: str) -> Repository:
        opened.append(Repository(str(tmp_path / f"{node}.sqlite"), node))
        return opened[-1]
    yield open_node
    for repository in opened:
        repository.close()


@pytest.fixture
def repo(open_repo: Callable[[str], Repository]) -> Repository:
    return open_repo("a")


def reserve(repo: Repository, serial: str) -> None:
    repo.reserve_serial(ISSUER, serial, f"req-{serial}", "server", f"CN={serial}.example",
                        NOW - timedelta(days=1), NOW + timedelta(days=365))


def issue(repo: Repository, serial: str) -> None:
    reserve(repo, serial)
    repo.complete_certificate(ISSUER, serial, b"DER-" + serial.encode(), f"req-{serial}",
                              "sign_x509", f"digest-{serial}", {"serial": serial})


def revoke(repo: Repository, serial: str, reason: int = 1) -> dict:
    return repo.revoke(ISSUER, serial, reason, NOW, f"rev-{serial}")


def store_crl(repo: Repository, number: int) -> None:
    repo.store_crl(ISSUER, number, b"CRL-%d" % number, NOW, NOW + timedelta(days=7), "digest")


def sign_openpgp(repo: Repository, request_id: str = "pgp-1") -> None:
    repo.store_openpgp_signature(request_id, "ABCD" * 10, b"signed-key", ["A <a@x>"],
                                 NOW + timedelta(days=365), "sign_openpgp", "d", {"ok": True})


def populate(repo: Repository) -> None:
    """Four entries: issue 1, revoke 1, a CRL, an OpenPGP signature."""
    issue(repo, "1")
    revoke(repo, "1")
    store_crl(repo, 1)
    sign_openpgp(repo)


def kinds(repo: Repository) -> list[str]:
    return [entry["kind"] for entry in repo.audit_entries()]


def tamper(path: str, statement: str, params: tuple = ()) -> None:
    """What someone with the file could do: drop the guarding triggers, then edit."""
    with closing(sqlite3.connect(path)) as raw:
        raw.execute("DROP TRIGGER audit_log_no_update")
        raw.execute("DROP TRIGGER audit_log_no_delete")
        raw.execute(statement, params)
        raw.commit()


def test_each_operation_writes_exactly_one_entry(repo: Repository) -> None:
    reserve(repo, "1")
    assert kinds(repo) == []  # a reservation signs nothing
    repo.complete_certificate(ISSUER, "1", b"DER-1", "req-1", "sign_x509", "digest-1", {})
    assert kinds(repo) == ["x509_issued"]
    assert revoke(repo, "1")["already_revoked"] is False
    assert revoke(repo, "1", reason=4)["already_revoked"] is True  # a repeat: no entry
    assert kinds(repo) == ["x509_issued", "x509_revoked"]
    store_crl(repo, 1)
    sign_openpgp(repo)
    reserve(repo, "2")
    repo.discard_reservation(ISSUER, "2")
    repo.record_request("plain", "ping", "d", {})
    assert kinds(repo) == ["x509_issued", "x509_revoked", "crl_issued", "openpgp_signed"]
    assert repo.verify_audit() == audit.AuditReport(
        True, 4, last_hash=repo.audit_entries()[-1]["hash"])


def test_entries_record_hashes_not_blobs(repo: Repository) -> None:
    populate(repo)
    entries = repo.audit_entries()
    event_ids = [event["event_id"] for event in repo.events_after(0, 10)]
    assert [entry["seq"] for entry in entries] == [1, 2, 3, 4]
    assert [entry["body"]["event_id"] for entry in entries] == event_ids
    issued, revoked, crl, pgp = (entry["body"] for entry in entries)
    assert issued == {"issuer": ISSUER, "serial": "1", "request_id": "req-1",
                      "profile": "server", "subject": "CN=1.example",
                      "not_before": "2025-02-28T12:00:00Z", "not_after": "2026-03-01T12:00:00Z",
                      "der_sha256": hashlib.sha256(b"DER-1").hexdigest(),
                      "origin_node": "a", "event_id": event_ids[0]}
    assert revoked == {"issuer": ISSUER, "serial": "1", "reason": 1, "request_id": "rev-1",
                       "revoked_at": "2025-03-01T12:00:00Z", "origin_node": "a",
                       "event_id": event_ids[1]}
    assert crl["number"] == 1 and crl["der_sha256"] == hashlib.sha256(b"CRL-1").hexdigest()
    assert pgp["fingerprint"] == "ABCD" * 10 and pgp["uids"] == ["A <a@x>"]
    assert pgp["signed_key_sha256"] == hashlib.sha256(b"signed-key").hexdigest()
    first = entries[0]
    assert first["prev_hash"] == audit.GENESIS_HASH
    assert first["hash"] == independent_hash(first["prev_hash"], 1, first["at"], first["kind"],
                                             audit.canonical_body(first["body"]))
    assert all(entry["prev_hash"] == before["hash"] for before, entry in zip(entries, entries[1:]))
    assert [entry["seq"] for entry in repo.audit_entries(after_seq=1, limit=2)] == [2, 3]


@pytest.mark.parametrize("failing", ["_append_event", "_append_audit"])
def test_the_entry_shares_the_transaction_of_the_change(
        repo: Repository, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    reserve(repo, "1")

    def explode(self: Repository, *args: object) -> None:
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(Repository, failing, explode)
    with pytest.raises(RuntimeError):
        repo.complete_certificate(ISSUER, "1", b"DER-1", "req-1", "sign_x509", "d", {})
    assert repo.get_certificate(ISSUER, "1")["status"] == "reserved"
    assert repo.last_event_seq() == 0 and kinds(repo) == []


def test_the_audit_log_refuses_changes_through_sql(repo: Repository) -> None:
    populate(repo)
    for statement in ("UPDATE audit_log SET body = '{}' WHERE seq = 2",
                      "DELETE FROM audit_log WHERE seq = 4"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            with closing(sqlite3.connect(repo.path)) as raw:
                raw.execute(statement)
    assert repo.verify_audit().ok


def test_an_altered_entry_fails_at_that_entry(repo: Repository) -> None:
    populate(repo)
    forged = repo.audit_entries()[1]["body"] | {"reason": 0}
    tamper(repo.path, "UPDATE audit_log SET body = ? WHERE seq = 2",
           (audit.canonical_body(forged),))
    report = repo.verify_audit()
    assert (report.ok, report.first_bad_seq, report.entries_checked) == (False, 2, 1)
    assert "the entry was changed" in report.problem


def test_a_deleted_entry_fails_at_the_entry_after_it(repo: Repository) -> None:
    populate(repo)
    tamper(repo.path, "DELETE FROM audit_log WHERE seq = 2")
    report = repo.verify_audit()
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert report.problem == "entry 2 missing (seq 3 follows 1)"


def test_new_entries_keep_chaining_after_tampering(repo: Repository) -> None:
    populate(repo)
    tamper(repo.path, "UPDATE audit_log SET at = '2020-01-01T00:00:00Z' WHERE seq = 4")
    issue(repo, "2")
    assert repo.verify_audit().first_bad_seq == 4  # the later append hides nothing


# -- events applied from the peer --------------------------------------------------------

def sync(source: Repository, target: Repository) -> int:
    return sum(target.apply_event(event) for event in source.events_after(0, 1000))


def test_applied_events_are_audited_with_their_origin(
        open_repo: Callable[[str], Repository]) -> None:
    a, b = open_repo("a"), open_repo("b")
    populate(a)
    issue(b, "2")
    assert sync(a, b) == 4 and sync(a, b) == 0  # a repeat applies nothing: no entry
    assert kinds(b) == ["x509_issued", "x509_issued", "x509_revoked", "crl_issued",
                        "openpgp_signed"]
    entries = b.audit_entries()
    assert entries[0]["body"]["origin_node"] == "b"
    # The same action has the same audit body on both signers (only seq, at, hashes
    # differ), except a CRL's DER hash: crl_issued events do not carry the DER.
    here = [entry["body"] for entry in a.audit_entries()]
    assert here[2].pop("der_sha256")
    assert [entry["body"] for entry in entries[1:]] == here
    assert b.verify_audit().ok and b.verify_audit().entries_checked == 5
    sync(b, a)
    assert kinds(a)[-1] == "x509_issued" and a.audit_entries()[-1]["body"]["origin_node"] == "b"
    assert len(a.audit_entries()) == 5 and a.verify_audit().ok


def test_an_event_the_audit_cannot_record_is_refused(
        open_repo: Callable[[str], Repository]) -> None:
    b = open_repo("b")
    event = {"event_id": "e1", "origin_node": "a", "type": "crl_issued",
             "body": {"issuer": ISSUER, "number": 5, "this_update": msgpack.Timestamp(0)}}
    with pytest.raises(RepositoryError, match="malformed crl_issued event"):
        b.apply_event(event)
    assert b.crl_number_floor(ISSUER) is None and kinds(b) == [] and b.last_event_seq() == 0


# -- opening read-only, upgrading --------------------------------------------------------

def test_verify_audit_file_reads_beside_an_open_repository(repo: Repository) -> None:
    populate(repo)
    assert verify_audit_file(repo.path) == repo.verify_audit()
    issue(repo, "2")
    assert verify_audit_file(repo.path).entries_checked == 5


def test_verify_audit_file_refuses_what_it_cannot_check(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        verify_audit_file(str(tmp_path / "missing.sqlite"))
    assert not (tmp_path / "missing.sqlite").exists()  # read-only: nothing created
    old = str(tmp_path / "old.sqlite")
    with closing(sqlite3.connect(old)) as raw:
        for migration in repository_schema.MIGRATIONS[:2]:
            for statement in migration:
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 2")
    with pytest.raises(RepositoryError, match="schema version 2 has no audit log"):
        verify_audit_file(old)


def test_an_upgraded_repository_starts_an_empty_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite")
    with closing(sqlite3.connect(path)) as raw:
        for migration in repository_schema.MIGRATIONS[:2]:
            for statement in migration:
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 2")
    upgraded = Repository(path, "a")
    try:
        assert upgraded.schema_version() == repository_schema.SCHEMA_VERSION
        assert upgraded.verify_audit() == audit.AuditReport(True, 0)
        issue(upgraded, "1")
        assert upgraded.audit_entries()[0]["seq"] == 1 and upgraded.verify_audit().ok
    finally:
        upgraded.close()


@pytest.mark.slow
def test_a_million_entries_verify_in_constant_memory(tmp_path: Path) -> None:
    import resource
    path = str(tmp_path / "big.sqlite")
    Repository(path, "a").close()

    def rows() -> Iterator[tuple]:
        prev_hash = audit.GENESIS_HASH
        for seq in range(1, 1_000_001):
            body = audit.canonical_body({"issuer": ISSUER, "serial": format(seq, "x"),
                                         "der_sha256": "ab" * 32, "origin_node": "a"})
            digest = audit.entry_hash(prev_hash, seq, "2025-03-01T12:00:00Z", "x509_issued", body)
            yield seq, "2025-03-01T12:00:00Z", "x509_issued", body, prev_hash, digest
            prev_hash = digest
    with closing(sqlite3.connect(path)) as raw:
        raw.executemany("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)", rows())
        raw.commit()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = verify_audit_file(path)
    assert report.ok and report.entries_checked == 1_000_000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


# -- signer-admin verify-audit -----------------------------------------------------------

def admin_config(tmp_path: Path, repository_path: str) -> Path:
    """The shipped example, pointed at placeholder files that exist, without OpenPGP."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    for issuer in data["issuers"]:
        certificate = tmp_path / f"{issuer['id']}.pem"
        certificate.write_text("placeholder")
        issuer["certificate"] = str(certificate)
    data["x509"]["profiles"] = str(EXAMPLE_CONFIG.parent / "profiles")
    data.pop("openpgp")
    data["repository"]["path"] = repository_path
    audit_key = tmp_path / "audit-key.pem"  # no seals here: any P-256 key checks them all
    audit_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    data["audit"]["public_key"] = str(audit_key)
    path = tmp_path / "signer.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def verify_audit_cli(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "signer-admin"), "--config", str(config), "verify-audit",
                           *extra], capture_output=True, text=True, timeout=60)


def test_signer_admin_verify_audit(tmp_path: Path, repo: Repository) -> None:
    populate(repo)  # the repository stays open, as beside a running signer
    config = admin_config(tmp_path, repo.path)
    intact = verify_audit_cli(config)
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.splitlines()[0] == "audit log OK: 4 entries"
    as_json = json.loads(verify_audit_cli(config, "--json").stdout)
    assert as_json["ok"] is True and as_json["entries_checked"] == 4
    assert as_json["last_hash"] == repo.audit_entries()[-1]["hash"]

    tamper(repo.path, "UPDATE audit_log SET body = replace(body, 'class3', 'class1')"
                      " WHERE seq = 3")
    broken = verify_audit_cli(config)
    assert broken.returncode == 1
    assert broken.stdout.startswith("audit log BROKEN at entry 3: stored hash ")
    as_json = json.loads(verify_audit_cli(config, "--json").stdout)
    assert (as_json["ok"], as_json["first_bad_seq"], as_json["entries_checked"]) == (False, 3, 2)


def test_signer_admin_verify_audit_without_an_audit_public_key(tmp_path: Path,
                                                              repo: Repository) -> None:
    config = admin_config(tmp_path, repo.path)
    data = yaml.safe_load(config.read_text())
    del data["audit"]["public_key"]
    config.write_text(yaml.safe_dump(data))
    result = verify_audit_cli(config)
    assert result.returncode == 2 and "no audit public key" in result.stderr


def test_signer_admin_verify_audit_without_a_repository(tmp_path: Path) -> None:
    result = verify_audit_cli(admin_config(tmp_path, str(tmp_path / "none.sqlite")))
    assert result.returncode == 2 and "signer-admin: sqlite:" in result.stderr
    assert not (tmp_path / "none.sqlite").exists()
