"""Plays CAcert's web application for the WebDB client tests: writes CSR / key files where
the web app keeps them (files_root/csr/<prefix>/<id // 1000>/<prefix>-<id>.csr) and inserts
rows with the values the web app gives them, then reads back what the daemon wrote."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tools.webdb.config import load_client_config
from tools.webdb.db import WebDb

PREFIX = {"emailcerts": "client", "domaincerts": "server", "orgemailcerts": "orgclient",
          "orgdomaincerts": "orgserver", "gpg": "gpg"}
KEY = ec.generate_private_key(ec.SECP256R1())  # one key for all CSRs: fast, and allowed


def csr_pem(common_name: str = "ignored") -> bytes:
    """The subject of the CSR does not matter: the signer takes it from the row."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    return builder.sign(KEY, hashes.SHA256()).public_bytes(Encoding.PEM)


class WebSide:
    def __init__(self, db: WebDb, files_root: Path) -> None:
        self.db = db
        self.files_root = files_root

    def _request_file(self, table: str, row_id: int, data: bytes) -> str:
        prefix = PREFIX[table]
        name = f"csr/{prefix}/{row_id // 1000}/{prefix}-{row_id}.csr"
        path = self.files_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return name

    def add_certificate(self, table: str, subject: str, csr: bytes | None = None,
                        **columns: Any) -> int:
        """Insert the row first (the id names the file), then the file, then csr_name: the
        order of CAcert's account.php, so the daemon never sees a csr_name without a file."""
        owner = {"emailcerts": "memid", "domaincerts": "domid"}.get(table, "orgid")
        values = {owner: 7, "subject": subject, "created": "2026-11-27 10:00:00", **columns}
        names = ", ".join(f"`{k}`" for k in values)
        self.db.execute(f"INSERT INTO `{table}` ({names}) VALUES ({', '.join('?' * len(values))})",
                        tuple(values.values()))
        row_id = self.db.query(f"SELECT MAX(id) AS id FROM `{table}`")[0]["id"]
        name = self._request_file(table, row_id, csr_pem() if csr is None else csr)
        self.db.execute(f"UPDATE `{table}` SET csr_name=? WHERE id=?", (name, row_id))
        return row_id

    def add_gpg(self, key: bytes, email: str, memid: int = 7, multiple: int = 0) -> int:
        self.db.execute("INSERT INTO gpg (memid, email, multiple) VALUES (?, ?, ?)", (memid, email, multiple))
        row_id = self.db.query("SELECT MAX(id) AS id FROM gpg")[0]["id"]
        self.db.execute("UPDATE gpg SET csr=? WHERE id=?", (self._request_file("gpg", row_id, key), row_id))
        return row_id

    def add_email(self, memid: int, email: str, verified: bool = True) -> None:
        self.db.execute("INSERT INTO email (memid, email, hash) VALUES (?, ?, ?)",
                        (memid, email, "" if verified else "pending-hash"))

    def request_revocation(self, table: str, row_id: int, marker: str = "1970-01-01 10:00:01") -> None:
        self.db.execute(f"UPDATE `{table}` SET revoked=? WHERE id=?", (marker, row_id))

    def row(self, table: str, row_id: int) -> dict[str, Any]:
        return self.db.query(f"SELECT * FROM `{table}` WHERE id=?", (row_id,))[0]

    def bookkeeping(self, table: str, row_id: int, action: str) -> dict[str, Any] | None:
        found = self.db.query("SELECT * FROM signer_client_requests WHERE tbl=? AND row_id=? AND action=?",
                              (table, row_id, action))
        return found[0] if found else None

    def certificate(self, table: str, row_id: int) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.files_root / self.row(table, row_id)["crt_name"]).read_bytes())


def client_config(folder: Path, device: str, webdb: dict[str, Any], **sections: Any) -> Path:
    """A client YAML for the tests: fast polling, CRLs published into folder/crl."""
    config = {"signer": {"device": device, "timeout_s": 60, "backoff_initial_s": 0.5, "backoff_max_s": 2},
              "webdb": {"files_root": str(folder / "www"), "poll_interval_s": 0.3, "batch": 20, **webdb},
              "state_dir": str(folder / "state"),
              "crl": {"publish_dir": str(folder / "crl"), "interval_s": 600,
                      "issuers": [{"issuer": "root", "file": "revoke.crl"},
                                  {"issuer": "class3", "file": "class3-revoke.crl"}]},
              "health": {"interval_s": 2}}
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value}
    path = folder / "client.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def open_web_side(config_path: Path) -> WebSide:
    config = load_client_config(config_path)
    db = WebDb(config.webdb)
    db.create_dev_tables()
    db.connect()
    return WebSide(db, Path(config.webdb.files_root))


def issued_serials(repository: Path) -> dict[str, list[str]]:
    """request id -> serials of the certificates issued for it, from the signer's own repository."""
    with sqlite3.connect(f"file:{repository}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT request_id, serial FROM certificates WHERE status='issued'").fetchall()
    found: dict[str, list[str]] = {}
    for request_id, serial in rows:
        found.setdefault(request_id, []).append(serial)
    return found
