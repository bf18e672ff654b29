"""core/repository/store.py against real SQLite files in tmp_path."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.repository import schema as repository_schema
from core.wire.protocol import SignerError, pack
from core.repository.store import (DuplicateSerial, Repository, RepositoryError, RequestConflict,
                             UnknownCertificate)

NODE = "node-a"
ISSUER = "class3"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
GRACE = timedelta(days=30)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "signer.sqlite")


@pytest.fixture
def repo(db_path: str) -> Iterator[Repository]:
    repository = Repository(db_path, NODE)
    yield repository
    repository.close()


def raw_execute(path: str, sql: str, params: tuple = ()) -> list[tuple]:
    """A second, plain connection: plants states the Repository API refuses to create."""
    with closing(sqlite3.connect(path)) as raw:
        rows = raw.execute(sql, params).fetchall()
        raw.commit()
        return rows


def reserve(repo: Repository, serial: str, request_id: str | None = None,
            not_after: datetime = NOW + timedelta(days=365)) -> None:
    repo.reserve_serial(ISSUER, serial, request_id or f"req-{serial}", "server",
                        f"CN={serial}.example", NOW - timedelta(days=1), not_after)


def issue(repo: Repository, serial: str, not_after: datetime = NOW + timedelta(days=365)) -> None:
    request_id = f"req-{serial}"
    reserve(repo, serial, request_id, not_after)
    repo.complete_certificate(ISSUER, serial, b"DER-" + serial.encode(), request_id,
                              "sign_x509", f"digest-{serial}",
                              {"issuer": ISSUER, "serial": serial})


def event_types(repo: Repository) -> list[str]:
    return [event["type"] for event in repo.events_after(0, 1000)]


def fail_on_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the last step of every change fail, after its rows were written."""
    def explode(self: Repository, event_type: str, body: dict, *certificate_der: bytes) -> None:
        raise RuntimeError(f"simulated crash while appending {event_type}")
    monkeypatch.setattr(Repository, "_append_event", explode)


# -- opening, schema and migrations ------------------------------------------------------

def test_open_configures_connection_and_schema(repo: Repository, db_path: str) -> None:
    def pragma(name: str) -> object:
        return repo._db.execute(f"PRAGMA {name}").fetchone()[0]
    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") > 0
    assert repo.schema_version() == repository_schema.SCHEMA_VERSION
    assert raw_execute(db_path, "PRAGMA user_version") == [(repository_schema.SCHEMA_VERSION,)]


def test_reopen_sees_data_and_schema_version(db_path: str) -> None:
    first = Repository(db_path, NODE)
    issue(first, "1f")
    first.close()
    reopened = Repository(db_path, NODE)
    try:
        assert reopened.get_certificate(ISSUER, "1f")["status"] == "issued"
        assert reopened.health()["schema_version"] == repository_schema.SCHEMA_VERSION
        assert event_types(reopened) == ["x509_issued"]
    finally:
        reopened.close()


def test_newer_schema_version_is_refused(db_path: str) -> None:
    Repository(db_path, NODE).close()
    newer = repository_schema.SCHEMA_VERSION + 1
    raw_execute(db_path, f"PRAGMA user_version = {newer}")
    with pytest.raises(RepositoryError, match="newer") as refused:
        Repository(db_path, NODE)
    assert refused.value.code == "repository_error"
    assert raw_execute(db_path, "PRAGMA user_version") == [(newer,)]


