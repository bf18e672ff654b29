"""Unit tests of the WebDB client daemon's row -> request rules (tools/webdb/work.py): request
ids, subjects and SANs, variants, reading CSRs, X.509 sign and revoke jobs, OpenPGP user ids and
jobs, and how signer error codes are classified. The WebDB is a real SQLite file that
tests/support/webdb_side.py fills the way CAcert's web application does.
"""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tools.webdb.work import (RowProblem, db_time, classify, key_uids, openpgp_job, parse_san,
                              parse_spkac_file, parse_subject, read_csr_der, request_id, result_name,
                              revoke_job, uid_email, validity_days, variant_of, x509_job)
from tests.support import webdb_fixtures
from tests.support.webdb_fixtures import ALICE, ALICE_WORK, Web, issued_row
from tests.support.webdb_side import csr_pem

web = webdb_fixtures.web  # the fixtures, by name, for pytest to find
gpg_key = webdb_fixtures.gpg_key

XMPP_SUBJECT = ("/CN=www.example.org/subjectAltName=DNS:www.example.org"
                "/subjectAltName=otherName:1.3.6.1.5.5.7.8.5;UTF8:chat.example.org")


# -- work: pure functions -----------------------------------------------------------------

def test_request_ids_are_stable_and_distinct():
    assert request_id("webdb", "emailcerts", 5, "sign") == "webdb:emailcerts:5:sign"
    assert request_id("webdb", "emailcerts", "5", "sign") == request_id("webdb", "emailcerts", 5, "sign")
    ids = {request_id(prefix, table, row, action)
           for prefix in ("webdb", "test")
           for table in ("emailcerts", "domaincerts", "orgemailcerts", "orgdomaincerts", "gpg")
           for row in (1, 2, 11)
           for action in ("sign", "revoke")}
    assert len(ids) == 2 * 5 * 3 * 2


@pytest.mark.parametrize("iso, text", [
    ("2026-11-27T12:00:00+02:00", "2026-11-27 10:00:00"),
    ("2026-11-27T10:00:00+00:00", "2026-11-27 10:00:00"),
    ("2026-11-27T10:00:00Z", "2026-11-27 10:00:00"),
    ("2026-12-31T23:30:05-01:00", "2027-01-01 00:30:05"),
])
def test_db_time_is_utc_datetime_text(iso, text):
    assert db_time(iso) == text


@pytest.mark.parametrize("table, row_id, expected", [
    ("emailcerts", 5, "crt/client/0/client-5.crt"),
    ("domaincerts", 1999, "crt/server/1/server-1999.crt"),
    ("orgemailcerts", 2000, "crt/orgclient/2/orgclient-2000.crt"),
    ("orgdomaincerts", 7, "crt/orgserver/0/orgserver-7.crt"),
    ("gpg", 1234, "crt/gpg/1/gpg-1234.crt"),
])
def test_result_name_comes_from_table_and_id_as_generatecertpath(tmp_path, table, row_id, expected):
    (tmp_path / "www").mkdir()
    w = Web(tmp_path)
    try:
        assert result_name(w.config.webdb, table, row_id) == expected
    finally:
        w.close()
    # CAcert's layout: names relative to its www folder, one level below files_root
    w = Web(tmp_path, webdb={"names_relative_to": str(tmp_path / "www" / "www")})
    try:
        (tmp_path / "www" / "www").mkdir(exist_ok=True)
        assert result_name(w.config.webdb, table, row_id) == "../" + expected
    finally:
        w.close()


@pytest.mark.parametrize("text, subject, sans", [
    (XMPP_SUBJECT, [["CN", "www.example.org"]],
     [["dns", "www.example.org"], ["xmpp", "chat.example.org"]]),
    ("/CN=Alice Example/emailAddress=alice@example.org/subjectAltName=email:alice@example.org",
     [["CN", "Alice Example"], ["emailAddress", "alice@example.org"]], [["email", "alice@example.org"]]),
    ("/CN=a.example.org/subjectAltName=DNS:a.example.org, DNS:b.example.org",
     [["CN", "a.example.org"]], [["dns", "a.example.org"], ["dns", "b.example.org"]]),
    ("/O=Example Org/OU=IT/CN=x.example.org", [["O", "Example Org"], ["OU", "IT"], ["CN", "x.example.org"]], []),
    ("/CN=CAcert WoT User", [["CN", "CAcert WoT User"]], []),
    ("/CN=a=b", [["CN", "a=b"]], []),
    ("  /CN=x//  ", [["CN", "x"]], []),
    ("", [], []),
])
def test_parse_subject(text, subject, sans):
    assert parse_subject(text) == (subject, sans)


