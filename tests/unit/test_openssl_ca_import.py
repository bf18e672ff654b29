"""Import of an old `openssl ca` history (core/repository/openssl_ca_import.py): the index.txt parser on
stored real lines, then a CA built with real `openssl ca` commands imported into a
repository: counts and refusals, CRL continuity in the repository, a re-run, the events a
peer bootstraps from, forged imported events refused, and the CLI's refusal beside a
running signer."""
from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from core.sync.event_signing import sign_event
from core.repository.openssl_ca_import import (IndexLineError, ImportRefused, import_openssl_ca,
                                    parse_index_line)
from core.sync.peer_validation import PeerValidator
from core.repository.store import Repository
from core.repository.schema import UNKNOWN_NOT_AFTER, UNKNOWN_NOT_BEFORE
from tests.support.helpers import run_tool, signer_config
from tests.support.old_openssl_ca import OldCa

UTC = timezone.utc
NOW = datetime.now(UTC)
GRACE = timedelta(days=14)

# Lines as `openssl ca` 3.0 wrote them (tests/support/old_openssl_ca.py), and the forms it writes
# for a hold, a compromise time and an expiry from 2050 on (GeneralizedTime).
REAL_LINES = {
    "valid": "V\t271202132208Z\t\t0A11\tunknown\t/CN=a.example.org\n",
    "revoked": "R\t271202132208Z\t261202132208Z,keyCompromise\t0A12\tunknown\t/CN=b.example.org\n",
    "revoked_no_reason": "R\t251028132207Z\t261202132208Z\t0A13\tunknown\t/CN=old.example.org\n",
    "expired": "E\t090101000000Z\t\t01\tunknown\t/C=AU/CN=CAcert WoT User/emailAddress=x@example.org\n",
    "hold": "R\t271202132208Z\t261202132208Z,certificateHold,holdInstructionReject\t0B\tunknown\t/CN=h\n",
    "key_time": "R\t271202132208Z\t261202132208Z,keyTime,20261101000000Z\t0C\tunknown\t/CN=k\n",
    "ca_compromise": "R\t271202132208Z\t261202132208Z,CACompromise\t0D\tunknown\t/CN=c\n",
    "generalized": "V\t20510101000000Z\t\t0E\tunknown\t/CN=far\n",
}


def test_index_lines_as_openssl_writes_them():
    valid = parse_index_line(REAL_LINES["valid"])
    assert (valid.status, valid.serial, valid.subject, valid.revoked_at) == ("V", "0A11", "/CN=a.example.org", None)
    assert valid.expiry == datetime(2027, 12, 2, 13, 22, 8, tzinfo=UTC)
    revoked = parse_index_line(REAL_LINES["revoked"])
    assert (revoked.revoked_at, revoked.reason) == (datetime(2026, 12, 2, 13, 22, 8, tzinfo=UTC), 1)
    assert parse_index_line(REAL_LINES["revoked_no_reason"]).reason is None
    assert parse_index_line(REAL_LINES["expired"]).expiry.year == 2009  # YY < 50: 20YY
    assert parse_index_line(REAL_LINES["hold"]).reason == 6
    assert parse_index_line(REAL_LINES["key_time"]).reason == 1
    assert parse_index_line(REAL_LINES["ca_compromise"]).reason == 2
    assert parse_index_line(REAL_LINES["generalized"]).expiry.year == 2051
    assert parse_index_line("V\t991231235959Z\t\t0F\tunknown\t/CN=y\n").expiry.year == 1999