def test_pending_migration_is_applied_on_open(db_path: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    Repository(db_path, NODE).close()
    added = ("CREATE TABLE notes (text TEXT)", "INSERT INTO notes VALUES ('migrated')")
    monkeypatch.setattr(repository_schema, "MIGRATIONS", [*repository_schema.MIGRATIONS, added])
    upgraded = Repository(db_path, NODE)
    upgraded.close()
    assert raw_execute(db_path, "PRAGMA user_version") == [(repository_schema.SCHEMA_VERSION + 1,)]
    assert raw_execute(db_path, "SELECT text FROM notes") == [("migrated",)]


def test_failing_migration_leaves_version_and_schema_unchanged(
        db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Repository(db_path, NODE).close()
    broken = ("CREATE TABLE half_done (x)", "THIS IS NOT SQL")
    monkeypatch.setattr(repository_schema, "MIGRATIONS", [*repository_schema.MIGRATIONS, broken])
    with pytest.raises(RepositoryError):
        Repository(db_path, NODE)
    assert raw_execute(db_path, "PRAGMA user_version") == [(repository_schema.SCHEMA_VERSION,)]
    assert raw_execute(db_path, "SELECT name FROM sqlite_master WHERE name = 'half_done'") == []


def test_unopenable_path_raises_repository_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        Repository(str(tmp_path / "missing-dir" / "signer.sqlite"), NODE)


@pytest.mark.parametrize("error_class, code", [
    (RepositoryError, "repository_error"), (UnknownCertificate, "unknown_serial"),
    (DuplicateSerial, "duplicate_serial"), (RequestConflict, "request_id_conflict")])
def test_typed_errors_carry_their_code(error_class: type[RepositoryError], code: str) -> None:
    error = error_class("details")
    assert isinstance(error, SignerError)
    assert error.to_wire() == {"code": code, "message": "details"}


# -- idempotency ---------------------------------------------------------------------------

def test_record_and_lookup_request(repo: Repository) -> None:
    assert repo.lookup_request("r1") is None
    result = {"pem": "x", "serial": "ab", "raw": b"\x00\x01"}
    assert repo.record_request("r1", "sign_x509", "d1", result) == result
    assert repo.lookup_request("r1") == {"command": "sign_x509", "request_digest": "d1",
                                         "result": result}


def test_same_request_twice_keeps_the_first_result(repo: Repository) -> None:
    repo.record_request("r1", "sign_x509", "d1", {"answer": 1})
    assert repo.record_request("r1", "sign_x509", "d1", {"answer": 2}) == {"answer": 1}
    assert repo.health()["counts"]["requests"] == 1


def test_same_request_id_with_another_digest_conflicts(repo: Repository) -> None:
    repo.record_request("r1", "sign_x509", "d1", {"answer": 1})
    with pytest.raises(RequestConflict) as conflict:
        repo.record_request("r1", "sign_x509", "d2", {"answer": 2})
    assert conflict.value.code == "request_id_conflict"
    assert repo.lookup_request("r1")["result"] == {"answer": 1}


# -- certificates ---------------------------------------------------------------------------

def test_reserve_writes_a_reserved_row_without_der(repo: Repository) -> None:
    reserve(repo, "00AB")
    row = repo.get_certificate(ISSUER, "ab")
    assert row["serial"] == "ab" and row["status"] == "reserved" and row["der"] is None
    assert row["origin_node"] == NODE and row["profile"] == "server"
    assert row["not_before"] == NOW - timedelta(days=1)
    assert row["not_before"].tzinfo is not None and row["created_at"].tzinfo is not None
    assert event_types(repo) == []  # a reservation is local bookkeeping, not an event


def test_reserving_a_used_serial_raises_duplicate_serial(repo: Repository) -> None:
    reserve(repo, "ab")
    with pytest.raises(DuplicateSerial) as duplicate:
        reserve(repo, "0x00AB", request_id="other")  # same serial, other spelling
    assert duplicate.value.code == "duplicate_serial"
    repo.reserve_serial("other-issuer", "ab", "r2", "server", "CN=x", NOW, NOW)  # per issuer


def test_lookup_or_reserve_reserves_for_an_unknown_request_only(repo: Repository) -> None:
    def lookup_or_reserve(serial: str, request_id: str) -> dict | None:
        return repo.lookup_or_reserve(ISSUER, serial, request_id, "server", "CN=x",
                                      NOW - timedelta(days=1), NOW + timedelta(days=365))
    assert lookup_or_reserve("ab", "req-ab") is None
    assert repo.get_certificate(ISSUER, "ab")["status"] == "reserved"
    with pytest.raises(DuplicateSerial):
        lookup_or_reserve("ab", "req-other")
    issue(repo, "cd")  # request req-cd answered: its record comes back, nothing is reserved
    assert lookup_or_reserve("ef", "req-cd") == {
        "command": "sign_x509", "request_digest": "digest-cd",
        "result": {"issuer": ISSUER, "serial": "cd"}}
    assert repo.get_certificate(ISSUER, "ef") is None
    assert lookup_or_reserve("ef", "req-cd") == repo.lookup_request("req-cd")


def test_complete_issues_records_request_and_appends_event(repo: Repository) -> None:
    issue(repo, "1f")
    row = repo.get_certificate(ISSUER, "1F")
    assert row["status"] == "issued" and row["der"] == b"DER-1f"
    assert repo.lookup_request("req-1f")["result"] == {"issuer": ISSUER, "serial": "1f"}
    [event] = repo.events_after(0, 10)
    assert event["type"] == "x509_issued" and event["origin_node"] == NODE
    assert event["body"] == {
        "issuer": ISSUER, "serial": "1f", "der": b"DER-1f", "request_id": "req-1f",
        "profile": "server", "not_before": "2025-02-28T12:00:00Z",
        "not_after": "2026-03-01T12:00:00Z", "origin_node": NODE,
        "subject": "CN=1f.example",
        "request": {"command": "sign_x509", "request_digest": "digest-1f",
                    "result": {"issuer": ISSUER, "serial": "1f"}}}


def test_the_der_is_stored_once_and_every_answer_reads_back_the_same(repo: Repository,
                                                                     db_path: str) -> None:
    """Issue 13.4: the request record and the event refer to certificates.der; what
    lookup_request, lookup_or_reserve, record_request and events_after give back is what
    was recorded, byte for byte (the same fields in the same order)."""
    der = bytes(range(256)) * 4  # 1 KiB, found anywhere it is copied
    result = {"certificate": der, "serial": "1f", "issuer": ISSUER, "profile": "server",
              "not_before": "2025-02-28T12:00:00+00:00", "not_after": "2026-03-01T12:00:00+00:00"}
    reserve(repo, "1f")
    repo.complete_certificate(ISSUER, "1f", der, "req-1f", "sign_x509", "digest-1f", result)
    stored = repo.lookup_request("req-1f")
    assert stored == {"command": "sign_x509", "request_digest": "digest-1f", "result": result}
    assert pack(stored["result"]) == pack(result)
    assert repo.lookup_or_reserve(ISSUER, "20", "req-1f", "server", "CN=x", NOW, NOW) == stored
    assert repo.record_request("req-1f", "sign_x509", "digest-1f", {"other": 1}) == result
    [event] = repo.events_after(0, 10)
    # On the wire the body has the previous release's form (a peer still on it applies it:
    # rolling upgrades); stored, neither copy is kept (the rows below).
    assert event["body"]["der"] == der
    assert event["body"]["request"]["result"] == result
    assert list(event["body"]["request"]["result"]) == list(result)
    assert set(event) == {"seq", "event_id", "origin_node", "type", "body", "created_at", "signature"}
    assert raw_execute(db_path, "SELECT COUNT(*) FROM certificates WHERE der = ?", (der,)) == [(1,)]
    rows = raw_execute(db_path, "SELECT result, certificate_ref FROM requests UNION ALL"
                                " SELECT body, certificate_ref FROM events")
    assert [(der in blob, ref) for blob, ref in rows] == [
        (False, 1), (False, repository_schema.REF_BODY_DER | repository_schema.REF_RESULT_CERTIFICATE)]


def test_a_result_without_the_certificate_is_stored_as_it_is(repo: Repository,
                                                             db_path: str) -> None:
    """Only a result holding the certificate's own DER refers to it; any other is kept."""
    reserve(repo, "1f")
    result = {"certificate": b"another DER", "serial": "1f", "issuer": ISSUER}
    repo.complete_certificate(ISSUER, "1f", b"DER-1f", "req-1f", "sign_x509", "d", result)
    assert repo.lookup_request("req-1f")["result"] == result
    assert repo.events_after(0, 1)[0]["body"]["request"]["result"] == result
    assert raw_execute(db_path, "SELECT certificate_ref FROM requests") == [(0,)]


def test_complete_refuses_unknown_issued_or_foreign_reservations(repo: Repository) -> None:
    with pytest.raises(UnknownCertificate):
        repo.complete_certificate(ISSUER, "99", b"DER", "r", "sign_x509", "d", {})
    issue(repo, "1f")
    with pytest.raises(RepositoryError, match="already issued"):
        repo.complete_certificate(ISSUER, "1f", b"DER", "req-1f", "sign_x509", "d", {})
    reserve(repo, "20", request_id="owner")
    with pytest.raises(RepositoryError, match="reserved by request"):
        repo.complete_certificate(ISSUER, "20", b"DER", "intruder", "sign_x509", "d", {})
    assert repo.get_certificate(ISSUER, "20")["status"] == "reserved"


def test_complete_is_atomic_when_the_event_fails(repo: Repository,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reserve(repo, "1f")
    fail_on_event(monkeypatch)
    with pytest.raises(RuntimeError):
        repo.complete_certificate(ISSUER, "1f", b"DER", "req-1f", "sign_x509", "d", {"a": 1})
    row = repo.get_certificate(ISSUER, "1f")
    assert row["status"] == "reserved" and row["der"] is None
    assert repo.lookup_request("req-1f") is None
    assert repo.last_event_seq() == 0


def test_complete_with_conflicting_request_id_changes_nothing(repo: Repository) -> None:
    repo.record_request("req-1f", "sign_x509", "first-digest", {"a": 1})
    reserve(repo, "1f")
    with pytest.raises(RequestConflict):
        repo.complete_certificate(ISSUER, "1f", b"DER", "req-1f", "sign_x509", "other", {})
    assert repo.get_certificate(ISSUER, "1f")["status"] == "reserved"
    assert repo.last_event_seq() == 0


def test_discard_reservation(repo: Repository) -> None:
    reserve(repo, "1f")
    repo.discard_reservation(ISSUER, "1F")
    assert repo.get_certificate(ISSUER, "1f") is None
    with pytest.raises(UnknownCertificate):
        repo.discard_reservation(ISSUER, "1f")
    issue(repo, "20")
    with pytest.raises(RepositoryError, match="already issued"):
        repo.discard_reservation(ISSUER, "20")
    assert repo.get_certificate(ISSUER, "20") is not None


def test_get_unknown_certificate_is_none(repo: Repository) -> None:
    assert repo.get_certificate(ISSUER, "abc") is None


def test_naive_datetimes_are_rejected(repo: Repository) -> None:
    with pytest.raises(ValueError, match="naive"):
        repo.reserve_serial(ISSUER, "1", "r", "server", "CN=x", datetime(2025, 1, 1),
                            datetime(2026, 1, 1))


# -- revocation ---------------------------------------------------------------------------

def test_revoke_records_revocation_and_event(repo: Repository) -> None:
    issue(repo, "1f")
    answer = repo.revoke(ISSUER, "1F", 1, NOW, "rev-1")
    assert answer == {"issuer": ISSUER, "serial": "1f", "reason": 1, "revoked_at": NOW,
                      "already_revoked": False}
    row = repo.get_certificate(ISSUER, "1f")
    assert row["revoked_at"] == NOW and row["revocation_reason"] == 1
    event = repo.events_after(1, 10)[0]
    assert event["type"] == "x509_revoked"
    assert event["body"] == {"issuer": ISSUER, "serial": "1f", "reason": 1,
                             "revoked_at": "2025-03-01T12:00:00Z", "request_id": "rev-1",
                             "origin_node": NODE}


def test_first_revocation_wins(repo: Repository) -> None:
    issue(repo, "1f")
    repo.revoke(ISSUER, "1f", None, NOW, None)
    seq = repo.last_event_seq()
    again = repo.revoke(ISSUER, "1f", 4, NOW + timedelta(days=2), "later")
    assert again == {"issuer": ISSUER, "serial": "1f", "reason": None, "revoked_at": NOW,
                     "already_revoked": True}
    assert repo.last_event_seq() == seq
    assert repo.health()["counts"]["revocations"] == 1


def test_revoking_unknown_or_reserved_serial_raises(repo: Repository) -> None:
    with pytest.raises(UnknownCertificate) as unknown:
        repo.revoke(ISSUER, "99", 0, NOW, None)
    assert unknown.value.code == "unknown_serial"
    reserve(repo, "1f")
    with pytest.raises(UnknownCertificate):
        repo.revoke(ISSUER, "1f", 0, NOW, None)


def test_revoke_rejects_unassigned_reason(repo: Repository) -> None:
    issue(repo, "1f")
    with pytest.raises(ValueError, match="CRLReason"):
        repo.revoke(ISSUER, "1f", 7, NOW, None)


def test_revoke_is_atomic_when_the_event_fails(repo: Repository,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    issue(repo, "1f")
    seq = repo.last_event_seq()
    fail_on_event(monkeypatch)
    with pytest.raises(RuntimeError):
        repo.revoke(ISSUER, "1f", 1, NOW, None)
    assert repo.get_certificate(ISSUER, "1f")["revoked_at"] is None
    assert repo.last_event_seq() == seq


def test_revoked_for_crl_keeps_expired_certificates_only_inside_grace(repo: Repository) -> None:
    issue(repo, "100", not_after=NOW + timedelta(days=10))      # valid
    issue(repo, "ff", not_after=NOW - timedelta(days=5))        # expired, inside grace
    issue(repo, "2", not_after=NOW - timedelta(days=40))        # expired, outside grace
    issue(repo, "3", not_after=NOW + timedelta(days=10))        # valid, never revoked
    for serial, reason in (("100", 1), ("ff", None), ("2", 5)):
        repo.revoke(ISSUER, serial, reason, NOW - timedelta(days=1), None)
    entries = repo.revoked_for_crl(ISSUER, NOW, GRACE)
    assert entries == [(0xFF, NOW - timedelta(days=1), None),   # numeric, not text, order
                       (0x100, NOW - timedelta(days=1), 1)]
    assert all(revoked_at.tzinfo is not None for _, revoked_at, _ in entries)
    assert repo.revoked_for_crl("other-issuer", NOW, GRACE) == []


def test_revocation_digest_follows_the_crl_set(repo: Repository) -> None:
    issue(repo, "1", not_after=NOW + timedelta(days=10))
    issue(repo, "2", not_after=NOW + timedelta(days=10))
    empty = repo.revocation_digest(ISSUER, NOW, GRACE)
    repo.revoke(ISSUER, "1", 1, NOW, None)
    one = repo.revocation_digest(ISSUER, NOW, GRACE)
    assert one != empty and one == repo.revocation_digest(ISSUER, NOW, GRACE)
    repo.revoke(ISSUER, "1", 4, NOW, None)  # already revoked: set unchanged
    assert repo.revocation_digest(ISSUER, NOW, GRACE) == one
    repo.revoke(ISSUER, "2", None, NOW, None)
    assert repo.revocation_digest(ISSUER, NOW, GRACE) != one
    # Both expire out of the grace window: back to the empty set.
    assert repo.revocation_digest(ISSUER, NOW + timedelta(days=60), GRACE) == empty


# -- CRLs ---------------------------------------------------------------------------------

def store_crls(repo: Repository, numbers: range, keep: int = 10) -> None:
    for number in numbers:
        repo.store_crl(ISSUER, number, b"CRL-%d" % number, NOW, NOW + timedelta(days=7),
                       f"digest-{number}", keep=keep)


def test_store_and_read_crls(repo: Repository) -> None:
    assert repo.latest_crl(ISSUER) is None
    store_crls(repo, range(1, 4))
    latest = repo.latest_crl(ISSUER)
    assert latest["number"] == 3 and latest["der"] == b"CRL-3"
    assert latest["this_update"] == NOW and latest["next_update"] == NOW + timedelta(days=7)
    assert latest["revocation_digest"] == "digest-3"
    assert repo.get_crl(ISSUER, 2)["der"] == b"CRL-2"
    assert repo.get_crl(ISSUER, 9) is None
    assert [crl["number"] for crl in repo.recent_crls(ISSUER, 2)] == [3, 2]
    event = repo.events_after(0, 10)[-1]
    assert event["type"] == "crl_issued"
    assert event["body"] == {"issuer": ISSUER, "number": 3,
                             "this_update": "2025-03-01T12:00:00Z",
                             "next_update": "2025-03-08T12:00:00Z",
                             "revocation_digest": "digest-3"}  # no DER: it is large


def test_crl_retention_keeps_the_newest(repo: Repository) -> None:
    store_crls(repo, range(1, 6), keep=3)
    repo.store_crl("other-issuer", 1, b"CRL", NOW, NOW, "d", keep=3)
    assert [crl["number"] for crl in repo.recent_crls(ISSUER, 10)] == [5, 4, 3]
    assert repo.get_crl(ISSUER, 1) is None
    assert repo.latest_crl("other-issuer")["number"] == 1
    with pytest.raises(ValueError):
        store_crls(repo, range(6, 7), keep=0)


def test_crl_numbers_must_increase(repo: Repository) -> None:
    store_crls(repo, range(5, 6))
    for stale in (5, 4):
        with pytest.raises(RepositoryError, match="not above 5"):
            store_crls(repo, range(stale, stale + 1))
    assert len(repo.recent_crls(ISSUER, 10)) == 1
    nanoseconds_number = 1_740_830_400_000_000_000  # core.crl.build numbers CRLs by the nanosecond
    store_crls(repo, range(nanoseconds_number, nanoseconds_number + 1))
    assert repo.latest_crl(ISSUER)["number"] == nanoseconds_number


# -- OpenPGP ------------------------------------------------------------------------------

def sign_openpgp(repo: Repository, request_id: str = "pgp-1", digest: str = "d1") -> None:
    repo.store_openpgp_signature(request_id, "ABCD" * 10, b"signed-key", ["A <a@x>", "B <b@x>"],
                                 NOW + timedelta(days=365), "sign_openpgp", digest, {"ok": True})


def test_store_openpgp_signature_with_request_and_event(repo: Repository) -> None:
    sign_openpgp(repo)
    stored = repo.get_openpgp_signature("pgp-1")
    assert stored["uids"] == ["A <a@x>", "B <b@x>"] and stored["signed_key"] == b"signed-key"
    assert stored["expires_at"] == NOW + timedelta(days=365)
    assert repo.lookup_request("pgp-1")["result"] == {"ok": True}
    [event] = repo.events_after(0, 10)
    assert event["type"] == "openpgp_signed"
    assert event["body"]["uids"] == ["A <a@x>", "B <b@x>"]
    assert event["body"]["expires_at"] == "2026-03-01T12:00:00Z"


def test_openpgp_signature_without_expiry(repo: Repository) -> None:
    repo.store_openpgp_signature("pgp-2", "FP", b"k", [], None, "sign_openpgp", "d", {})
    assert repo.get_openpgp_signature("pgp-2")["expires_at"] is None


def test_openpgp_request_is_recorded_once(repo: Repository) -> None:
    sign_openpgp(repo)
    with pytest.raises(RequestConflict):
        sign_openpgp(repo, digest="d2")
    with pytest.raises(RepositoryError, match="already has a recorded result"):
        sign_openpgp(repo)
    assert repo.health()["counts"]["openpgp_signatures"] == 1
    assert repo.last_event_seq() == 1


def test_openpgp_is_atomic_when_the_event_fails(repo: Repository,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_event(monkeypatch)
    with pytest.raises(RuntimeError):
        sign_openpgp(repo)
    assert repo.get_openpgp_signature("pgp-1") is None
    assert repo.lookup_request("pgp-1") is None


# -- event log ---------------------------------------------------------------------------

def test_events_page_in_order(repo: Repository) -> None:
    assert repo.last_event_seq() == 0 and repo.events_after(0, 10) == []
    for serial in ("1", "2", "3"):
        issue(repo, serial)
    first_page = repo.events_after(0, 2)
    rest = repo.events_after(first_page[-1]["seq"], 2)
    serials = [event["body"]["serial"] for event in first_page + rest]
    assert serials == ["1", "2", "3"]
    assert repo.last_event_seq() == rest[-1]["seq"]
    event_ids = {event["event_id"] for event in first_page + rest}
    assert len(event_ids) == 3
    assert all(event["created_at"].tzinfo is not None for event in first_page)


def test_events_are_append_only(repo: Repository, db_path: str) -> None:
    issue(repo, "1")
    for statement in ("UPDATE events SET type = 'forged'", "DELETE FROM events"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw_execute(db_path, statement)
    assert event_types(repo) == ["x509_issued"]


# -- health, consistency, bulk -------------------------------------------------------------

def test_health_counts_and_quick_check(repo: Repository, db_path: str) -> None:
    issue(repo, "1")
    issue(repo, "2")
    reserve(repo, "3")
    repo.revoke(ISSUER, "1", 1, NOW, None)
    store_crls(repo, range(1, 2))
    sign_openpgp(repo)
    health = repo.health()
    assert health["quick_check"] == "ok"
    assert health["schema_version"] == repository_schema.SCHEMA_VERSION
    assert health["path"] == db_path
    assert health["counts"] == {"certificates": 3, "issued": 2, "reserved": 1, "revocations": 1,
                                "crls": 1, "openpgp_signatures": 1, "requests": 3, "events": 5}
    assert health["last_event_seq"] == repo.last_event_seq() == 5
    assert repo.health(run_quick_check=False)["quick_check"] == "skipped"


def test_consistency_check_passes_on_a_consistent_repository(repo: Repository) -> None:
    issue(repo, "1")
    reserve(repo, "2")
    repo.revoke(ISSUER, "1", 1, NOW, None)
    sign_openpgp(repo)
    assert repo.consistency_check() == []


@pytest.mark.parametrize("plant, expected", [
    ("UPDATE certificates SET der = NULL WHERE serial = '1'", "issued certificate without DER"),
    ("UPDATE certificates SET der = x'00' WHERE serial = '2'", "reserved certificate holding"),
    ("INSERT INTO revocations VALUES ('class3', '2', 1, '2025-01-01T00:00:00Z', NULL, 'n',"
     " '2025-01-01T00:00:00Z')", "revocation of a certificate that is missing or not issued"),
    ("INSERT INTO revocations VALUES ('class3', '77', 1, '2025-01-01T00:00:00Z', NULL, 'n',"
     " '2025-01-01T00:00:00Z')", "revocation of a certificate that is missing or not issued"),
    (f"UPDATE requests SET result = x'{pack({'issuer': ISSUER, 'serial': '99'}).hex()}'",
     "request 'req-1' names certificate class3/99, which is not issued"),
])
def test_consistency_check_finds_planted_problems(repo: Repository, db_path: str,
                                                  plant: str, expected: str) -> None:
    issue(repo, "1")
    reserve(repo, "2")
    raw_execute(db_path, plant)  # the raw connection leaves foreign keys off
    problems = repo.consistency_check()
    assert len(problems) == 1 and expected in problems[0], problems


def test_consistency_check_caps_each_kind_of_problem(repo: Repository, db_path: str) -> None:
    repo.bulk_insert_certificates(
        {"issuer": ISSUER, "serial": format(n, "x"), "request_id": f"r{n}", "profile": "p",
         "subject": "CN=x", "not_before": NOW, "not_after": NOW, "der": None} for n in range(50))
    problems = repo.consistency_check()
    assert len(problems) == 21 and problems[-1].startswith("... more of the same kind")


def test_bulk_insert_feeds_the_crl_query(repo: Repository) -> None:
    def not_after(n: int) -> datetime:  # every third certificate expired beyond the grace
        return NOW - timedelta(days=40) if n % 3 == 0 else NOW + timedelta(days=50)
    inserted = repo.bulk_insert_certificates(
        {"issuer": ISSUER, "serial": format(n, "X"), "request_id": f"r{n}", "profile": "p",
         "subject": f"CN={n}", "not_before": NOW, "not_after": not_after(n), "der": b"DER"}
        for n in range(1, 1001))
    assert inserted == 1000
    revoked = repo.bulk_insert_revocations(
        {"issuer": ISSUER, "serial": format(n, "x"), "reason": 1, "revoked_at": NOW}
        for n in range(1, 1001, 2))
    assert revoked == 500
    entries = repo.revoked_for_crl(ISSUER, NOW, GRACE)
    expected = [n for n in range(1, 1001, 2) if n % 3 != 0]
    assert [serial for serial, _, _ in entries] == expected
    counts = repo.health()["counts"]
    assert counts["issued"] == 1000 and counts["revocations"] == 500