@pytest.mark.parametrize("text", [
    "/CN", "/=x", "/CN=", "/CN=x/garbage",
    "/subjectAltName=IP:192.0.2.1", "/subjectAltName=URI:urn:x", "/subjectAltName=DNS:",
    "/subjectAltName=otherName:1.2.3.4;UTF8:chat.example.org",
    "/subjectAltName=otherName:1.3.6.1.5.5.7.8.5;UTF8:",
])
def test_parse_subject_refuses_bad_parts(text):
    with pytest.raises(RowProblem) as caught:
        parse_subject(text)
    assert caught.value.permanent is True


@pytest.mark.parametrize("text, pair", [
    ("DNS:www.example.org", ["dns", "www.example.org"]),
    ("dns:www.example.org", ["dns", "www.example.org"]),
    ("email:a@example.org", ["email", "a@example.org"]),
    ("EMAIL:a@example.org", ["email", "a@example.org"]),
    ("otherName:1.3.6.1.5.5.7.8.5;UTF8:me@jabber.example.org", ["xmpp", "me@jabber.example.org"]),
])
def test_parse_san(text, pair):
    assert parse_san(text) == pair


@pytest.mark.parametrize("row, sans, variant", [
    ({"type": 8}, [], "ocsp"),
    ({"type": "8"}, [], "ocsp"),
    ({"type": 9}, [], "timestamp"),
    ({"type": 8, "codesign": 1}, [], "ocsp"),
    ({"codesign": 1}, [], "codesign"),
    ({"codesign": "1"}, [], "codesign"),
    ({"codesign": 0, "type": None}, [], ""),
    ({"codesign": None}, [], ""),
    ({}, [["dns", "a.example.org"]], ""),
    ({"type": 1}, [["dns", "a.example.org"], ["xmpp", "chat.example.org"]], "jabber"),
])
def test_variant_of(row, sans, variant):
    assert variant_of(row, sans, "domaincerts") == variant


@pytest.mark.parametrize("table, row, variant", [
    # the web app puts an XmppAddr next to every DNS name: org server rows stay server-org
    ("orgdomaincerts", {"type": None}, ""),
    ("orgdomaincerts", {"type": ""}, ""),  # what the org server INSERT leaves in the tinyint
    ("orgdomaincerts", {"type": 8}, "ocsp"),
    ("orgemailcerts", {"type": 9}, "timestamp"),
    ("emailcerts", {"type": 8, "codesign": 1}, "ocsp"),
])
def test_variant_of_other_tables(table, row, variant):
    assert variant_of(row, [["dns", "a.example.org"], ["xmpp", "a.example.org"]], table) == variant


@pytest.mark.parametrize("table, points, days", [
    ("orgdomaincerts", None, 730), ("orgemailcerts", None, 365),
    ("emailcerts", 50, 730), ("emailcerts", 150, 730), ("emailcerts", 49, 180), ("emailcerts", None, 180),
    ("domaincerts", 100, 730), ("domaincerts", 0, 180),
])
def test_validity_days_as_client_pl(table, points, days):
    assert validity_days(table, points) == days


def test_parse_subject_skips_the_sso_attribute_as_openssl_did():
    skipped: list[str] = []
    text = "/CN=CAcert WoT User/emailAddress=alice@example.org/emailAddress = 0123456789abcdef0123"
    assert parse_subject(text, skipped) == ([["CN", "CAcert WoT User"], ["emailAddress", "alice@example.org"]], [])
    assert len(skipped) == 1 and "emailAddress = 0123456789abcdef0123" in skipped[0]


def test_parse_spkac_file_reads_cacerts_format():
    text = ("0.emailAddress = alice@example.org\n1.emailAddress = a2@example.org\n"
            "commonName = CAcert WoT User\nSPKAC = AAEC AwQ=")
    spkac, subject = parse_spkac_file(text.encode())
    assert spkac == "AAECAwQ="  # the base64 text sign_x509's `spkac` takes, blanks removed
    assert subject == [["CN", "CAcert WoT User"], ["emailAddress", "alice@example.org"],
                       ["emailAddress", "a2@example.org"]]
    assert parse_spkac_file(b"-----BEGIN CERTIFICATE REQUEST-----\n") is None
    with pytest.raises(RowProblem, match="not base64"):
        parse_spkac_file(b"SPKAC = !!!")


