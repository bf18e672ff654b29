"""Unit tests of the WebDB client daemon's plain modules (tools/webdb: config, work, queue,
schema, db, status): no signer process, no serial link. The WebDB is a real SQLite file that
tests/webdb_side.py fills the way CAcert's web application does.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import shutil
import subprocess
import sys
import sqlite3
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.config import ConfigError
from tools.webdb import config as webdb_config
from tools.webdb.config import (WebDbConfig, X509Route, default_routes, load_client_config,
                                read_password)
from tools.webdb.db import DbUnavailable, WebDb
from tools.files import write_atomically
from tools.webdb.queue import WorkQueue
from tools.webdb.schema import REQUESTS_TABLE, create_statements
from tools.webdb.status import StatusFile, daemon_alive, read_status, status_lines
from tools.webdb.work import (Job, RowProblem, db_time, classify, key_uids, openpgp_job,
                              output_name, parse_san, parse_subject, read_csr_der, request_id,
                              revoke_job, uid_email, variant_of, x509_job)
from tests.webdb_side import client_config, csr_pem, open_web_side

MARKER = "1970-01-01 10:00:01"
ZERO = "0000-00-00 00:00:00"
XMPP_SUBJECT = ("/CN=www.example.org/subjectAltName=DNS:www.example.org"
                "/subjectAltName=otherName:1.3.6.1.5.5.7.8.5;UTF8:chat.example.org")


# -- helpers -------------------------------------------------------------------------------

def write_yaml(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "client.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal_config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"signer": {"device": "/dev/ttyS9"},
                            "webdb": {"driver": "sqlite", "path": "web.sqlite"},
                            "state_dir": "state"}
    for section, value in overrides.items():
        data[section] = {**data.get(section, {}), **value} if isinstance(value, dict) else value
    return data


class Web:
    """A SQLite WebDB with the web side, the loaded client config and a WorkQueue on it."""

    def __init__(self, folder: Path, webdb: dict[str, Any] | None = None, **sections: Any) -> None:
        # retry_delay_s 0: a failed row is listed again at once (the delay has its own test)
        path = client_config(folder, "/dev/no-signer",
                             {"driver": "sqlite", "path": str(folder / "webdb.sqlite"), "retry_delay_s": 0,
                              **(webdb or {})},
                             **sections)
        self.side = open_web_side(path)
        self.config = load_client_config(path)
        self.queue = WorkQueue(self.config, self.side.db)
        self.root = Path(self.config.webdb.files_root)

    def row(self, table: str, row_id: int) -> dict[str, Any]:
        return self.side.row(table, row_id)

    def book(self, table: str, row_id: int, action: str) -> dict[str, Any] | None:
        return self.side.bookkeeping(table, row_id, action)

    def ids(self, rows: list[dict[str, Any]]) -> list[int]:
        return [r["id"] for r in rows]

    def close(self) -> None:
        self.side.db.close()


@pytest.fixture
def web(tmp_path: Path):
    w = Web(tmp_path)
    yield w
    w.close()


def local_job(web: Web, table: str, row_id: int, action: str = "sign") -> Job:
    """The Job the daemon builds for a row it could not turn into a request."""
    rid = request_id(web.config.webdb.request_id_prefix, table, row_id, action)
    return Job(table, row_id, action, rid, "", {}, web.row(table, row_id))


def issued_row(web: Web, table: str = "emailcerts", subject: str = "/CN=Alice/emailAddress=a@example.org",
               **columns: Any) -> int:
    """A row whose certificate was issued earlier (serial and crt_name set)."""
    row_id = web.side.add_certificate(table, subject, **columns)
    web.side.db.execute(f"UPDATE `{table}` SET crt_name=?, serial=? WHERE id=?",
                        (f"crt/x/{row_id}.crt", "0A1B2C", row_id))
    return row_id


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# -- config --------------------------------------------------------------------------------

def test_minimal_config_loads_with_defaults_and_paths_resolved_against_its_folder(tmp_path):
    config = load_client_config(write_yaml(tmp_path, minimal_config(webdb={"files_root": "www"})))
    assert config.webdb.path == str(tmp_path / "web.sqlite")
    assert config.state_dir == str(tmp_path / "state")
    assert config.webdb.files_root == str(tmp_path / "www")
    assert config.webdb.max_attempts == 3
    assert config.webdb.revoke_marker == MARKER
    assert config.x509.routes == default_routes()
    assert config.source == str((tmp_path / "client.yaml").resolve())
    assert config.route("domaincerts", "ocsp") == X509Route("domaincerts", "ocsp", "root", "ocsp")
    assert config.route("orgdomaincerts", "codesign") is None


@pytest.mark.parametrize("overrides, key", [
    ({"webdb": {"colour": "blue"}}, "webdb.colour: unknown key"),
    ({"webdb": {"password": "s3cret"}}, "webdb.password: unknown key"),  # never in the YAML
    ({"colour": "blue"}, "colour: unknown key"),
    ({"webdb": {"driver": "postgres"}}, "webdb.driver: expected 'sqlite' or 'mysql'"),
    ({"webdb": {"driver": "sqlite", "path": None}}, "webdb.path: required"),
    ({"webdb": {"driver": "mysql"}}, "webdb.password_env or webdb.password_file: one is required"),
    ({"webdb": {"batch": "many"}}, "webdb.batch: expected an integer"),
    ({"webdb": {"max_attempts": 0}}, "webdb: poll_interval_s must be > 0"),
    ({"webdb": {"request_id_prefix": "a:b"}}, "webdb.request_id_prefix:"),
    ({"signer": {"backoff_initial_s": 5, "backoff_max_s": 1}}, "signer: expected 0 < backoff_initial_s"),
    ({"x509": {"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root"},
                          {"table": "emailcerts", "profile": "client-org", "issuer": "class3"}]}},
     "x509.routes[1]: a second route for emailcerts"),
    ({"x509": {"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root",
                           "variant": "fancy"}]}}, "x509.routes[0].variant: expected one of"),
    ({"x509": {"routes": [{"table": "gpg", "profile": "client", "issuer": "root"}]}},
     "x509.routes[0].table: expected one of"),
    ({"x509": {"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root", "days": 0}]}},
     "x509.routes[0].days: expected a positive"),
    ({"x509": {"routes": [{"table": "emailcerts", "issuer": "root"}]}}, "x509.routes[0].profile: missing"),
    ({"crl": {"issuers": [{"issuer": "root", "file": "revoke.crl"},
                          {"issuer": "class3", "file": "sub/class3.crl"}]}},
     "crl.issuers[1].file: a file name, not a path"),
    ({"crl": {"issuers": [{"issuer": "root", "file": ".."}]}}, "crl.issuers[0].file:"),
])
def test_config_errors_name_the_dotted_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as caught:
        load_client_config(write_yaml(tmp_path, minimal_config(**overrides)))
    assert str(caught.value).startswith(key), str(caught.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_client_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("webdb: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_client_config(bad)


def test_mysql_config_with_password_env_loads_and_has_no_password_field(tmp_path):
    config = load_client_config(write_yaml(tmp_path, minimal_config(
        webdb={"driver": "mysql", "path": None, "password_env": "WEBDB_UNIT_PW"})))
    assert config.webdb.driver == "mysql" and config.webdb.password_env == "WEBDB_UNIT_PW"
    assert "password" not in {f for f in WebDbConfig.__dataclass_fields__}


def test_password_from_env_then_file(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    both = WebDbConfig(driver="mysql", password_env="WEBDB_UNIT_PW", password_file=str(secret_file))
    monkeypatch.setenv("WEBDB_UNIT_PW", "from-env")
    assert read_password(both) == "from-env"
    monkeypatch.setenv("WEBDB_UNIT_PW", "")  # empty counts as unset: the file is used
    assert read_password(both) == "from-file"
    monkeypatch.delenv("WEBDB_UNIT_PW")
    assert read_password(both) == "from-file"
    assert read_password(WebDbConfig(driver="mysql", password_file=str(secret_file))) == "from-file"


def test_password_missing_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WEBDB_UNIT_PW", raising=False)
    with pytest.raises(ConfigError) as caught:
        read_password(WebDbConfig(driver="mysql", password_env="WEBDB_UNIT_PW"))
    assert str(caught.value).startswith("webdb.password_env:") and "WEBDB_UNIT_PW" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        read_password(WebDbConfig(driver="mysql", password_file=str(tmp_path / "nope")))
    assert str(caught.value).startswith("webdb.password_file: cannot read")


def test_a_jabber_route_can_be_configured(tmp_path):
    config = load_client_config(write_yaml(tmp_path, minimal_config(x509={"routes": [
        {"table": "domaincerts", "profile": "server", "issuer": "root"},
        {"table": "domaincerts", "profile": "server-jabber", "issuer": "root", "variant": "jabber"}]})))
    assert config.route("domaincerts", "jabber").profile == "server-jabber"


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


@pytest.mark.parametrize("name, suffix, expected", [
    ("csr/client/0/client-5.csr", ".crt", "crt/client/0/client-5.crt"),
    ("csr/gpg/1/gpg-1234.csr", ".crt", "crt/gpg/1/gpg-1234.crt"),
    ("/var/www/cacert/csr/server/0/server-7.csr", ".crt", "/var/www/cacert/crt/server/0/server-7.crt"),
    # only the innermost `csr` folder is the request folder
    ("/srv/csr/www/csr/client/0/client-5.csr", ".crt", "/srv/csr/www/crt/client/0/client-5.crt"),
    ("requests/client-5.csr", ".pem", "requests/client-5.pem"),
    ("csr/client/0/request.der", ".crt", "crt/client/0/request.der.crt"),
])
def test_output_name(name, suffix, expected):
    assert output_name(name, suffix) == expected


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
    assert variant_of(row, sans) == variant


@pytest.mark.parametrize("code, verdict", [
    ("malformed_csr", "row"), ("hash_not_allowed", "row"), ("request_id_conflict", "row"),
    ("unknown_serial", "row"), ("openpgp_no_uid", "row"), ("bad_request", "row"),
    ("internal_error", "retry"), ("handler_unavailable", "retry"), ("duplicate_serial", "retry"),
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
    ("emailcerts", {"codesign": 1}, "client-codesign", "class3"),
    ("domaincerts", {}, "server", "root"),
    ("domaincerts", {"type": 8}, "ocsp", "root"),
    ("domaincerts", {"type": 9}, "timestamp", "root"),
    ("orgemailcerts", {}, "client-org", "class3"),
    ("orgemailcerts", {"codesign": 1}, "client-codesign", "class3"),
    ("orgdomaincerts", {}, "server-org", "class3"),
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
    assert "days" not in job.body


@pytest.mark.parametrize("md, expected", [("sha512", "sha512"), ("SHA384", "sha384"), ("sha1", "sha1"),
                                          ("md5", "md5"), (None, "sha256"), ("", "sha256")])
def test_x509_job_passes_md_as_hash(web, md, expected):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    row = {**web.row("emailcerts", row_id), "md": md}
    assert x509_job(web.config, "emailcerts", row).body["hash"] == expected


def test_x509_job_schema_default_md_is_sha512(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    assert x509_job(web.config, "emailcerts", web.row("emailcerts", row_id)).body["hash"] == "sha512"


def test_x509_job_route_days_and_prefix(tmp_path):
    w = Web(tmp_path, webdb={"request_id_prefix": "pre"},
            x509={"routes": [{"table": "emailcerts", "profile": "client", "issuer": "root", "days": 90}]})
    try:
        row_id = w.side.add_certificate("emailcerts", "/CN=Alice")
        job = x509_job(w.config, "emailcerts", w.row("emailcerts", row_id))
        assert job.body["days"] == 90 and job.request_id == f"pre:emailcerts:{row_id}:sign"
        other = w.side.add_certificate("domaincerts", "/CN=a.example.org")
        with pytest.raises(RowProblem, match="no x509 route for table domaincerts") as caught:
            x509_job(w.config, "domaincerts", w.row("domaincerts", other))
        assert caught.value.permanent is True
    finally:
        w.close()


def test_x509_job_without_route_for_the_variant(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice", type=8)
    with pytest.raises(RowProblem, match="no x509 route") as caught:
        x509_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    assert caught.value.permanent is True


def test_x509_job_missing_csr_file_is_not_permanent(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    (web.root / web.row("emailcerts", row_id)["csr_name"]).unlink()
    with pytest.raises(RowProblem) as caught:
        x509_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    assert caught.value.permanent is False


def test_x509_job_absolute_csr_name(web, tmp_path):
    csr_file = tmp_path / "elsewhere" / "csr" / "x.csr"
    csr_file.parent.mkdir(parents=True)
    csr_file.write_bytes(csr_pem())
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    row = {**web.row("emailcerts", row_id), "csr_name": str(csr_file)}
    assert x509_job(web.config, "emailcerts", row).body["csr"] == read_csr_der(csr_file)


def test_x509_job_for_an_xmpp_row_uses_the_server_jabber_profile(web):
    row_id = web.side.add_certificate("domaincerts", XMPP_SUBJECT)
    job = x509_job(web.config, "domaincerts", web.row("domaincerts", row_id))
    assert (job.body["profile"], job.body["issuer"]) == ("server-jabber", "root")
    assert job.body["sans"] == [["dns", "www.example.org"], ["xmpp", "chat.example.org"]]
    issued_at = issued_row(web, "domaincerts", XMPP_SUBJECT)  # and it can be revoked at its issuer
    assert revoke_job(web.config, "domaincerts", web.row("domaincerts", issued_at)).body["issuer"] == "root"


@pytest.mark.parametrize("table, columns, issuer", [
    ("emailcerts", {}, "root"),
    ("emailcerts", {"codesign": 1}, "class3"),
    ("domaincerts", {"type": 8}, "root"),
    ("orgdomaincerts", {}, "class3"),
])
def test_revoke_job(web, table, columns, issuer):
    row_id = issued_row(web, table, "/CN=a.example.org", **columns)
    job = revoke_job(web.config, table, {**web.row(table, row_id), "serial": " 0A1B2C "})
    assert job.command == "revoke_x509" and job.action == "revoke" and job.issuer == issuer
    assert job.body == {"issuer": issuer, "serial": "0A1B2C"}
    assert job.request_id == f"webdb:{table}:{row_id}:revoke"


@pytest.mark.parametrize("serial, crt_name", [("", "crt/x.crt"), ("   ", "crt/x.crt"), (None, "crt/x.crt"),
                                               ("0A1B", "")])
def test_revoke_job_refuses_rows_without_a_certificate(web, serial, crt_name):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    row = {**web.row("emailcerts", row_id), "serial": serial, "crt_name": crt_name}
    with pytest.raises(RowProblem, match="no issued certificate") as caught:
        revoke_job(web.config, "emailcerts", row)
    assert caught.value.permanent is True


# -- OpenPGP -------------------------------------------------------------------------------

ALICE = "Alice <alice@example.org>"
ALICE_WORK = "Alice Work <Alice.Work@Example.COM>"


@pytest.fixture(scope="module")
def gpg_key():
    """An ed25519 key made by gpg with two user ids: (armoured, binary)."""
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed")
    home = tempfile.mkdtemp(prefix="wdu-", dir="/tmp")  # short: gpg-agent's socket path

    def gpg(*args: str) -> bytes:
        result = subprocess.run(["gpg", "--batch", "--no-tty", "--yes", "--homedir", home,
                                 "--pinentry-mode", "loopback", "--passphrase", "", *args],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout

    try:
        gpg("--quick-gen-key", ALICE, "ed25519", "default", "never")
        gpg("--quick-add-uid", "alice@example.org", ALICE_WORK)
        yield gpg("--armor", "--export", "alice@example.org"), gpg("--export", "alice@example.org")
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


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
        with pytest.raises(RowProblem, match="no user id on the key has a verified address") as caught:
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
        assert web.queue.fail(job, f"cannot read the CSR file ({attempt})", permanent=False) == attempt
        assert web.row("emailcerts", row_id)["warning"] == attempt
        book = web.book("emailcerts", row_id, "sign")
        assert (book["state"], book["attempts"]) == (state, attempt)
        assert book["last_error"] == f"cannot read the CSR file ({attempt})"
        assert book["request_id"] == job.request_id and book["done_at"] is None
        assert (row_id in web.ids(web.queue.pending_certificates("emailcerts", 10))) is (attempt < 3)
    # warning stays within max_attempts even if the row is failed once more
    assert web.queue.fail(job, "again", permanent=False) == 4
    assert web.row("emailcerts", row_id)["warning"] == 3
    assert web.book("emailcerts", row_id, "sign")["state"] == "failed"


def test_permanent_failure_uses_up_all_attempts_at_once(web):
    row_id = web.side.add_certificate("domaincerts", "/CN=a.example.org")
    other = web.side.add_certificate("domaincerts", "/CN=b.example.org")
    job = local_job(web, "domaincerts", row_id)
    assert web.queue.fail(job, "bad_csr: not a CSR", permanent=True) == 3
    assert web.row("domaincerts", row_id)["warning"] == 3
    assert web.row("domaincerts", other)["warning"] == 0
    book = web.book("domaincerts", row_id, "sign")
    assert (book["state"], book["attempts"], book["last_error"]) == ("failed", 3, "bad_csr: not a CSR")
    assert web.ids(web.queue.pending_certificates("domaincerts", 10)) == [other]


def test_permanent_failure_after_a_transient_one(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=a")
    job = local_job(web, "emailcerts", row_id)
    web.queue.fail(job, "missing file", permanent=False)
    assert web.queue.fail(job, "refused", permanent=True) == 3
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
    assert web.queue.fail(job, "missing file", permanent=False) == 1
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
    assert web.queue.fail(job, "unknown_serial: not issued here", permanent=True) == 3
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
        assert web.queue.fail(job, "subject unparsable", permanent=False) == attempt
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


def test_store_certificate_keeps_an_absolute_folder(web, tmp_path):
    csr_file = tmp_path / "shared" / "csr" / "server" / "0" / "server-1.csr"
    csr_file.parent.mkdir(parents=True)
    csr_file.write_bytes(csr_pem())
    row_id = web.side.add_certificate("domaincerts", "/CN=a.example.org")
    web.side.db.execute("UPDATE domaincerts SET csr_name=? WHERE id=?", (str(csr_file), row_id))
    job = x509_job(web.config, "domaincerts", web.row("domaincerts", row_id))
    assert web.queue.store_certificate(job, PEM, "01", "2027-01-01T00:00:00+00:00")
    target = tmp_path / "shared" / "crt" / "server" / "0" / "server-1.crt"
    assert web.row("domaincerts", row_id)["crt_name"] == str(target)
    assert target.read_bytes() == PEM


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


# -- schema and db -------------------------------------------------------------------------

TABLES = {"emailcerts", "domaincerts", "orgemailcerts", "orgdomaincerts", "gpg", "email"}


def test_sqlite_schema_creates_the_tables_with_cacert_defaults():
    conn = sqlite3.connect(":memory:")
    statements = create_statements("sqlite")
    assert len(statements) == len(TABLES)
    for statement in statements:
        assert "enum(" not in statement and "int(11)" not in statement
        conn.execute(statement)
    conn.execute(REQUESTS_TABLE)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES | {"signer_client_requests"} <= names
    columns = {r[1] for r in conn.execute("PRAGMA table_info(emailcerts)")}
    assert {"id", "memid", "codesign", "serial", "subject", "csr_name", "crt_name", "revoked", "expire",
            "warning", "md", "type", "rootcert"} <= columns
    assert "codesign" not in {r[1] for r in conn.execute("PRAGMA table_info(domaincerts)")}
    conn.execute("INSERT INTO emailcerts (subject) VALUES ('/CN=x')")
    row = conn.execute("SELECT id, crt_name, revoked, warning, md, type FROM emailcerts").fetchone()
    assert row == (1, "", ZERO, 0, "sha512", None)
    conn.execute("INSERT INTO gpg (email) VALUES ('a@example.org')")
    assert conn.execute("SELECT crt, csr, warning, issued FROM gpg").fetchone() == ("", "", 0, ZERO)
    # idempotent
    for statement in statements:
        conn.execute(statement)


def test_mysql_schema_keeps_cacert_types():
    statements = create_statements("mysql")
    assert len(statements) == len(TABLES)
    email = next(s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS `emailcerts`"))
    assert "`id` int(11) NOT NULL AUTO_INCREMENT" in email
    assert "PRIMARY KEY (`id`)" in email
    assert "`md` enum('md5','sha1','sha256','sha512') NOT NULL DEFAULT 'sha512'" in email
    assert "`revoked` datetime NOT NULL DEFAULT '0000-00-00 00:00:00'" in email
    assert email.endswith(") DEFAULT CHARSET=latin1")
    assert all("AUTOINCREMENT" not in s for s in statements)


def test_webdb_sqlite_query_execute_and_bookkeeping_table(tmp_path):
    db = WebDb(WebDbConfig(driver="sqlite", path=str(tmp_path / "w.sqlite")))
    db.create_dev_tables()
    assert db.query("SELECT COUNT(*) AS n FROM signer_client_requests") == [{"n": 0}]
    db.execute("INSERT INTO gpg (email, csr) VALUES (?, ?)", ("a@example.org", "csr/gpg/0/gpg-1.csr"))
    assert db.execute("UPDATE gpg SET warning=1 WHERE warning=?", (0,)) == 1
    assert db.execute("UPDATE gpg SET warning=1 WHERE warning=?", (0,)) == 0
    assert db.query("SELECT email, warning FROM gpg WHERE id=?", (1,)) == [{"email": "a@example.org", "warning": 1}]
    db.close()
    assert db.connection is None


def test_webdb_statement_failure_is_db_unavailable_and_reconnects(tmp_path):
    db = WebDb(WebDbConfig(driver="sqlite", path=str(tmp_path / "w.sqlite")))
    db.connect()
    with pytest.raises(DbUnavailable, match="WebDB statement failed"):
        db.query("SELECT * FROM no_such_table")
    assert db.connection is None
    assert db.query("SELECT 1 AS one") == [{"one": 1}]
    db.close()


def test_webdb_cannot_connect(tmp_path):
    db = WebDb(WebDbConfig(driver="sqlite", path=str(tmp_path / "no" / "such" / "dir" / "w.sqlite")))
    with pytest.raises(DbUnavailable, match="cannot connect to the WebDB"):
        db.connect()
    assert db.connection is None


class FakeCursor:
    def __init__(self, conn: "FakeConnection") -> None:
        self.conn = conn
        self.description = [("a",), ("b",), ("c",)]
        self.rowcount = 1

    def execute(self, sql: str, params: tuple) -> None:
        if self.conn.fail:
            raise RuntimeError("server has gone away")
        self.conn.statements.append((sql, params))

    def fetchall(self):
        return [(dt.datetime(2026, 11, 27, 10, 0, 1), b"caf\xe9", 7)]


class FakeConnection:
    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple]] = []
        self.fail = False
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


def test_mysql_placeholders_and_plain_values():
    db = WebDb(WebDbConfig(driver="mysql", password_env="X"))
    assert db.dialect == "mysql"
    db.connection = fake = FakeConnection()
    rows = db.query("SELECT a, b, c FROM `gpg` WHERE id=? AND crt=?", (1, ""))
    assert fake.statements == [("SELECT a, b, c FROM `gpg` WHERE id=%s AND crt=%s", (1, ""))]
    assert rows == [{"a": "2026-11-27 10:00:01", "b": "café", "c": 7}]
    assert db.execute("UPDATE gpg SET warning=? WHERE id=?", (2, 1)) == 1
    assert fake.statements[-1][0] == "UPDATE gpg SET warning=%s WHERE id=%s"
    fake.fail = True
    with pytest.raises(DbUnavailable, match="RuntimeError: server has gone away"):
        db.execute("UPDATE gpg SET warning=? WHERE id=?", (2, 1))
    assert fake.closed and db.connection is None


def test_sqlite_keeps_question_marks():
    db = WebDb(WebDbConfig(driver="sqlite", path=":memory:"))
    db.connection = fake = FakeConnection()
    db.query("SELECT a FROM t WHERE x=?", (1,))
    assert fake.statements == [("SELECT a FROM t WHERE x=?", (1,))]


def test_mysql_connect_uses_the_password_from_env(monkeypatch):
    seen: dict[str, Any] = {}

    def connect(**kwargs: Any) -> FakeConnection:
        seen.update(kwargs)
        return FakeConnection()

    monkeypatch.setitem(sys.modules, "pymysql", types.SimpleNamespace(connect=connect))
    monkeypatch.setenv("WEBDB_UNIT_PW", "pw-from-env")
    db = WebDb(WebDbConfig(driver="mysql", host="db.example", port=3307, database="cacert",
                           user="signer", password_env="WEBDB_UNIT_PW"))
    db.connect()
    assert (seen["host"], seen["port"], seen["user"], seen["database"]) == ("db.example", 3307, "signer", "cacert")
    assert seen["password"] == "pw-from-env" and seen["autocommit"] is True
    assert db.connection.statements[0][0] == REQUESTS_TABLE  # the bookkeeping table is ensured


def test_mysql_connect_failure_is_db_unavailable(monkeypatch):
    def connect(**kwargs: Any):
        raise ConnectionRefusedError("refused")

    monkeypatch.setitem(sys.modules, "pymysql", types.SimpleNamespace(connect=connect))
    monkeypatch.setenv("WEBDB_UNIT_PW", "pw")
    db = WebDb(WebDbConfig(driver="mysql", password_env="WEBDB_UNIT_PW"))
    with pytest.raises(DbUnavailable, match="cannot connect to the WebDB: ConnectionRefusedError"):
        db.connect()
    assert db.connection is None


# -- status --------------------------------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_file_round_trip(tmp_path):
    state = tmp_path / "state"
    status = StatusFile(state)
    status.update(queue={"emailcerts.sign": 2}, signer={"reachable": True, "since": "2026-11-27 10:00:00"})
    status.error("emailcerts 5: bad_csr: not a CSR")
    status.write()
    data = read_status(state)
    assert data["pid"] == os.getpid() and data["running"] is True
    assert data["queue"] == {"emailcerts.sign": 2}
    assert data["last_error"]["message"] == "emailcerts 5: bad_csr: not a CSR"
    assert isinstance(data["updated_unix"], float) and data["updated_at"]
    assert [p.name for p in state.iterdir()] == ["status.json"]
    assert daemon_alive(data, 60) is True
    lines = status_lines(data, daemon_alive(data, 60))
    assert lines[0].startswith(f"daemon: running (pid {os.getpid()}")
    assert lines[-1] == f"last error: {data['last_error']['at']} emailcerts 5: bad_csr: not a CSR"


def test_read_status_missing_or_garbage(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None


@pytest.mark.parametrize("status", [
    {"running": False, "pid": os.getpid()},
    {"running": True},
    {"running": True, "pid": "abc"},
])
def test_daemon_alive_false(status):
    assert daemon_alive(status, 60) is False


def test_daemon_alive_false_for_a_dead_pid():
    assert daemon_alive({"running": True, "pid": dead_pid(), "updated_unix": time.time()}, 60) is False
    assert daemon_alive({"running": True, "pid": os.getpid(), "updated_unix": time.time() - 120}, 60) is False  # stale


def test_status_lines_signer_away_queue_and_last_error():
    status = {"pid": 4242, "started_at": "2026-11-27 09:00:00", "updated_at": "2026-11-27 10:00:00",
              "signer": {"reachable": False, "since": "2026-11-27 09:59:00", "reason": "cannot open /dev/ttyS9"},
              "health": None,
              "queue": {"emailcerts.sign": 2, "domaincerts.sign": 0, "gpg.sign": 1},
              "counters": {"issued": 5, "failed": 1},
              "crl": {"root": {"number": 12, "at": "2026-11-27 09:30:00", "file": "/crl/revoke.crl"}},
              "last_error": {"at": "2026-11-27 09:59:00", "message": "signer away: cannot open /dev/ttyS9"}}
    lines = status_lines(status, alive=False)
    text = "\n".join(lines)
    assert lines[0].startswith("daemon: NOT running (pid 4242")
    assert lines[1] == "signer: AWAY since 2026-11-27 09:59:00 (cannot open /dev/ttyS9)"
    assert "last health: none yet" in lines
    assert "queue: 3 rows waiting\n  emailcerts.sign: 2\n  gpg.sign: 1" in lines
    assert "domaincerts.sign" not in text
    assert "done since start: failed 1, issued 5" in lines
    assert "crl root: number 12 at 2026-11-27 09:30:00 -> /crl/revoke.crl" in lines
    assert lines[-1] == "last error: 2026-11-27 09:59:00 signer away: cannot open /dev/ttyS9"


def test_status_lines_reachable_unhealthy_nothing_queued():
    status = {"pid": 1, "signer": {"reachable": True, "since": "2026-11-27 10:00:00", "reason": "old"},
              "health": {"at": "2026-11-27 10:00:00", "healthy": False, "version": "1.0", "node_id": "a",
                         "problems": ["hsm: token missing"]},
              "queue": {}, "counters": {}, "last_error": None}
    lines = status_lines(status, alive=True)
    assert lines[1] == "signer: reachable since 2026-11-27 10:00:00"
    assert "last health 2026-11-27 10:00:00: UNHEALTHY, version 1.0, node a" in lines
    assert "  problem: hsm: token missing" in lines
    assert "queue: 0 rows waiting" in lines
    assert "done since start: nothing" in lines
    assert lines[-1] == "last error: none"


def test_status_json_is_what_status_lines_reads(tmp_path):
    status = StatusFile(tmp_path)
    status.update(running=False)
    status.write()
    data = json.loads((tmp_path / "status.json").read_text())
    assert daemon_alive(data, 60) is False
    assert status_lines(data, daemon_alive(data, 60))[0].startswith("daemon: NOT running")


def test_config_module_tables_match_work_tables():
    from tools.webdb.work import CERT_TABLES
    assert webdb_config.TABLES == CERT_TABLES


def test_a_counted_failure_delays_the_row_by_retry_delay_s(tmp_path):
    for delay, due in ((0, True), (3600, False)):
        (tmp_path / str(delay)).mkdir()
        w = Web(tmp_path / str(delay), webdb={"retry_delay_s": delay})
        row_id = w.side.add_certificate("emailcerts", "/CN=a")
        w.queue.fail(local_job(w, "emailcerts", row_id), "cannot read the CSR file", permanent=False)
        assert (w.ids(w.queue.pending_certificates("emailcerts", 10)) == [row_id]) is due
        assert w.queue.depth()["emailcerts.sign"] == 1