@pytest.mark.parametrize("line, why", [
    ("V\t271202132208Z\t\t0A11\t/CN=five fields\n", "fields"),
    ("X\t271202132208Z\t\t0A11\tunknown\t/CN=a\n", "status"),
    ("V\t2712021322Z\t\t0A11\tunknown\t/CN=a\n", "time"),
    ("V\t271302132208Z\t\t0A11\tunknown\t/CN=a\n", "no date"),
    ("R\t271202132208Z\t\t0A11\tunknown\t/CN=a\n", "without a revocation"),
    ("V\t271202132208Z\t261202132208Z\t0A11\tunknown\t/CN=a\n", "revocation field"),
    ("R\t271202132208Z\t261202132208Z,removeFromCRL\t0A11\tunknown\t/CN=a\n", "reason"),
    ("V\t271202132208Z\t\tzz\tunknown\t/CN=a\n", "hex"),
    ("V\t271202132208Z\t\t00\tunknown\t/CN=a\n", "serial 0"),
])
def test_malformed_index_lines_are_refused(line, why):
    with pytest.raises(IndexLineError, match=why):
        parse_index_line(line)


@pytest.fixture(scope="module")
def old_ca(tmp_path_factory):
    """CAcert's shape: a self-signed root and a class 3 under it, each an openssl ca
    database with valid, revoked (with and without reasons), expired certificates, a lost
    newcerts file, a certificate file of another CA, a revocation only the last CRL knows
    and a serial only the CRL names; the last CRL published (number N)."""
    base = tmp_path_factory.mktemp("old-ca")
    root = OldCa(base / "root", "Old Root", "0A10", "1000")
    class3 = OldCa(base / "class3", "Old Class 3", "0B10", "2000", parent=root)
    foreign = OldCa(base / "foreign", "Someone Else", "0C10", "3000")
    certs = {}
    for ca in (root, class3):
        for cn, not_after in [("live", None), ("key-compromised", None), ("superseded", None),
                              ("no-reason", None), ("lost-file", None),
                              ("expired-in-grace", NOW - timedelta(days=3)),
                              ("expired-past-grace", NOW - timedelta(days=400)),
                              ("forged-file", None), ("crl-only-revocation", None),
                              ("crl-only-serial", None)]:
            certs[ca.name, cn] = ca.issue(f"{cn}.{ca.dir.name}.example.org", not_after=not_after)
        for cn, reason in [("key-compromised", "keyCompromise"), ("superseded", "superseded"),
                           ("no-reason", None), ("lost-file", "cessationOfOperation"),
                           ("expired-in-grace", "affiliationChanged"),
                           ("expired-past-grace", "keyCompromise")]:
            ca.revoke(f"{cn}.{ca.dir.name}.example.org", reason)
        index_before = (ca.dir / "index.txt").read_text()
        for cn in ("crl-only-revocation", "crl-only-serial"):
            ca.revoke(f"{cn}.{ca.dir.name}.example.org", "keyCompromise")
        ca.gencrl(base / f"{ca.dir.name}-previous.crl")
        crl = ca.gencrl(base / f"{ca.dir.name}.crl", der=ca is root)  # root DER, class3 PEM
        # The index as a backup taken before the last two revocations, without the line of
        # crl-only-serial: only the CRL knows them.
        only = f"/CN=crl-only-serial.{ca.dir.name}.example.org"
        (ca.dir / "index.txt").write_text("".join(
            line for line in index_before.splitlines(keepends=True) if not line.endswith(only + "\n")))
        ca.newcerts_file(certs[ca.name, "lost-file"].serial_number).unlink()
        forged = foreign.issue(f"forged.{ca.dir.name}.example.org")
        ca.newcerts_file(certs[ca.name, "forged-file"].serial_number).write_bytes(
            forged.public_bytes(Encoding.PEM))
        ca.crl = crl
        ca.crl_path = base / f"{ca.dir.name}.crl"
    return {"root": root, "class3": class3, "certs": certs}


def import_both(repo: Repository, old_ca) -> dict:
    return {issuer: import_openssl_ca(repo, issuer, old_ca[issuer].certificate, old_ca[issuer].dir,
                                      old_ca[issuer].crl_path, batch=4).as_dict()
            for issuer in ("root", "class3")}


