"""The WebDB side's files (issue 11.6): atomic writes never follow a planted symlink, and a
WebDB row can make the daemon read or write only files inside webdb.files_root."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import tools.client.files
from tools.client.files import write_atomically
from tools.webdb.config import ConfigError, load_client_config
from tools.webdb.queue import WorkQueue
from tools.webdb.work import RowProblem, openpgp_job, revoke_job, x509_job
from tests.support import webdb_fixtures
from tests.support.webdb_fixtures import issued_row
from tests.support.webdb_side import client_config, csr_pem

web = webdb_fixtures.web
PEM = b"-----BEGIN CERTIFICATE-----\nissued\n-----END CERTIFICATE-----\n"
VICTIM = b"root-owned content\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


# -- write_atomically ------------------------------------------------------------------------

def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path, monkeypatch):
    target, attacked = tmp_path / "pub" / "revoke.crl", victim(tmp_path)
    target.parent.mkdir()
    # The name the old code used (pid-based) and the random name drawn first, as if the
    # attacker had guessed it too: neither is written through.
    guessed = iter(["0123456789abcdef", "fedcba9876543210"])
    monkeypatch.setattr(tools.client.files.secrets, "token_hex", lambda n: next(guessed))
    planted = [target.with_name(f".revoke.crl.tmp{os.getpid()}"),
               target.with_name(".revoke.crl.0123456789abcdef.tmp")]
    for link in planted:
        link.symlink_to(attacked)
    write_atomically(target, b"CRL bytes")
    assert attacked.read_bytes() == VICTIM
    assert target.read_bytes() == b"CRL bytes" and not target.is_symlink()
    assert all(link.is_symlink() for link in planted)  # left as they were, not replaced


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    target, attacked = tmp_path / "revoke.crl", victim(tmp_path)
    target.symlink_to(attacked)
    write_atomically(target, b"CRL bytes")
    assert attacked.read_bytes() == VICTIM
    assert target.read_bytes() == b"CRL bytes" and not target.is_symlink()


# -- paths from WebDB rows -------------------------------------------------------------------

def outside_csr(web) -> Path:
    """A valid CSR outside files_root: had the daemon read it, the job would be built."""
    path = web.root.parent / "outside.csr"
    path.write_bytes(csr_pem())
    return path


@pytest.mark.parametrize("name", ["../outside.csr", "csr/../../outside.csr", "ABSOLUTE"])
def test_a_row_naming_a_file_outside_files_root_is_a_row_error(web, name):
    outside = outside_csr(web)
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    row = {**web.row("emailcerts", row_id), "csr_name": str(outside) if name == "ABSOLUTE" else name}
    with pytest.raises(RowProblem, match="files_root|absolute") as caught:
        x509_job(web.config, "emailcerts", row)
    assert caught.value.verdict == "row"


def test_etc_passwd_is_refused_before_anything_is_read(web):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    for name in ("../../etc/passwd", "/etc/passwd"):
        with pytest.raises(RowProblem) as caught:
            x509_job(web.config, "emailcerts", {**web.row("emailcerts", row_id), "csr_name": name})
        # refused for where it points, not because /etc/passwd holds no CSR
        assert "files_root" in str(caught.value) or "absolute" in str(caught.value)
        assert "PKCS#10" not in str(caught.value)


def test_a_symlink_out_of_files_root_is_a_row_error(web):
    outside = outside_csr(web)
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    link = web.root / "csr" / "link.csr"
    link.symlink_to(outside)
    with pytest.raises(RowProblem, match="through a symlink"):
        x509_job(web.config, "emailcerts", {**web.row("emailcerts", row_id), "csr_name": "csr/link.csr"})


def test_revocation_and_openpgp_rows_are_confined_too(web):
    outside_csr(web)
    row_id = issued_row(web)
    row = {**web.row("emailcerts", row_id), "serial": "", "crt_name": "../outside.csr"}
    with pytest.raises(RowProblem, match="files_root"):
        revoke_job(web.config, "emailcerts", row)
    with pytest.raises(RowProblem, match="absolute"):
        openpgp_job(web.config, {"id": 1, "csr": "/etc/passwd"}, {"a@example.org"})


def test_writing_through_a_crt_folder_symlinked_out_of_files_root_is_refused(web, tmp_path):
    row_id = web.side.add_certificate("emailcerts", "/CN=Alice")
    job = x509_job(web.config, "emailcerts", web.row("emailcerts", row_id))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (web.root / "crt").symlink_to(elsewhere)
    with pytest.raises(RowProblem, match="through a symlink"):
        web.queue.store_certificate(job, PEM, "01", "2027-01-01T00:00:00+00:00")
    assert list(elsewhere.rglob("*")) == [] and web.row("emailcerts", row_id)["crt_name"] == ""


def test_cacert_names_climb_from_names_relative_to_within_files_root(tmp_path):
    """CAcert's web app names files `../csr/...` from its www folder."""
    w = webdb_fixtures.Web(tmp_path)
    try:
        www = w.root / "www"
        www.mkdir(parents=True)
        config = dataclasses.replace(w.config, webdb=dataclasses.replace(w.config.webdb,
                                                                          names_relative_to=str(www)))
        queue = WorkQueue(config, w.side.db)
        row_id = w.side.add_certificate("domaincerts", "/CN=a.example.org")
        name = "../" + w.row("domaincerts", row_id)["csr_name"]
        w.side.db.execute("UPDATE domaincerts SET csr_name=? WHERE id=?", (name, row_id))
        job = x509_job(config, "domaincerts", w.row("domaincerts", row_id))
        assert queue.store_certificate(job, PEM, "01", "2027-01-01T00:00:00+00:00")
        crt_name = w.row("domaincerts", row_id)["crt_name"]
        assert crt_name.startswith("../crt/") and (www / crt_name).read_bytes() == PEM
        with pytest.raises(RowProblem, match="files_root"):  # one level more leaves files_root
            x509_job(config, "domaincerts", {**w.row("domaincerts", row_id), "csr_name": "../" + name})
    finally:
        w.close()


def test_names_relative_to_must_lie_inside_files_root(tmp_path):
    path = client_config(tmp_path, "/dev/no-signer", {"driver": "sqlite", "path": str(tmp_path / "w.sqlite"),
                                                      "files_root": "www", "names_relative_to": "other"})
    with pytest.raises(ConfigError, match="names_relative_to: must be webdb.files_root or a folder inside it"):
        load_client_config(path)