@pytest.mark.parametrize("code, verdict", [
    ("malformed_csr", "row"), ("hash_not_allowed", "row"), ("request_id_conflict", "row"),
    ("unknown_serial", "row"), ("openpgp_no_uid", "row"), ("bad_request", "row"),
    ("internal_error", "retry"), ("handler_unavailable", "wait"), ("duplicate_serial", "retry"),
    ("a_code_from_a_newer_signer", "retry"), ("", "retry"),
    ("duplicate_request", "wait"), ("bad_crc", "wait"),
    ("hsm_unavailable", "signer"), ("hsm_login_failed", "signer"), ("repository_error", "signer"),
    ("unknown_profile", "setup"), ("unknown_issuer", "setup"), ("unknown_command", "setup"),
    ("validity_too_long", "setup"),
])
def test_classify(code, verdict):
    assert classify(code) == verdict


def test_read_csr_der_accepts_pem_and_der(tmp_path):
    pem = csr_pem("x")
    der = x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER)
    (tmp_path / "a.csr").write_bytes(pem)
    (tmp_path / "b.csr").write_bytes(der)
    (tmp_path / "c.csr").write_bytes(b"\n  " + pem)
    for name in ("a.csr", "b.csr", "c.csr"):
        assert read_csr_der(tmp_path / name) == der


@pytest.mark.parametrize("data, words", [
    (b"SPKAC=MIICRTCCAS0wggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQ\n", "SPKAC"),
    (b"  SPKAC=abc", "SPKAC"),
    (b"\x30\x03\x02\x01\x00", "no PKCS#10 request"),
    (b"hello, I am not a CSR", "no PKCS#10 request"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "no PKCS#10"),
    (b"", "no PKCS#10 request"),
])
def test_read_csr_der_refuses_spkac_and_garbage_permanently(tmp_path, data, words):
    (tmp_path / "r.csr").write_bytes(data)
    with pytest.raises(RowProblem, match=words) as caught:
        read_csr_der(tmp_path / "r.csr")
    assert caught.value.permanent is True


def test_read_csr_der_missing_file_is_not_permanent(tmp_path):
    with pytest.raises(RowProblem, match="cannot read the CSR file") as caught:
        read_csr_der(tmp_path / "not-yet-there.csr")
    assert caught.value.permanent is False


@pytest.mark.parametrize("uid, email", [
    ("Alice <alice@example.org>", "alice@example.org"),
    ("Alice Example (work) <Alice.Work@Example.COM>", "alice.work@example.com"),
    ("alice@example.org", "alice@example.org"),
    ("  bob@example.org  ", "bob@example.org"),
    ("Alice <alice@example.org>   ", "alice@example.org"),
    ("Alice", None),
    ("Alice <not-an-address>", None),
    ("Alice <alice@example.org> trailing words", None),
    ("", None),
])
def test_uid_email(uid, email):
    assert uid_email(uid) == email


# -- work: jobs from rows ------------------------------------------------------------------

@pytest.mark.parametrize("table, columns, profile, issuer", [
    ("emailcerts", {}, "client", "root"),
    ("emailcerts", {"rootcert": 2}, "client", "class3"),
    ("emailcerts", {"codesign": 1}, "client-codesign", "root"),
    ("emailcerts", {"codesign": 1, "rootcert": 2}, "client-codesign", "class3"),
    ("domaincerts", {}, "server", "root"),
    ("domaincerts", {"rootcert": 2}, "server", "class3"),
    ("domaincerts", {"type": 8}, "ocsp", "root"),
    ("domaincerts", {"type": 9, "rootcert": 2}, "timestamp", "class3"),
    ("orgemailcerts", {}, "client-org", "root"),
    ("orgemailcerts", {"codesign": 1, "rootcert": 2}, "client-codesign", "class3"),
    ("orgdomaincerts", {"rootcert": 2}, "server-org", "class3"),
    ("orgdomaincerts", {"type": 8}, "ocsp", "root"),
])
def test_x509_job_uses_the_default_route_of_table_and_variant(web, table, columns, profile, issuer):
    row_id = web.side.add_certificate(table, "/CN=a.example.org/subjectAltName=DNS:a.example.org",
                                      md="sha256", **columns)
    row = web.row(table, row_id)
    job = x509_job(web.config, table, row)
    assert (job.body["profile"], job.body["issuer"], job.issuer) == (profile, issuer, issuer)
    assert job.command == "sign_x509" and job.action == "sign" and job.table == table
    assert job.request_id == f"webdb:{table}:{row_id}:sign" and job.row_id == row_id
    assert job.body["subject"] == [["CN", "a.example.org"]]
    assert job.body["sans"] == [["dns", "a.example.org"]]
    assert job.body["hash"] == "sha256"
    assert job.body["csr"] == read_csr_der(web.root / row["csr_name"])
    assert job.body["days"] == {"orgdomaincerts": 730, "orgemailcerts": 365}.get(table, 180)