@pytest.fixture(scope="module")
def imported(old_ca, tmp_path_factory):
    repo = Repository(str(tmp_path_factory.mktemp("import") / "repository.sqlite"), "importer")
    summaries = import_both(repo, old_ca)
    yield repo, summaries
    repo.close()


def serial_of(old_ca, issuer: str, cn: str) -> int:
    return old_ca["certs"][old_ca[issuer].name, cn].serial_number


def test_summary_counts_and_refusals(old_ca, imported):
    _, summaries = imported
    root = summaries["root"]
    # root's index: 10 leaf lines + class 3's own certificate, minus crl-only-serial's line.
    assert root["index_lines"] == 10
    assert root["refused"] == {"not_signed_by_issuer": 1}
    assert root["refusal_examples"][0].startswith("index.txt line ")
    assert (root["records_with_der"], root["records_index_only"], root["records_crl_only"]) == (8, 1, 1)
    assert root["certificates"] == 10 and root["already_present"] == 0
    # R lines: 6; the CRL adds crl-only-revocation's and crl-only-serial's.
    assert root["revocations"] == 8
    assert root["crl_number"] == old_ca["root"].crl.extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number == 0x1001
    assert root["crl_number_floor_raised"] is True
    assert summaries["class3"]["index_lines"] == 9 and summaries["class3"]["refused"] == {"not_signed_by_issuer": 1}


def test_first_crl_lists_every_old_revocation_not_past_grace(old_ca, imported):
    repo, _ = imported
    for issuer in ("root", "class3"):
        old = {entry.serial_number: entry for entry in old_ca[issuer].crl}
        listed = {serial: (revoked_at, reason) for serial, revoked_at, reason
                  in repo.revoked_for_crl(issuer, NOW, GRACE)}
        past_grace = serial_of(old_ca, issuer, "expired-past-grace")
        assert set(listed) == set(old) - {past_grace}
        for serial, (revoked_at, _) in listed.items():
            assert revoked_at == old[serial].revocation_date_utc
        assert listed[serial_of(old_ca, issuer, "key-compromised")][1] == 1
        assert listed[serial_of(old_ca, issuer, "superseded")][1] == 4
        assert listed[serial_of(old_ca, issuer, "no-reason")][1] is None
        assert listed[serial_of(old_ca, issuer, "crl-only-revocation")][1] == 1
        assert repo.previous_crl_number(issuer) >= 0x1001


def test_records_as_stored(old_ca, imported):
    repo, _ = imported
    live = old_ca["certs"]["Old Root", "live"]
    row = repo.get_certificate("root", format(live.serial_number, "x"))
    assert row["der"] == live.public_bytes(Encoding.DER) and row["imported_from"] == "openssl-ca"
    assert row["not_before"] == live.not_valid_before_utc and row["revoked_at"] is None
    lost = repo.get_certificate("root", format(serial_of(old_ca, "root", "lost-file"), "x"))
    assert lost["der"] is None and lost["subject"] == "/CN=lost-file.root.example.org"
    assert lost["not_before"] == datetime.fromisoformat(UNKNOWN_NOT_BEFORE) and lost["revocation_reason"] == 5
    only = repo.get_certificate("root", format(serial_of(old_ca, "root", "crl-only-serial"), "x"))
    assert only["der"] is None and only["not_after"] == datetime.fromisoformat(UNKNOWN_NOT_AFTER)
    assert repo.get_certificate("root", format(serial_of(old_ca, "root", "forged-file"), "x")) is None
    assert repo.consistency_check() == []
    assert repo.verify_audit().ok


def test_rerun_imports_nothing_twice(old_ca, imported):
    repo, _ = imported
    events, digest = repo.last_event_seq(), repo.content_digest()
    again = import_both(repo, old_ca)
    assert again["root"]["certificates"] == again["root"]["revocations"] == 0
    assert again["root"]["revocations_added"] == 0 and again["root"]["already_present"] == 10
    assert again["root"]["crl_number_floor_raised"] is False
    assert (repo.last_event_seq(), repo.content_digest()) == (events, digest)


