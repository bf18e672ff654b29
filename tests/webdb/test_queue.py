"""Unit tests of the WebDB client daemon's WorkQueue on a SQLite WebDB (tools/webdb/queue.py):
which rows are pending, the bookkeeping of failures and attempts, storing results once, the
queue depth, and write_atomically (tools/client/files.py) it stores files with.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.client.files import write_atomically
from tools.webdb.work import Job, openpgp_job, request_id, revoke_job, x509_job
from tests.support import webdb_fixtures
from tests.support.webdb_fixtures import MARKER, ZERO, Web, issued_row, local_job

web = webdb_fixtures.web  # the fixtures, by name, for pytest to find
gpg_key = webdb_fixtures.gpg_key


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# -- queue: what is pending ------------------------------------------------------------------

def test_pending_certificates(web):
    side = web.side
    pending = side.add_certificate("emailcerts", "/CN=a")
    retried = side.add_certificate("emailcerts", "/CN=b", warning=2)
    side.add_certificate("emailcerts", "/CN=c", warning=3)  # attempts used up
    issued = issued_row(web)
    side.db.execute("INSERT INTO emailcerts (subject, csr_name) VALUES ('/CN=d', '')")  # no file yet
    other_table = side.add_certificate("domaincerts", "/CN=e.example.org")
    assert web.ids(web.queue.pending_certificates("emailcerts", 10)) == [pending, retried]
    assert web.ids(web.queue.pending_certificates("emailcerts", 1)) == [pending]
    assert web.ids(web.queue.pending_certificates("domaincerts", 10)) == [other_table]
    assert issued not in web.ids(web.queue.pending_certificates("emailcerts", 10))


def test_pending_certificates_follows_max_attempts(tmp_path):
    w = Web(tmp_path, webdb={"max_attempts": 5})
    try:
        a = w.side.add_certificate("orgemailcerts", "/CN=a", warning=4)
        w.side.add_certificate("orgemailcerts", "/CN=b", warning=5)
        assert w.ids(w.queue.pending_certificates("orgemailcerts", 10)) == [a]
    finally:
        w.close()


def test_pending_revocations_need_the_marker(web):
    asked = issued_row(web, "domaincerts", "/CN=a.example.org")
    web.side.request_revocation("domaincerts", asked)
    issued_row(web, "domaincerts", "/CN=b.example.org")  # revoked stays 0000-00-00
    done = issued_row(web, "domaincerts", "/CN=c.example.org")
    web.side.request_revocation("domaincerts", done, "2026-11-27 10:00:00")
    other_marker = issued_row(web, "domaincerts", "/CN=d.example.org")
    web.side.request_revocation("domaincerts", other_marker, "1970-01-01 10:00:02")
    assert web.ids(web.queue.pending_revocations("domaincerts", 10)) == [asked]
    assert web.queue.pending_revocations("emailcerts", 10) == []


def test_pending_openpgp(web):
    side = web.side
    a = side.add_gpg(b"k", "a@example.org")
    b = side.add_gpg(b"k", "b@example.org")
    side.db.execute("UPDATE gpg SET warning=3 WHERE id=?", (b,))
    c = side.add_gpg(b"k", "c@example.org")
    side.db.execute("UPDATE gpg SET crt='crt/gpg/0/gpg-3.crt' WHERE id=?", (c,))
    side.db.execute("INSERT INTO gpg (memid, email) VALUES (7, 'd@example.org')")  # csr still ''
    e = side.add_gpg(b"k", "e@example.org")
    assert web.ids(web.queue.pending_openpgp(10)) == [a, e]
    assert web.ids(web.queue.pending_openpgp(1)) == [a]


def test_depth_counts_per_table_and_action(web):
    side = web.side
    for _ in range(3):  # more than any batch asked for: depth is not limited
        side.add_certificate("emailcerts", "/CN=a")
    side.add_certificate("emailcerts", "/CN=b", warning=3)
    side.add_certificate("orgdomaincerts", "/CN=c.example.org")
    revoke = issued_row(web, "domaincerts", "/CN=d.example.org")
    side.request_revocation("domaincerts", revoke)
    side.add_gpg(b"k", "a@example.org")
    side.add_gpg(b"k", "b@example.org")
    assert web.queue.depth() == {
        "emailcerts.sign": 3, "emailcerts.revoke": 0, "domaincerts.sign": 0, "domaincerts.revoke": 1,
        "orgemailcerts.sign": 0, "orgemailcerts.revoke": 0, "orgdomaincerts.sign": 1,
        "orgdomaincerts.revoke": 0, "gpg.sign": 2}
    web.queue.fail(local_job(web, "domaincerts", revoke, "revoke"), "refused", permanent=True)
    assert web.queue.depth()["domaincerts.revoke"] == 0


@pytest.mark.parametrize("sections, keys", [
    ({"x509": {"enabled": False}}, {"gpg.sign"}),
    ({"openpgp": {"enabled": False}}, {f"{t}.{a}" for t in ("emailcerts", "domaincerts", "orgemailcerts",
                                                             "orgdomaincerts") for a in ("sign", "revoke")}),
])
def test_depth_only_counts_enabled_work(tmp_path, sections, keys):
    w = Web(tmp_path, **sections)
    try:
        assert set(w.queue.depth()) == keys
    finally:
        w.close()


def test_revocation_listed_once_with_records_under_two_prefixes(web):
    row_id = issued_row(web)
    web.side.request_revocation("emailcerts", row_id)
    for prefix in ("old", "webdb"):
        job = Job("emailcerts", row_id, "revoke", request_id(prefix, "emailcerts", row_id, "revoke"), "",
                  {}, web.row("emailcerts", row_id))
        web.queue.note_transient(job, "handler_unavailable: busy")
    assert web.ids(web.queue.pending_revocations("emailcerts", 10)) == [row_id]
    assert web.queue.depth()["emailcerts.revoke"] == 1


# -- queue: failures -----------------------------------------------------------------------

def test_transient_local_failures_count_up_to_max_attempts(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=a")
    job = local_job(web, "emailcerts", row_id)
    for attempt, state in ((1, "retrying"), (2, "retrying"), (3, "failed")):
        assert web.queue.fail(job, f"cannot read the CSR file ({attempt})", permanent=False) == (attempt, attempt >= 3)
        assert web.row("emailcerts", row_id)["warning"] == attempt
        book = web.book("emailcerts", row_id, "sign")
        assert (book["state"], book["attempts"]) == (state, attempt)
        assert book["last_error"] == f"cannot read the CSR file ({attempt})"
        assert book["request_id"] == job.request_id and book["done_at"] is None
        assert (row_id in web.ids(web.queue.pending_certificates("emailcerts", 10))) is (attempt < 3)
    # warning stays within max_attempts even if the row is failed once more
    assert web.queue.fail(job, "again", permanent=False)[0] == 4
    assert web.row("emailcerts", row_id)["warning"] == 3
    assert web.book("emailcerts", row_id, "sign")["state"] == "failed"


def test_permanent_failure_uses_up_all_attempts_at_once(web):
    row_id = web.side.add_certificate("domaincerts", "/CN=a.example.org")
    other = web.side.add_certificate("domaincerts", "/CN=b.example.org")
    job = local_job(web, "domaincerts", row_id)
    assert web.queue.fail(job, "bad_csr: not a CSR", permanent=True)[0] == 3
    assert web.row("domaincerts", row_id)["warning"] == 3
    assert web.row("domaincerts", other)["warning"] == 0
    book = web.book("domaincerts", row_id, "sign")
    assert (book["state"], book["attempts"], book["last_error"]) == ("failed", 3, "bad_csr: not a CSR")
    assert web.ids(web.queue.pending_certificates("domaincerts", 10)) == [other]


def test_permanent_failure_after_a_transient_one(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=a")
    job = local_job(web, "emailcerts", row_id)
    web.queue.fail(job, "missing file", permanent=False)
    assert web.queue.fail(job, "refused", permanent=True)[0] == 3
    assert web.row("emailcerts", row_id)["warning"] == 3
    assert web.book("emailcerts", row_id, "sign")["state"] == "failed"


def test_warning_left_by_the_old_client_counts_on(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=a", warning=2)  # from the old client
    web.queue.fail(local_job(web, "emailcerts", row_id), "missing file", permanent=False)
    assert web.row("emailcerts", row_id)["warning"] == 3  # its last try: not pending any more
    assert web.queue.pending_certificates("emailcerts", 10) == []
    assert web.book("emailcerts", row_id, "sign")["attempts"] == 1


def test_note_transient_does_not_count_an_attempt(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=a")
    job = local_job(web, "emailcerts", row_id)
    for _ in range(5):
        web.queue.note_transient(job, "hsm_unavailable: token away")
    book = web.book("emailcerts", row_id, "sign")
    assert (book["state"], book["attempts"], book["last_error"]) == ("retrying", 0, "hsm_unavailable: token away")
    assert web.row("emailcerts", row_id)["warning"] == 0
    assert web.ids(web.queue.pending_certificates("emailcerts", 10)) == [row_id]
    assert web.queue.fail(job, "missing file", permanent=False)[0] == 1
    failures = web.queue.failures()
    assert [(f["request_id"], f["last_error"]) for f in failures] == [(job.request_id, "missing file")]


def test_gpg_failures_set_the_gpg_warning(web):
    row_id = web.side.add_gpg(b"k", "a@example.org")
    job = local_job(web, "gpg", row_id)
    web.queue.fail(job, "missing key file", permanent=False)
    assert web.row("gpg", row_id)["warning"] == 1
    web.queue.fail(job, "no verified uid", permanent=True)
    assert web.row("gpg", row_id)["warning"] == 3
    assert web.queue.pending_openpgp(10) == []


def test_revocation_permanent_failure_stops_listing_the_row(web):
    row_id = issued_row(web)
    web.side.request_revocation("emailcerts", row_id)
    job = revoke_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    assert web.queue.fail(job, "unknown_serial: not issued here", permanent=True)[0] == 3
    assert web.queue.pending_revocations("emailcerts", 10) == []
    row = web.row("emailcerts", row_id)
    assert (row["revoked"], row["warning"]) == (MARKER, 0)  # the row itself is not touched
    assert web.book("emailcerts", row_id, "revoke")["state"] == "failed"


def test_revocation_transient_failures_stop_listing_at_max_attempts(web):
    row_id = issued_row(web)
    web.side.request_revocation("emailcerts", row_id)
    job = local_job(web, "emailcerts", row_id, "revoke")
    for attempt in (1, 2, 3):
        assert web.ids(web.queue.pending_revocations("emailcerts", 10)) == [row_id]
        assert web.queue.fail(job, "subject unparsable", permanent=False)[0] == attempt
    assert web.queue.pending_revocations("emailcerts", 10) == []
    assert web.row("emailcerts", row_id)["warning"] == 0


def test_sign_and_revoke_bookkeeping_are_separate(web):
    row_id = issued_row(web)
    web.side.request_revocation("emailcerts", row_id)
    web.queue.fail(local_job(web, "emailcerts", row_id, "sign"), "old failure", permanent=True)
    assert web.ids(web.queue.pending_revocations("emailcerts", 10)) == [row_id]


# -- queue: results ------------------------------------------------------------------------

PEM = b"-----BEGIN CERTIFICATE-----\nfirst\n-----END CERTIFICATE-----\n"


def test_store_certificate_writes_file_and_row_once(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    other = web.side.add_certificate("emailcerts", "/CN=Bob")
    job = x509_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    web.queue.fail(job, "missing file", permanent=False)
    assert web.queue.store_certificate(job, PEM, "0a1b2c", "2027-11-27T12:00:00+02:00") is True
    row = web.row("emailcerts", row_id)
    expected_name = f"crt/client/0/client-{row_id}.crt"
    assert (row["crt_name"], row["serial"], row["expire"]) == (expected_name, "0A1B2C", "2027-11-27 10:00:00")
    assert row["modified"] != ZERO
    assert (web.root / expected_name).read_bytes() == PEM
    assert no_temporaries(web.root)
    book = web.book("emailcerts", row_id, "sign")
    assert (book["state"], book["attempts"], book["last_error"]) == ("done", 1, None)
    assert book["done_at"] is not None
    assert web.ids(web.queue.pending_certificates("emailcerts", 10)) == [other]
    assert web.queue.failures() == []

    assert web.queue.store_certificate(job, PEM, "ffff", "2030-01-01T00:00:00+00:00") is False
    assert web.row("emailcerts", row_id) == row


def test_store_revocation_once(web):
    row_id = issued_row(web, "orgemailcerts")
    web.side.request_revocation("orgemailcerts", row_id)
    job = revoke_job(web.config, "orgemailcerts", web.row("orgemailcerts", row_id))
    assert web.queue.store_revocation(job, "2026-11-27T11:00:00+01:00") is True
    assert web.row("orgemailcerts", row_id)["revoked"] == "2026-11-27 10:00:00"
    assert web.queue.pending_revocations("orgemailcerts", 10) == []
    assert web.book("orgemailcerts", row_id, "revoke")["state"] == "done"
    assert web.queue.store_revocation(job, "2026-11-28T00:00:00+00:00") is False
    assert web.row("orgemailcerts", row_id)["revoked"] == "2026-11-27 10:00:00"


def test_store_openpgp_once(web, gpg_key):
    row_id = web.side.add_gpg(gpg_key[0], "alice@example.org")
    job = openpgp_job(web.config, web.row("gpg", row_id), {"alice@example.org"})
    armoured = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\ncertified\n-----END PGP PUBLIC KEY BLOCK-----\n"
    assert web.queue.store_openpgp(job, armoured, "2027-11-27T10:00:00+00:00") is True
    row = web.row("gpg", row_id)
    expected_name = f"crt/gpg/0/gpg-{row_id}.crt"
    assert (row["crt"], row["expire"]) == (expected_name, "2027-11-27 10:00:00")
    assert row["issued"] != ZERO
    assert (web.root / expected_name).read_text() == armoured
    assert no_temporaries(web.root)
    assert web.queue.pending_openpgp(10) == []
    assert web.queue.store_openpgp(job, armoured, "2030-01-01T00:00:00+00:00") is False
    assert web.row("gpg", row_id) == row


def test_write_atomically_replaces_or_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "er" / "file.crt"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.crt"]

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomically(target, b"three")
    assert target.read_bytes() == b"two"


def test_a_counted_failure_delays_the_row_by_retry_delay_s(tmp_path):
    for delay, due in ((0, True), (3600, False)):
        (tmp_path / str(delay)).mkdir()
        w = Web(tmp_path / str(delay), webdb={"retry_delay_s": delay})
        row_id = w.side.add_certificate("emailcerts", "/CN=a")
        w.queue.fail(local_job(w, "emailcerts", row_id), "cannot read the CSR file", permanent=False)
        assert (w.ids(w.queue.pending_certificates("emailcerts", 10)) == [row_id]) is due
        assert w.queue.depth()["emailcerts.sign"] == 1


def test_the_request_id_prefix_is_kept_also_from_before_the_meta_table(web):
    from tools.webdb.queue import PrefixChanged
    web.side.db.execute("INSERT INTO signer_client_requests (request_id, tbl, row_id, action, state) "
                        "VALUES ('older:emailcerts:1:sign', 'emailcerts', 1, 'sign', 'done')")
    with pytest.raises(PrefixChanged, match="'older'"):
        web.queue.check_prefix()  # no meta row yet, but an earlier daemon used 'older'
    web.side.db.execute("DELETE FROM signer_client_requests")
    web.queue.check_prefix()  # a fresh WebDB adopts the configured prefix ...
    web.queue.check_prefix()  # ... and keeps it
    assert web.side.db.query("SELECT value FROM signer_client_meta")[0]["value"] == "webdb"


def test_expiry_of_reads_the_rows_expire_for_both_serial_forms(web):
    import datetime as dt

    side = web.side
    for table, serial, expire in (("domaincerts", "0ABC12", "2020-03-04 05:06:07"),   # openssl's form
                                  ("emailcerts", "DEF3", "2031-01-02 03:04:05")):       # the signer's
        row = side.add_certificate(table, "/CN=x")
        side.db.execute(f"UPDATE {table} SET serial=?, expire=? WHERE id=?", (serial, expire, row))
    assert web.queue.expiry_of("root", 0xABC12) == dt.datetime(2020, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    assert web.queue.expiry_of("class3", 0xDEF3) == dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert web.queue.expiry_of("root", 0x1234) is None  # unknown: the publisher keeps the old CRL
