"""Migration 7 (issue 13.4: a certificate's DER stored once) on a repository MADE BY THE CODE OF
SCHEMA VERSION 6: tests/vectors/repository-v6.sqlite (see make_repository_v6.py beside it).
After the migration every stored result replays byte for byte, every event reads back as
it was made (so its signature still verifies), the audit chain and the content digest are
the ones the old code computed, no event or request row holds a DER any more, and the
events still publish and apply on a peer running this code."""
from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.repository import schema
from core.repository.store import Repository
from core.sync.event_signing import parse_public_key, sign_event
from core.sync.peer_validation import PeerValidator
from core.wire.protocol import pack, unpack

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
FACTS = json.loads((VECTORS / "repository-v6.json").read_text())
ISSUER = FACTS["issuer"]


def raw_rows(path: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def old_copy(tmp_path: Path) -> Path:
    """A copy of the version-6 file (opening it migrates it: never the vector itself)."""
    path = tmp_path / "a.sqlite"
    shutil.copyfile(VECTORS / "repository-v6.sqlite", path)
    assert raw_rows(path, "PRAGMA user_version") == [(6,)]
    return path


@pytest.fixture
def migrated(old_copy: Path) -> Iterator[Repository]:
    repository = Repository(str(old_copy), "a")
    yield repository
    repository.close()


def ders(path: Path) -> list[bytes]:
    return [der for (der,) in raw_rows(path, "SELECT der FROM certificates WHERE der IS NOT NULL")]


def test_the_vector_is_what_the_old_code_stored(old_copy: Path) -> None:
    """The premise: version 6 kept each issued certificate's DER in its request result and
    twice in its event (else this file would test nothing)."""
    certificates = ders(old_copy)
    assert len(certificates) == 5  # 3 issued here, 1 from the peer, 1 imported with its DER
    requests = [blob for (blob,) in raw_rows(old_copy, "SELECT result FROM requests WHERE command = 'sign_x509'")]
    bodies = [blob for (blob,) in raw_rows(old_copy, "SELECT body FROM events")]
    for der in certificates:
        copies = sum(blob.count(der) for blob in requests + bodies)
        assert copies in (1, 3), copies  # imported: in its event; issued: result + event twice


def test_every_stored_result_replays_byte_for_byte(old_copy: Path) -> None:
    before = {request_id: (command, digest, blob) for request_id, command, digest, blob in
              raw_rows(old_copy, "SELECT request_id, command, request_digest, result FROM requests")}
    assert len(before) == 5  # 4 sign_x509 (one adopted from the peer), 1 sign_openpgp
    repository = Repository(str(old_copy), "a")
    try:
        assert repository.schema_version() == schema.SCHEMA_VERSION == 7
        for request_id, (command, digest, blob) in before.items():
            stored = repository.lookup_request(request_id)
            assert stored == {"command": command, "request_digest": digest, "result": unpack(blob)}
            assert pack(stored["result"]) == blob  # same fields, same order: the same answer
            # The signing path's look-up answers the same, and reserves nothing.
            assert repository.lookup_or_reserve(ISSUER, "ffff", request_id, "server", "CN=x",
                                                datetime.now(timezone.utc),
                                                datetime.now(timezone.utc) + timedelta(days=1)) == stored
            assert repository.record_request(request_id, command, digest, {"other": 1}) == stored["result"]
        assert repository.get_certificate(ISSUER, "ffff") is None
    finally:
        repository.close()


def test_every_event_reads_back_as_it_was_made(old_copy: Path) -> None:
    before = raw_rows(old_copy, "SELECT seq, event_id, origin_node, type, body, created_at, signature"
                                " FROM events ORDER BY seq")
    repository = Repository(str(old_copy), "a")
    try:
        events = repository.events_after(0, 100)
    finally:
        repository.close()
    assert len(events) == len(before) == FACTS["events"]
    for event, (seq, event_id, origin, kind, blob, created_at, signature) in zip(events, before):
        assert set(event) == {"seq", "event_id", "origin_node", "type", "body", "created_at", "signature"}
        assert (event["seq"], event["event_id"], event["origin_node"], event["type"]) == (seq, event_id, origin, kind)
        assert event["body"] == unpack(blob) and pack(event["body"]) == blob
        assert schema.to_db_time(event["created_at"]) == created_at and event["signature"] == signature


def test_no_event_or_request_row_holds_a_der_after_migration(old_copy: Path, migrated: Repository) -> None:
    rows = [blob for (blob,) in raw_rows(old_copy, "SELECT result FROM requests UNION ALL SELECT body FROM events")]
    for der in ders(old_copy):
        assert not any(der in blob for blob in rows)
    refs = raw_rows(old_copy, "SELECT type, certificate_ref FROM events WHERE certificate_ref != 0 ORDER BY seq")
    both = schema.REF_BODY_DER | schema.REF_RESULT_CERTIFICATE
    assert refs == [("x509_issued", both)] * 3 + [("x509_imported", schema.REF_BODY_DER),
                                                  ("x509_issued", both)]
    assert raw_rows(old_copy, "SELECT COUNT(*) FROM requests WHERE certificate_ref = 1") == [(4,)]


def test_audit_chain_digest_and_consistency_are_unchanged(migrated: Repository) -> None:
    report = migrated.verify_audit()
    assert report.ok and report.entries_checked == FACTS["audit_head"]["seq"]
    assert migrated.audit_head() == FACTS["audit_head"]
    assert migrated.content_digest() == FACTS["content_digest"]
    assert migrated.consistency_check() == []


def test_the_events_table_stays_append_only(old_copy: Path, migrated: Repository) -> None:
    with closing(sqlite3.connect(old_copy)) as db:
        for statement in ("UPDATE events SET certificate_ref = 0", "DELETE FROM events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)


def test_migrated_events_publish_and_apply_on_a_peer(tmp_path: Path, migrated: Repository) -> None:
    """As Sync publishes them: a's own events signed now, b's with the signature they came
    with; a peer running this code checks each (PeerValidator) and converges."""
    key_a = Ed25519PrivateKey.generate()
    published = [event if event["origin_node"] != "a" else event | {"signature": sign_event(key_a, event)}
                 for event in migrated.events_after(0, 100)]
    wire = [msgpack.unpackb(msgpack.packb(e, datetime=False, default=str), raw=False) for e in published]
    validator = PeerValidator({"a": key_a.public_key(), "b": parse_public_key(FACTS["event_keys"]["b"])},
                              {ISSUER: x509.load_pem_x509_certificate(FACTS["issuer_certificate"].encode())},
                              bytes.fromhex(FACTS["openpgp_ca_key_body"]))
    peer = Repository(str(tmp_path / "c.sqlite"), "c")
    try:
        outcomes, waiting = peer.apply_peer_events(wire, validator)
        assert waiting is None and outcomes == ["applied"] * FACTS["events"], peer.quarantined_events()
        assert peer.content_digest() == migrated.content_digest() == FACTS["content_digest"]
        for request_id in ("req-1001", "req-3001"):
            assert peer.lookup_request(request_id) == migrated.lookup_request(request_id)
        # Relayed once more (c publishes what it applied): the same bodies, still verifying.
        assert [e["body"] for e in peer.events_after(0, 100)] == [e["body"] for e in published]
    finally:
        peer.close()


def test_a_migrated_repository_issues_in_the_new_layout(old_copy: Path, migrated: Repository) -> None:
    der = ders(old_copy)[0] + b"-not-a-real-certificate"
    now = datetime.now(timezone.utc)
    migrated.reserve_serial(ISSUER, "abc", "req-abc", "server", "CN=x", now, now + timedelta(days=1))
    result = {"certificate": der, "serial": "abc", "issuer": ISSUER}
    migrated.complete_certificate(ISSUER, "abc", der, "req-abc", "sign_x509", "d", result)
    assert migrated.lookup_request("req-abc")["result"] == result
    event = migrated.events_after(FACTS["events"], 1)[0]
    # The previous release's form on the wire (rolling upgrades), neither copy in the rows.
    assert event["body"]["der"] == der and event["body"]["request"]["result"]["certificate"] == der
    assert not any(der in blob for (blob,) in raw_rows(old_copy, "SELECT body FROM events UNION ALL"
                                                                 " SELECT result FROM requests"))