def test_a_crl_of_another_ca_refuses_the_whole_import(old_ca, tmp_path):
    repo = Repository(str(tmp_path / "r.sqlite"), "importer")
    with pytest.raises(ImportRefused, match="not signed by the issuer"):
        import_openssl_ca(repo, "root", old_ca["root"].certificate, old_ca["root"].dir,
                          old_ca["class3"].crl_path)
    assert repo.health()["counts"]["certificates"] == 0


def signed_events(repo: Repository, key: Ed25519PrivateKey) -> list[dict]:
    events = repo.events_after(0, 10_000)
    for event in events:
        event["signature"] = sign_event(key, event)
    return events


def test_a_peer_bootstraps_the_imported_history(old_ca, imported, tmp_path):
    repo, _ = imported
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()},
                              {i: old_ca[i].certificate for i in ("root", "class3")}, None)
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    outcomes, waiting = peer.apply_peer_events(signed_events(repo, key), validator)
    assert waiting is None and set(outcomes) == {"applied"}
    assert peer.content_digest() == repo.content_digest()
    assert peer.previous_crl_number("root") == repo.previous_crl_number("root")
    assert peer.quarantine_count() == 0 and peer.verify_audit().ok


def test_pre_switch_certificates_are_revocable(old_ca, imported):
    repo, _ = imported
    for cn in ("live", "lost-file"):  # with its DER, and index-only (lost-file is revoked)
        serial = format(serial_of(old_ca, "class3", cn), "x")
        answer = repo.revoke("class3", serial, 1, NOW, f"req-{cn}")
        assert answer["already_revoked"] is (cn == "lost-file")
        assert serial in {format(s, "x") for s, _, _ in repo.revoked_for_crl("class3", NOW, GRACE)}


def forged(event: dict, key: Ed25519PrivateKey, **body_changes) -> dict:
    event = dict(event, event_id=event["event_id"][::-1], body=dict(event["body"], **body_changes))
    event["signature"] = sign_event(key, event)
    return event


def test_forged_imported_events_are_quarantined(old_ca, imported, tmp_path):
    """Signed by a trusted node, yet not what an import can produce: quarantined."""
    repo, _ = imported
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()},
                              {i: old_ca[i].certificate for i in ("root", "class3")}, None)
    events = [e for e in repo.events_after(0, 10_000) if e["type"] == "x509_imported"]
    with_der = next(e for e in events if e["body"]["der"] is not None and e["body"]["issuer"] == "root")
    without = next(e for e in events if e["body"]["der"] is None)
    class3_der = next(e for e in events if e["body"]["der"] is not None and e["body"]["issuer"] == "class3")
    bad = [
        forged(with_der, key, issuer="class3"),  # root's certificate claimed for class 3
        forged(with_der, key, serial=format(int(with_der["body"]["serial"], 16) + 1, "x")),
        forged(without, key, not_before="2020-01-01T00:00:00Z"),  # claims what it cannot know
        forged(without, key, imported_from="elsewhere"),
        forged(class3_der, key, revoked_at="1999-12-31T00:00:00Z", reason=1),
        forged(without, key, revoked_at=None, reason=1),
        forged(without, key, revoked_at="2020-01-01T00:00:00Z", reason=8),  # removeFromCRL
    ]
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    outcomes, waiting = peer.apply_peer_events(bad, validator)
    assert waiting is None and outcomes == ["quarantined"] * len(bad)
    assert peer.health()["counts"]["certificates"] == 0