def test_x509_job_rootcert_without_an_issuer_is_a_setup_problem(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice", rootcert=3)
    with pytest.raises(RowProblem, match="rootcert 3 names no issuer") as caught:
        x509_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    assert caught.value.verdict == "setup"


@pytest.mark.parametrize("md, expected", [("sha512", "sha512"), ("SHA384", "sha384"), ("sha1", "sha1"),
                                          ("md5", "md5"), (None, None), ("", None)])
def test_x509_job_passes_md_as_hash(web, md, expected):
    # '' is what MySQL stores for sha384 (not in the enum): no hash, the signer's default
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    row = {**web.row("emailcerts", row_id), "md": md}
    assert x509_job(web.config, "emailcerts", row).body.get("hash") == expected


def test_x509_job_schema_default_md_is_sha512(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    assert x509_job(web.config, "emailcerts", web.row("emailcerts", row_id)).body["hash"] == "sha512"


def test_x509_job_route_days_and_prefix(tmp_path):
    w = Web(tmp_path, webdb={"request_id_prefix": "pre"},
            x509={"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root", "days": 90}]})
    try:
        row_id = w.side.add_certificate("emailcerts", "/CN=Alice")
        job = x509_job(w.config, "emailcerts", w.row("emailcerts", row_id), 100)
        assert job.body["days"] == 90 and job.request_id == f"pre:emailcerts:{row_id}:sign"  # capped
        assert x509_job(w.config, "emailcerts", w.row("emailcerts", row_id), 100).body["issuer"] == "root"
        other = w.side.add_certificate("domaincerts", "/CN=a.example.org")
        with pytest.raises(RowProblem, match="no x509 route for table domaincerts") as caught:
            x509_job(w.config, "domaincerts", w.row("domaincerts", other))
        assert caught.value.verdict == "setup"  # the configuration's fault, not the row's
    finally:
        w.close()


def test_x509_job_without_route_for_the_variant(tmp_path):
    w = Web(tmp_path, x509={"routes": [{"table": "emailcerts", "profile": "client"}]})
    try:
        row_id = w.side.add_certificate("emailcerts", "/CN=Alice", type=8)
        with pytest.raises(RowProblem, match="no x509 route") as caught:
            x509_job(w.config, "emailcerts", w.row("emailcerts", row_id))
        assert caught.value.verdict == "setup"
    finally:
        w.close()


