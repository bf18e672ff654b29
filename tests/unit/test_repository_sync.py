"""Replication between two repositories (core/repository/peer_apply.py) against real SQLite files:
events published by one are applied by the other, and both must converge."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from core.repository import schema as repository_schema
from core.wire.protocol import pack
from core.repository.store import Repository, RepositoryError, UnknownCertificate

ISSUER = "class3"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
EVENT_KEYS = {"seq", "event_id", "origin_node", "type", "body", "created_at", "signature"}


@pytest.fixture
def open_repo(tmp_path: Path) -> Iterator[Callable[[str], Repository]]:
    """open_repo("a") -> the repository of node "a" (one file per node, closed at the end)."""
    opened: list[Repository] = []

    def open_node(node: str) -> Repository:
        repository = Repository(str(tmp_path / f"{node}.sqlite"), node)
        opened.append(repository)
        return repository
    yield open_node
    for repository in opened:
        repository.close()


@pytest.fixture
def a(open_repo: Callable[[str], Repository]) -> Repository:
    return open_repo("a")


@pytest.fixture
def b(open_repo: Callable[[str], Repository]) -> Repository:
    return open_repo("b")


def issue(repo: Repository, serial: str, der: bytes | None = None) -> None:
    request_id = f"req-{serial}"
    repo.reserve_serial(ISSUER, serial, request_id, "server", f"CN={serial}.example",
                        NOW - timedelta(days=1), NOW + timedelta(days=365))
    repo.complete_certificate(ISSUER, serial, der or b"DER-" + serial.encode(), request_id,
                              "sign_x509", f"digest-{serial}",
                              {"issuer": ISSUER, "serial": serial, "pem": "PEM"})


def sign_openpgp(repo: Repository, request_id: str = "pgp-1") -> None:
    repo.store_openpgp_signature(request_id, "ABCD" * 10, b"signed-key", ["A <a@x>"],
                                 NOW + timedelta(days=365), "sign_openpgp", "d-pgp",
                                 {"ok": True})


def sync(source: Repository, target: Repository) -> int:
    """Apply the source's whole log to the target, as the sync component does; the count
    of events that were new to the target."""
    return sum(target.apply_event(event) for event in source.events_after(0, 100_000))


def event_ids(repo: Repository) -> list[str]:
    return [event["event_id"] for event in repo.events_after(0, 100_000)]


def revocation(repo: Repository, serial: str) -> tuple:
    row = repo.get_certificate(ISSUER, serial)
    return row["revoked_at"], row["revocation_reason"]


def raw_execute(path: str, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(path)) as raw:
        return raw.execute(sql).fetchall()


def self_signed_der(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(0x77)
                   .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(Encoding.DER)


# -- convergence -------------------------------------------------------------------------

def test_issue_on_a_revoke_on_b_converges(a: Repository, b: Repository) -> None:
    issue(a, "1f")
    issue(a, "20")
    sign_openpgp(a)
    assert sync(a, b) == 3
    b.revoke(ISSUER, "1f", 1, NOW, "rev-1")
    assert sync(b, a) == 1  # B's log holds A's three events too: applied once already
    assert a.content_digest() == b.content_digest()
    assert revocation(a, "1f") == (NOW, 1)
    certificate = b.get_certificate(ISSUER, "1f")
    assert certificate["status"] == "issued" and certificate["der"] == b"DER-1f"
    assert certificate["subject"] == "CN=1f.example" and certificate["origin_node"] == "a"
    assert certificate["not_after"] == NOW + timedelta(days=365)
    # A client retrying its request on the other signer gets the same stored answer.
    assert b.lookup_request("req-1f") == a.lookup_request("req-1f")
    assert b.lookup_request("pgp-1") == a.lookup_request("pgp-1")
    signature, original = b.get_openpgp_signature("pgp-1"), a.get_openpgp_signature("pgp-1")
    assert signature == original  # created_at included: it is the origin's event time
    assert set(event_ids(a)) == set(event_ids(b))
    assert a.consistency_check() == [] and b.consistency_check() == []


def test_applied_events_keep_their_identity(a: Repository, b: Repository) -> None:
    issue(a, "1f")
    [published] = a.events_after(0, 10)
    assert set(published) == EVENT_KEYS
    b.apply_event(published)
    [applied] = b.events_after(0, 10)
    assert {key: applied[key] for key in EVENT_KEYS - {"seq"}} == \
           {key: published[key] for key in EVENT_KEYS - {"seq"}}


def test_applying_every_event_twice_changes_nothing(a: Repository, b: Repository) -> None:
    issue(a, "1")
    b.apply_event(a.events_after(0, 10)[0])
    b.revoke(ISSUER, "1", 4, NOW, None)
    issue(b, "2")
    a.store_crl(ISSUER, 7, b"CRL", NOW, NOW + timedelta(days=1), "digest")
    sync(a, b)
    sync(b, a)
    digest, counts = a.content_digest(), (a.health()["counts"], b.health()["counts"])
    assert b.content_digest() == digest
    assert sync(a, b) == sync(b, a) == 0
    for event in a.events_after(0, 100):
        assert a.apply_event(event) is False and b.apply_event(event) is False
    assert a.content_digest() == b.content_digest() == digest
    assert (a.health()["counts"], b.health()["counts"]) == counts


def test_a_fresh_node_replaying_one_log_reaches_the_same_content(
        a: Repository, b: Repository, open_repo: Callable[[str], Repository]) -> None:
    issue(a, "1")
    issue(a, "2")
    sync(a, b)
    issue(b, "3")
    b.revoke(ISSUER, "1", 1, NOW, None)
    a.revoke(ISSUER, "1", 5, NOW + timedelta(hours=1), None)  # loses to B's on both
    sign_openpgp(b, "pgp-b")
    sync(b, a)  # A's log now also holds B's events
    c = open_repo("c")
    assert sync(a, c) == len(event_ids(a))
    assert c.content_digest() == a.content_digest() == b.content_digest()
    assert revocation(c, "1") == (NOW, 1)
    assert event_ids(c) == event_ids(a)  # same events, in A's order


# -- conflicting revocations ---------------------------------------------------------------

@pytest.mark.parametrize("a_first", [True, False], ids=["a-then-b", "b-then-a"])
def test_concurrent_revocations_converge_on_the_earliest(a: Repository, b: Repository,
                                                         a_first: bool) -> None:
    issue(a, "1f")
    sync(a, b)
    a.revoke(ISSUER, "1f", 1, NOW + timedelta(hours=1), "rev-a")
    b.revoke(ISSUER, "1f", 4, NOW, "rev-b")  # earlier: wins everywhere
    if a_first:
        sync(a, b)
        sync(b, a)
    else:
        sync(b, a)
        sync(a, b)
    assert revocation(a, "1f") == revocation(b, "1f") == (NOW, 4)
    assert a.content_digest() == b.content_digest()
    # A's own revoke keeps answering with the stored (winning) revocation.
    again = a.revoke(ISSUER, "1f", 9, NOW + timedelta(days=1), "rev-again")
    assert again["already_revoked"] is True and (again["revoked_at"], again["reason"]) == (NOW, 4)


@pytest.mark.parametrize("a_first", [True, False], ids=["a-then-b", "b-then-a"])
def test_equal_revocation_times_go_to_the_smaller_node_id(a: Repository, b: Repository,
                                                          a_first: bool) -> None:
    issue(b, "1f")
    sync(b, a)
    a.revoke(ISSUER, "1f", 1, NOW, "rev-a")
    b.revoke(ISSUER, "1f", 4, NOW, "rev-b")
    for source, target in ((a, b), (b, a)) if a_first else ((b, a), (a, b)):
        sync(source, target)
    assert revocation(a, "1f") == revocation(b, "1f") == (NOW, 1)  # "a" < "b"
    assert a.content_digest() == b.content_digest()


def test_a_losing_revocation_is_replaced_entirely(a: Repository, b: Repository,
                                                  tmp_path: Path) -> None:
    issue(a, "1f")
    sync(a, b)
    a.revoke(ISSUER, "1f", None, NOW, "rev-a")
    b.revoke(ISSUER, "1f", 4, NOW + timedelta(minutes=1), "rev-b")
    sync(a, b)
    assert raw_execute(str(tmp_path / "b.sqlite"), "SELECT reason, revoked_at, request_id,"
                       " origin_node FROM revocations") == [
        (None, "2025-03-01T12:00:00Z", "rev-a", "a")]


# -- CRL numbers ---------------------------------------------------------------------------

def test_crl_issued_raises_the_floor_and_previous_number(a: Repository, b: Repository) -> None:
    assert b.crl_number_floor(ISSUER) is None and b.previous_crl_number(ISSUER) is None
    a.store_crl(ISSUER, 100, b"CRL-100", NOW, NOW + timedelta(days=1), "d")
    a.store_crl(ISSUER, 110, b"CRL-110", NOW, NOW + timedelta(days=1), "d")
    sync(a, b)
    assert b.crl_number_floor(ISSUER) == b.previous_crl_number(ISSUER) == 110
    assert b.latest_crl(ISSUER) is None  # the number travels, the DER does not
    with pytest.raises(RepositoryError, match="not above 110"):  # never backwards
        b.store_crl(ISSUER, 105, b"CRL", NOW, NOW + timedelta(days=1), "d")
    b.store_crl(ISSUER, 111, b"CRL-111", NOW, NOW + timedelta(days=1), "d")
    assert b.previous_crl_number(ISSUER) == 111 and b.crl_number_floor(ISSUER) == 110
    sync(b, a)
    assert a.crl_number_floor(ISSUER) == a.previous_crl_number(ISSUER) == 111
    assert a.previous_crl_number("other-issuer") is None


def test_an_older_crl_event_does_not_lower_the_floor(a: Repository, b: Repository) -> None:
    a.store_crl(ISSUER, 50, b"CRL", NOW, NOW, "d")
    b.apply_event({"event_id": "late", "origin_node": "x", "type": "crl_issued",
                   "body": {"issuer": ISSUER, "number": 80, "this_update": "2025-03-01T12:00:00Z",
                            "next_update": "2025-03-02T12:00:00Z"},
                   "created_at": NOW})
    sync(a, b)
    assert b.crl_number_floor(ISSUER) == 80


# -- refusals leave nothing behind ------------------------------------------------------------

def test_revocation_before_its_issuance_is_refused_until_the_issuance_arrives(
        a: Repository, b: Repository) -> None:
    issue(a, "1f")
    a.revoke(ISSUER, "1f", 1, NOW, None)
    issued, revoked = a.events_after(0, 10)
    with pytest.raises(UnknownCertificate) as unknown:
        b.apply_event(revoked)
    assert unknown.value.code == "unknown_serial"
    assert b.last_event_seq() == 0 and b.health()["counts"]["revocations"] == 0
    assert b.apply_event(issued) and b.apply_event(revoked)  # the caller's retry
    assert revocation(b, "1f") == (NOW, 1)


def test_unknown_event_type_is_refused(b: Repository) -> None:
    with pytest.raises(RepositoryError, match="unknown event type 'x509_renamed'"):
        b.apply_event({"event_id": "e1", "origin_node": "a", "type": "x509_renamed",
                       "body": {}, "created_at": NOW})
    assert b.last_event_seq() == 0


@pytest.mark.parametrize("change, expected", [
    (lambda body: body.pop("der"), "missing 'der'"),
    (lambda body: body.update(serial=31), "serial is a int"),
    (lambda body: body.update(not_after="2026-03-01 12:00:00"), "naive"),
    (lambda body: body.update(request={"command": "sign_x509"}), "missing 'request_digest'"),
])
def test_malformed_events_are_refused(a: Repository, b: Repository, change, expected) -> None:
    issue(a, "1f")
    [event] = a.events_after(0, 10)
    change(event["body"])
    with pytest.raises(RepositoryError, match=expected):
        b.apply_event(event)
    assert b.health()["counts"] == {name: 0 for name in b.health()["counts"]}


def test_malformed_envelope_is_refused(b: Repository) -> None:
    with pytest.raises(RepositoryError, match="missing 'event_id'"):
        b.apply_event({"origin_node": "a", "type": "crl_issued", "body": {}})
    with pytest.raises(RepositoryError, match="not a map"):
        b.apply_event({"event_id": "e", "origin_node": "a", "type": "crl_issued", "body": [1]})


def test_serial_collision_and_local_reservation_are_refused(a: Repository,
                                                            b: Repository) -> None:
    issue(a, "1f")
    issue(a, "20")
    issue(b, "1f", der=b"OTHER-DER")  # must never happen: serials are random per node
    b.reserve_serial(ISSUER, "20", "local", "server", "CN=x", NOW, NOW + timedelta(days=1))
    first, second = a.events_after(0, 10)
    with pytest.raises(RepositoryError, match="serial collision"):
        b.apply_event(first)
    with pytest.raises(RepositoryError, match="reserved here"):
        b.apply_event(second)
    assert b.get_certificate(ISSUER, "1f")["der"] == b"OTHER-DER"
    assert b.get_certificate(ISSUER, "20")["status"] == "reserved"
    assert len(event_ids(b)) == 1  # only B's own issuance


def test_identical_certificate_and_known_request_are_kept(a: Repository, b: Repository) -> None:
    issue(a, "1f")
    issue(b, "1f")  # same DER, same request: e.g. restored from the same backup
    b.record_request("req-1f", "sign_x509", "digest-1f", {"answer": "b's own"})
    [event] = a.events_after(0, 10)
    digest = b.content_digest()
    assert b.apply_event(event) is True  # recorded, though nothing changes
    assert b.content_digest() == digest == a.content_digest()
    assert b.lookup_request("req-1f")["result"] == {"issuer": ISSUER, "serial": "1f",
                                                    "pem": "PEM"}
    assert len(event_ids(b)) == 2


# -- event bodies ---------------------------------------------------------------------------

def test_event_bodies_carry_what_the_peer_needs(a: Repository) -> None:
    issue(a, "1f")
    a.revoke(ISSUER, "1f", 1, NOW, "rev-1")
    a.store_crl(ISSUER, 5, b"CRL", NOW, NOW + timedelta(days=7), "digest")
    sign_openpgp(a)
    bodies = {event["type"]: event["body"] for event in a.events_after(0, 10)}
    assert bodies["x509_issued"] == {
        "issuer": ISSUER, "serial": "1f", "der": b"DER-1f", "request_id": "req-1f",
        "profile": "server", "subject": "CN=1f.example", "not_before": "2025-02-28T12:00:00Z",
        "not_after": "2026-03-01T12:00:00Z", "origin_node": "a",
        "request": {"command": "sign_x509", "request_digest": "digest-1f",
                    "result": {"issuer": ISSUER, "serial": "1f", "pem": "PEM"}}}
    assert bodies["x509_revoked"] == {"issuer": ISSUER, "serial": "1f", "reason": 1,
                                      "revoked_at": "2025-03-01T12:00:00Z",
                                      "request_id": "rev-1", "origin_node": "a"}
    assert bodies["crl_issued"] == {"issuer": ISSUER, "number": 5,
                                    "this_update": "2025-03-01T12:00:00Z",
                                    "next_update": "2025-03-08T12:00:00Z",
                                    "revocation_digest": "digest"}
    assert bodies["openpgp_signed"] == {
        "request_id": "pgp-1", "fingerprint": "ABCD" * 10, "signed_key": b"signed-key",
        "uids": ["A <a@x>"], "expires_at": "2026-03-01T12:00:00Z", "origin_node": "a",
        "request": {"command": "sign_openpgp", "request_digest": "d-pgp",
                    "result": {"ok": True}}}


def test_events_from_before_sync_still_apply(b: Repository) -> None:
    """x509_issued and openpgp_signed bodies written by the previous code lack subject and
    the request record: the subject comes from the DER, the request stays unknown."""
    der = self_signed_der("old.example")
    old_issued = {"issuer": ISSUER, "serial": "77", "der": der, "request_id": "r-old",
                  "profile": "server", "not_before": "2025-03-01T12:00:00Z",
                  "not_after": "2025-03-02T12:00:00Z", "origin_node": "a"}
    old_signed = {"request_id": "pgp-old", "fingerprint": "FP", "signed_key": b"k", "uids": [],
                  "expires_at": None, "origin_node": "a"}
    for event_id, event_type, body in (("e1", "x509_issued", old_issued),
                                       ("e2", "openpgp_signed", old_signed)):
        assert b.apply_event({"event_id": event_id, "origin_node": "a", "type": event_type,
                              "body": body, "created_at": "2025-03-01T12:00:00Z"})
    assert b.get_certificate(ISSUER, "77")["subject"] == "O=Example,CN=old.example"
    assert b.get_openpgp_signature("pgp-old")["expires_at"] is None
    assert b.lookup_request("r-old") is None and b.lookup_request("pgp-old") is None


@pytest.mark.parametrize("created_at", ["2025-03-01T12:00:00Z", str(NOW)])
def test_wire_form_of_an_event_applies(a: Repository, b: Repository, created_at: str) -> None:
    """Over the wire created_at may be text (database form, or str() of the datetime as
    msgpack's default=str writes it) and the body may still be packed."""
    issue(a, "1f")
    [event] = a.events_after(0, 10)
    wire = event | {"created_at": created_at, "body": pack(event["body"])}
    assert b.apply_event(wire)
    assert b.events_after(0, 10)[0]["created_at"] == NOW
    assert b.content_digest() == a.content_digest()


# -- digest and sync state ------------------------------------------------------------------

def test_content_digest_ignores_node_local_state(a: Repository, b: Repository) -> None:
    empty = a.content_digest()
    assert b.content_digest() == empty
    issue(a, "1f")
    sync(a, b)
    digest = a.content_digest()
    assert digest != empty and b.content_digest() == digest
    b.reserve_serial(ISSUER, "99", "in-flight", "server", "CN=x", NOW, NOW)  # local only
    b.record_request("other", "sign_x509", "d", {})
    b.store_crl(ISSUER, 1, b"CRL", NOW, NOW, "d")
    b.set_sync_state("peer", "1")
    assert b.content_digest() == digest
    b.revoke(ISSUER, "1f", None, NOW, None)
    assert b.content_digest() != digest


def test_sync_state(a: Repository, tmp_path: Path) -> None:
    assert a.get_sync_state("peer_seq") is None
    assert a.get_sync_state("peer_seq", "0") == "0"
    a.set_sync_state("peer_seq", "17")
    a.set_sync_state("peer_seq", "18")
    a.set_sync_state("other", "x")
    assert a.get_sync_state("peer_seq") == "18"
    with pytest.raises(TypeError):
        a.set_sync_state("peer_seq", 19)  # type: ignore[arg-type]
    reopened = Repository(str(tmp_path / "a.sqlite"), "a")
    try:
        assert reopened.get_sync_state("peer_seq") == "18"
    finally:
        reopened.close()


# -- migration ---------------------------------------------------------------------------

def create_previous_schema(path: str) -> None:
    """A database as the previous release left it: its migrations only, with an issued
    certificate, a CRL and the x509_issued event that release wrote (no subject, no
    request record in the body)."""
    with closing(sqlite3.connect(path)) as raw:
        for statement in repository_schema.MIGRATIONS[0]:
            raw.execute(statement)
        raw.execute("PRAGMA user_version = 1")
        raw.execute("INSERT INTO certificates VALUES ('class3', '1f', 'req-1f', 'server',"
                    " 'issued', 'CN=1f.example', '2025-02-28T12:00:00Z',"
                    " '2026-03-01T12:00:00Z', '2025-03-01T12:00:00Z', 'a', x'4445')")
        raw.execute("INSERT INTO crls VALUES ('class3', 3, '2025-03-01T12:00:00Z',"
                    " '2025-03-08T12:00:00Z', 'd', '2025-03-01T12:00:00Z', x'00')")
        body = {"issuer": ISSUER, "serial": "1f", "der": b"DE", "request_id": "req-1f",
                "profile": "server", "not_before": "2025-02-28T12:00:00Z",
                "not_after": "2026-03-01T12:00:00Z", "origin_node": "a"}
        raw.execute("INSERT INTO events (event_id, origin_node, type, body, created_at)"
                    " VALUES ('old-1', 'a', 'x509_issued', ?, '2025-03-01T12:00:00Z')",
                    (pack(body),))
        raw.commit()


def test_a_database_of_the_previous_schema_is_upgraded(
        tmp_path: Path, open_repo: Callable[[str], Repository]) -> None:
    path = str(tmp_path / "a.sqlite")
    create_previous_schema(path)
    assert raw_execute(path, "SELECT name FROM sqlite_master WHERE name = 'sync_state'") == []
    a = open_repo("a")
    assert a.schema_version() == repository_schema.SCHEMA_VERSION
    assert a.get_certificate(ISSUER, "1f")["status"] == "issued"
    assert a.previous_crl_number(ISSUER) == 3 and a.crl_number_floor(ISSUER) is None
    a.set_sync_state("peer_seq", "0")
    a.revoke(ISSUER, "1f", 1, NOW, None)
    b = open_repo("b")
    assert sync(a, b) == 2  # the old-format issuance applies too
    assert b.content_digest() == a.content_digest()
    assert b.get_certificate(ISSUER, "1f")["subject"] == ""  # b"DE" is no certificate
    a.store_crl(ISSUER, 4, b"CRL", NOW, NOW, "d")
    assert a.previous_crl_number(ISSUER) == 4