def test_cli_refuses_while_a_signer_runs_and_imports_when_stopped(old_ca, dev_data, tmp_path):
    path = signer_config(dev_data, tmp_path)
    config = yaml.safe_load(path.read_text())
    config["issuers"][0].update(id="root", certificate=str(old_ca["root"].cert_path))
    with socket.socket() as listener:  # what a running signer's admin port looks like
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config["actor_system"]["admin_port"] = listener.getsockname()[1]
        path.write_text(yaml.safe_dump(config))
        args = ("--config", str(path), "import-openssl-ca", "--issuer", "root", "--ca-dir",
                str(old_ca["root"].dir), "--crl", str(old_ca["root"].crl_path))
        running = run_tool("signer-admin", *args)
        running_json = run_tool("signer-admin", *args, "--json")
    assert running.returncode == 2 and "stop it first" in running.stderr
    assert json.loads(running_json.stdout)["error"]["code"] == "signer_running"
    assert not (tmp_path / "repository.sqlite").exists()
    # A signer on this repository under another admin port: its instance lock refuses it.
    from core.runtime.instance_lock import InstanceLock
    held = InstanceLock.acquire(tmp_path, {"pid": 4711, "node_id": "signer-dev", "admin_port": 1})
    try:
        locked = run_tool("signer-admin", *args)
    finally:
        held.release()
    assert locked.returncode == 2 and "pid 4711" in locked.stderr and "stopped" in locked.stderr
    assert not (tmp_path / "repository.sqlite").exists()
    stopped = run_tool("signer-admin", *args, "--json")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr  # one certificate refused
    summary = json.loads(stopped.stdout)
    assert summary["certificates"] == 10 and summary["refused"] == {"not_signed_by_issuer": 1}
    again = run_tool("signer-admin", *args)
    assert again.returncode == 1 and "already_present: 10" in again.stdout


def test_catch_up_applies_a_batch_in_one_transaction(old_ca, imported, tmp_path):
    repo, _ = imported
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()},
                              {i: old_ca[i].certificate for i in ("root", "class3")}, None)
    events = signed_events(repo, key)[:12]
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    statements = []
    peer._db.set_trace_callback(statements.append)
    outcomes, waiting = peer.apply_peer_events(events, validator)
    peer._db.set_trace_callback(None)
    assert waiting is None and outcomes == ["applied"] * 12
    assert sum(s.strip().upper().startswith("COMMIT") for s in statements) == 1
    assert peer.last_event_seq() == 12


def test_a_refused_event_in_a_batch_is_quarantined_alone(old_ca, imported, tmp_path):
    repo, _ = imported
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()},
                              {i: old_ca[i].certificate for i in ("root", "class3")}, None)
    events = [e for e in signed_events(repo, key) if e["type"] == "x509_imported"][:6]
    bad = forged(events[1], key, not_before="2020-01-01T00:00:00Z") if events[1]["body"]["der"] is None \
        else forged(events[1], key, issuer="class3" if events[1]["body"]["issuer"] == "root" else "root")
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    outcomes, waiting = peer.apply_peer_events(events[:3] + [bad] + events[3:], validator)
    assert waiting is None
    assert outcomes == ["applied"] * 3 + ["quarantined"] + ["applied"] * 3
    assert peer.health()["counts"]["certificates"] == 6 and peer.quarantine_count() == 1


def test_a_batch_stops_at_a_revocation_before_its_certificate(old_ca, tmp_path):
    """What was applied before it is committed; it and the rest come again later."""
    repo = Repository(str(tmp_path / "origin.sqlite"), "importer")
    import_openssl_ca(repo, "root", old_ca["root"].certificate, old_ca["root"].dir)
    repo.revoke("root", format(serial_of(old_ca, "root", "live"), "x"), 4, NOW, "req-live")
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()},
                              {i: old_ca[i].certificate for i in ("root", "class3")}, None)
    events = signed_events(repo, key)
    revocation = events[-1]
    assert revocation["type"] == "x509_revoked"
    others = [e for e in events[:-1] if e["body"].get("serial") != revocation["body"]["serial"]]
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    outcomes, waiting = peer.apply_peer_events(others[:2] + [revocation] + others[2:], validator)
    assert outcomes == ["applied", "applied"] and waiting is not None and waiting.code == "unknown_serial"
    assert peer.last_event_seq() == 2