def test_x509_job_missing_csr_file_is_not_permanent(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    (web.root / web.row("emailcerts", row_id)["csr_name"]).unlink()
    with pytest.raises(RowProblem) as caught:
        x509_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    assert caught.value.permanent is False


def test_x509_job_for_an_xmpp_row_uses_the_server_jabber_profile(web):
    row_id = web.side.add_certificate("domaincerts", XMPP_SUBJECT)
    job = x509_job(web.config, "domaincerts", web.row("domaincerts", row_id))
    assert (job.body["profile"], job.body["issuer"]) == ("server-jabber", "root")
    assert job.body["sans"] == [["dns", "www.example.org"], ["xmpp", "chat.example.org"]]
    issued_at = issued_row(web, "domaincerts", XMPP_SUBJECT)  # and it can be revoked at its issuer
    assert revoke_job(web.config, "domaincerts", web.row("domaincerts", issued_at)).body["issuer"] == "root"


@pytest.mark.parametrize("table, columns, issuer", [
    ("emailcerts", {}, "root"),
    ("emailcerts", {"codesign": 1, "rootcert": 2}, "class3"),
    ("domaincerts", {"type": 8}, "root"),
    ("orgdomaincerts", {"rootcert": 2}, "class3"),
    ("orgdomaincerts", {"rootcert": 1}, "root"),
])
def test_revoke_job(web, table, columns, issuer):
    row_id = issued_row(web, table, "/CN=a.example.org", **columns)
    job = revoke_job(web.config, table, {**web.row(table, row_id), "serial": " 0A1B2C "})
    assert job.command == "revoke_x509" and job.action == "revoke" and job.issuer == issuer
    assert job.body == {"issuer": issuer, "serial": "0A1B2C"}
    assert job.request_id == f"webdb:{table}:{row_id}:revoke"


@pytest.mark.parametrize("serial", ["", "0A1B", None])
def test_revoke_job_waits_for_a_certificate_still_being_issued(web, serial):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    row = {**web.row("emailcerts", row_id), "serial": serial, "crt_name": ""}
    with pytest.raises(RowProblem, match="no certificate written back yet") as caught:
        revoke_job(web.config, "emailcerts", row)
    assert caught.value.verdict == "wait"  # revoked once it is issued, not dropped


@pytest.mark.parametrize("serial", ["", "   ", None])
def test_revoke_job_reads_a_missing_serial_from_the_certificate_file(web, serial):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0xABCDEF0123).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (web.root / "crt").mkdir(exist_ok=True)
    (web.root / "crt" / "old.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    row = {**web.row("emailcerts", row_id), "serial": serial, "crt_name": "crt/old.crt"}
    assert revoke_job(web.config, "emailcerts", row).body["serial"] == "ABCDEF0123"
    row["crt_name"] = "crt/missing.crt"
    with pytest.raises(RowProblem, match="cannot be read") as caught:
        revoke_job(web.config, "emailcerts", row)
    assert caught.value.permanent is True


def test_revoke_job_refuses_a_row_that_never_got_a_certificate(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice", warning=3)  # signing gave up
    with pytest.raises(RowProblem, match="never got a certificate") as caught:
        revoke_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    assert caught.value.permanent is True


def test_revoke_job_does_not_need_a_parsable_subject(web):
    row_id = issued_row(web)
    row = {**web.row("emailcerts", row_id), "subject": "legacy subject without slashes"}
    assert revoke_job(web.config, "emailcerts", row).body["issuer"] == "root"


# -- OpenPGP -------------------------------------------------------------------------------

def test_key_uids_of_a_gpg_key_armoured_and_binary(gpg_key):
    armoured, binary = gpg_key
    assert armoured.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert key_uids(armoured) == [ALICE, ALICE_WORK]
    assert key_uids(binary) == [ALICE, ALICE_WORK]
    assert [uid_email(u) for u in key_uids(binary)] == ["alice@example.org", "alice.work@example.com"]


@pytest.mark.parametrize("data", [b"\xff\xfe\xfd not a key", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!\n"])
def test_key_uids_refuses_non_keys(data):
    with pytest.raises(RowProblem, match="not an OpenPGP key"):
        key_uids(data)


@pytest.mark.parametrize("emails, uids", [
    ({"alice@example.org"}, [ALICE]),
    ({"alice.work@example.com"}, [ALICE_WORK]),
    ({"alice@example.org", "alice.work@example.com", "other@example.net"}, [ALICE, ALICE_WORK]),
])
def test_openpgp_job_keeps_only_verified_uids(web, gpg_key, emails, uids):
    armoured, _ = gpg_key
    row_id = web.side.add_gpg(armoured, "alice@example.org")
    job = openpgp_job(web.config, web.row("gpg", row_id), emails)
    assert job.body == {"key": armoured, "uids": uids}
    assert (job.table, job.command, job.request_id) == ("gpg", "sign_openpgp", f"webdb:gpg:{row_id}:sign")


def test_openpgp_job_without_a_verified_uid(web, gpg_key):
    row_id = web.side.add_gpg(gpg_key[1], "alice@example.org")
    for emails in (set(), {"mallory@example.org"}):
        with pytest.raises(RowProblem, match="no user id on the key is name-only or has a verified") as caught:
            openpgp_job(web.config, web.row("gpg", row_id), emails)
        assert caught.value.permanent is True


def test_openpgp_job_days_and_missing_file(tmp_path, gpg_key):
    w = Web(tmp_path, openpgp={"days": 30})
    try:
        row_id = w.side.add_gpg(gpg_key[0], "alice@example.org")
        assert openpgp_job(w.config, w.row("gpg", row_id), {"alice@example.org"}).body["days"] == 30
        (w.root / w.row("gpg", row_id)["csr"]).unlink()
        with pytest.raises(RowProblem, match="cannot read the key file") as caught:
            openpgp_job(w.config, w.row("gpg", row_id), {"alice@example.org"})
        assert caught.value.permanent is False
    finally:
        w.close()


def test_verified_emails(web):
    side = web.side
    side.add_email(7, "Alice.Work@Example.COM")
    side.add_email(7, "unverified@example.org", verified=False)
    side.add_email(8, "someone-else@example.org")
    side.db.execute("INSERT INTO email (memid, email, hash, deleted) VALUES (?, ?, '', ?)",
                    (7, "gone@example.org", "2026-01-01 00:00:00"))
    single = side.add_gpg(b"key", "Alice@Example.org", memid=7, multiple=0)
    multiple = side.add_gpg(b"key", "alice@example.org", memid=7, multiple=1)
    assert web.queue.verified_emails(web.row("gpg", single)) == {"alice@example.org"}
    assert web.queue.verified_emails(web.row("gpg", multiple)) == {"alice@example.org", "alice.work@example.com"}