def test_an_event_twice_in_a_batch_or_again_later_applies_once(old_ca, imported, tmp_path):
    repo, _ = imported
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()},
                              {i: old_ca[i].certificate for i in ("root", "class3")}, None)
    events = signed_events(repo, key)[:3]
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    assert peer.apply_peer_events(events + events[:1], validator) == (["applied"] * 3 + ["known"], None)
    assert peer.apply_peer_events(events, validator) == (["known"] * 3, None)
    assert peer.last_event_seq() == 3 and peer.verify_audit().ok


def test_the_import_reports_progress_after_each_batch(old_ca, tmp_path):
    repo = Repository(str(tmp_path / "r.sqlite"), "importer")
    seen: list[int] = []
    summary = import_openssl_ca(repo, "root", old_ca["root"].certificate, old_ca["root"].dir,
                                old_ca["root"].crl_path, batch=2, progress=seen.append)
    assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] <= summary.index_lines


def test_a_rerun_that_finds_a_lost_certificate_file_completes_its_record(tmp_path):
    """An index-only record (the newcerts file was missing) gets its DER when a later run
    finds the file: one more x509_imported event, which completes the record on a peer too.
    A file of another certificate under that serial stays a collision."""
    ca = OldCa(tmp_path / "old", "Old Root", "0A10", "1000")
    kept, lost = (ca.issue(f"{cn}.example.org") for cn in ("kept", "lost"))
    saved = ca.newcerts_file(lost.serial_number).read_bytes()
    ca.newcerts_file(lost.serial_number).unlink()
    crl = ca.gencrl(tmp_path / "old.crl")
    repo = Repository(str(tmp_path / "a.sqlite"), "importer")
    peer = Repository(str(tmp_path / "peer.sqlite"), "peer")
    key = Ed25519PrivateKey.generate()
    validator = PeerValidator({"importer": key.public_key()}, {"root": ca.certificate}, None)
    try:
        first = import_openssl_ca(repo, "root", ca.certificate, ca.dir, tmp_path / "old.crl").as_dict()
        assert (first["records_index_only"], first["certificates"]) == (1, 2) and crl is not None
        assert repo.get_certificate("root", format(lost.serial_number, "x"))["der"] is None
        assert set(peer.apply_peer_events(signed_events(repo, key), validator)[0]) == {"applied"}
        seen = repo.last_event_seq()

        ca.newcerts_file(lost.serial_number).write_bytes(saved)
        again = import_openssl_ca(repo, "root", ca.certificate, ca.dir, tmp_path / "old.crl").as_dict()
        assert again["certificates"] == 0 and again["already_present"] == 2
        assert again["certificates_completed"] == 1
        row = repo.get_certificate("root", format(lost.serial_number, "x"))
        assert row["der"] == lost.public_bytes(Encoding.DER) and row["subject"] == lost.subject.rfc4514_string()
        assert row["not_before"] == lost.not_valid_before_utc
        [completion] = [e for e in signed_events(repo, key) if e["seq"] > seen]
        assert completion["type"] == "x509_imported" and completion["body"]["der"] == row["der"]
        assert peer.apply_peer_events([completion], validator)[0] == ["applied"]
        assert peer.get_certificate("root", format(lost.serial_number, "x"))["der"] == row["der"]
        assert peer.content_digest() == repo.content_digest()

        third = import_openssl_ca(repo, "root", ca.certificate, ca.dir, tmp_path / "old.crl").as_dict()
        assert third["certificates_completed"] == 0 and repo.last_event_seq() == seen + 1
        ca.newcerts_file(kept.serial_number).write_bytes(saved)  # the lost one's file, wrong serial
        fourth = import_openssl_ca(repo, "root", ca.certificate, ca.dir, tmp_path / "old.crl").as_dict()
        assert fourth["certificates_completed"] == 0 and repo.last_event_seq() == seen + 1
        assert repo.get_certificate("root", format(kept.serial_number, "x"))["der"] == kept.public_bytes(Encoding.DER)
    finally:
        repo.close()
        peer.close()
