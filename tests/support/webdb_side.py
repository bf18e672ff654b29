"""Plays CAcert's web application for the WebDB client tests: writes CSR / key files where
the web app keeps them (files_root/csr/<prefix>/<id // 1000>/<prefix>-<id>.csr) and inserts
rows with the values the web app gives them, then reads back what the daemon wrote."""
from __future__ import annotations

import mailbox
import socket
import sqlite3
import subprocess
import sys
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
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


# -- CAcert's web application, as its PHP code writes the rows ---------------------------------
# includes/account.php and www/gpg.php of CAcertOrg/cacert-devel: the same columns, the same
# order (INSERT, then the request file at generatecertpath()'s name, then UPDATE csr_name),
# and nothing the PHP leaves out (coll_found, `md`, an SPKAC row's subject): those rely on
# MariaDB's sql_mode=''. Files: files_root/csr/..., names `../csr/...` relative to files_root/www.

def xmpp_server_subject(names: list[str]) -> str:
    """account.php's server subject: /CN=<first name>, then for EVERY name a DNS and an
    XmppAddr subjectAltName."""
    return f"/CN={names[0]}" + "".join(f"/subjectAltName=DNS:{n}/subjectAltName=otherName:1.3.6.1.5.5.7.8.5;UTF8:{n}"
                                       for n in names)


def org_prefix(ou: str, o: str, locality: str, st: str, c: str) -> str:
    """account.php's org subjects start with the long attribute names."""
    return (f"/organizationalUnitName={ou}/organizationName={o}/localityName={locality}"
            f"/stateOrProvinceName={st}/countryName={c}")


class CacertWebApp:
    """Inserts as CAcert's PHP code does; `now` is the SQL of NOW() on the backend."""

    def __init__(self, db: WebDb, files_root: Path) -> None:
        self.db = db
        self.files_root = files_root
        self.now = "datetime('now')" if db.dialect == "sqlite" else "NOW()"

    def _insert(self, table: str, values: dict[str, Any], now_columns: tuple[str, ...] = ()) -> int:
        names = [f"`{k}`" for k in values] + [f"`{k}`" for k in now_columns]
        marks = ["?"] * len(values) + [self.now] * len(now_columns)
        self.db.execute(f"INSERT INTO `{table}` ({', '.join(names)}) VALUES ({', '.join(marks)})",
                        tuple(values.values()))
        return int(self.db.query(f"SELECT MAX(id) AS id FROM `{table}`")[0]["id"])

    def certpath(self, kind: str, table: str, row_id: int) -> str:
        """generatecertpath(kind, prefix, id) as the web app stores it: ../csr/client/0/client-5.csr"""
        prefix = PREFIX[table]
        ext = "csr" if kind == "csr" else "crt"
        return f"../{kind}/{prefix}/{row_id // 1000}/{prefix}-{row_id}.{ext}"

    def _write(self, name: str, data: bytes) -> None:
        path = self.files_root / "www" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    # members and organisations
    def member(self, memid: int, email: str, fname: str, language: str = "", awarded: list[int] = (),
               deleted_awards: list[int] = ()) -> None:
        self.db.execute("INSERT INTO users (id, email, fname, lname, language, uniqueID) VALUES (?, ?, ?, ?, ?, ?)",
                        (memid, email, fname, "Example", language, f"uid{memid:040d}"[-40:]))
        self.db.execute("INSERT INTO email (memid, email, hash) VALUES (?, ?, '')", (memid, email))
        for points in awarded:
            self.db.execute("INSERT INTO notary (`from`, `to`, awarded, points, method, `when`) "
                            f"VALUES (1, ?, ?, ?, 'Face to Face Meeting', {self.now})", (memid, points, points))
        for points in deleted_awards:
            self.db.execute("INSERT INTO notary (`from`, `to`, awarded, points, method, `when`, deleted) "
                            f"VALUES (1, ?, ?, ?, 'Face to Face Meeting', {self.now}, {self.now})",
                            (memid, points, points))

    def domain(self, memid: int, domain: str) -> int:
        return self._insert("domains", {"domain": domain, "memid": memid, "hash": ""}, ("created",))

    def organisation(self, orgid: int, o: str, admins: list[int]) -> None:
        self.db.execute("INSERT INTO orginfo (id, O, contact, L, ST, C, comments) VALUES (?, ?, ?, ?, ?, ?, '')",
                        (orgid, o, f"contact@{orgid}.example", "Berlin", "Berlin", "DE"))
        for memid in admins:
            self.db.execute("INSERT INTO org (memid, orgid, masteracc, OU, comments) VALUES (?, ?, 1, 'IT', '')",
                            (memid, orgid))

    # certificate requests (account.php oldid 4, 10/11, org 16/20)
    def client_csr(self, memid: int, subject: str, csr: bytes, rootcert: int = 1, codesign: int = 0,
                   cn: str = "") -> int:
        row_id = self._insert("emailcerts", {"CN": cn, "keytype": "MS", "memid": memid, "subject": subject,
                                             "codesign": codesign, "disablelogin": 0, "rootcert": rootcert},
                              ("created",))
        return self._file("emailcerts", row_id, csr)

    def client_spkac(self, memid: int, emails: list[str], name: str, spkac: str, rootcert: int = 1) -> int:
        """keytype NS: no subject column; the file is `N.emailAddress = ...`, `commonName = ...`, `SPKAC = ...`."""
        row_id = self._insert("emailcerts", {"CN": emails[0], "keytype": "NS", "memid": memid, "codesign": 0,
                                             "disablelogin": 0, "rootcert": rootcert}, ("created",))
        text = "".join(f"{i}.emailAddress = {e}\n" for i, e in enumerate(emails))
        text += f"commonName = {name}\nSPKAC = {spkac}"
        return self._file("emailcerts", row_id, text.encode())

    def server(self, domid: int, names: list[str], csr: bytes, rootcert: int = 1) -> int:
        row_id = self._insert("domaincerts", {"CN": names[0], "domid": domid, "subject": xmpp_server_subject(names),
                                              "rootcert": rootcert}, ("created",))
        return self._file("domaincerts", row_id, csr)

    def org_client(self, orgid: int, subject: str, csr: bytes, rootcert: int, orgadminid: int, ou: str = "IT",
                   codesign: int = 0, cn: str = "") -> int:
        row_id = self._insert("orgemailcerts", {"CN": cn, "keytype": "MS", "orgid": orgid, "subject": subject,
                                                "codesign": codesign, "rootcert": rootcert, "md": "sha256",
                                                "ou": ou, "orgadminid": orgadminid}, ("created",))
        return self._file("orgemailcerts", row_id, csr)

    def org_server(self, orgid: int, subject: str, csr: bytes, rootcert: int, orgadminid: int, type_: str = "",
                   cn: str = "", md: str = "sha256") -> int:
        # `type` is '' unless OCSP was chosen: MariaDB with sql_mode='' stores 0
        row_id = self._insert("orgdomaincerts", {"CN": cn, "orgid": orgid, "subject": subject, "rootcert": rootcert,
                                                 "md": md, "type": type_, "orgadminid": orgadminid},
                              ("created",))
        return self._file("orgdomaincerts", row_id, csr)

    def _file(self, table: str, row_id: int, data: bytes) -> int:
        name = self.certpath("csr", table, row_id)
        self._write(name, data)
        self.db.execute(f"UPDATE `{table}` SET csr_name=? WHERE id=?", (name, row_id))
        return row_id

    def renew_start(self, row_id: int) -> int:
        """account.php's renewal of an emailcerts row, up to the INSERT: the new row names the
        OLD row's csr_name until renew_finish copies the file and updates it."""
        old = self.db.query("SELECT * FROM emailcerts WHERE id=?", (row_id,))[0]
        self.db.execute("UPDATE emailcerts SET renewed='1' WHERE id=?", (row_id,))
        values = {k: old[k] for k in ("memid", "CN", "subject", "keytype", "csr_name", "created", "disablelogin",
                                      "codesign", "rootcert")}
        return self._insert("emailcerts", values, ("modified",))

    def renew_finish(self, old_id: int, new_id: int) -> None:
        old = self.db.query("SELECT csr_name FROM emailcerts WHERE id=?", (old_id,))[0]["csr_name"]
        new = self.certpath("csr", "emailcerts", new_id)
        self._write(new, (self.files_root / "www" / old).read_bytes())
        self.db.execute("UPDATE emailcerts SET csr_name=? WHERE id=?", (new, new_id))

    def issued_by_old_signer(self, memid: int, cert_pem: bytes, rootcert: int) -> int:
        """An emailcerts row as the old signer (client.pl) left it: its CSR and certificate
        files named from the id, `serial` upper-case hex, `expire` the certificate's notAfter."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        row_id = self._insert("emailcerts", {"CN": cn, "keytype": "MS", "memid": memid, "subject": f"/CN={cn}",
                                             "codesign": 0, "disablelogin": 0, "rootcert": rootcert},
                              ("created",))
        self._file("emailcerts", row_id, b"(the CSR the old signer signed)")
        crt = self.certpath("crt", "emailcerts", row_id)
        self._write(crt, cert_pem)
        self.db.execute("UPDATE emailcerts SET crt_name=?, serial=?, expire=? WHERE id=?",
                        (crt, f"{cert.serial_number:X}", cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"),
                         row_id))
        return row_id

    def revoke(self, table: str, row_id: int) -> None:
        self.db.execute(f"UPDATE `{table}` SET `revoked`='1970-01-01 10:00:01' WHERE `id`=?", (row_id,))

    def gpg(self, memid: int, email: str, key: bytes, multiple: int = 1) -> int:
        """www/gpg.php: the row, then the key file (only the uids it accepted left on it)."""
        row_id = self._insert("gpg", {"memid": memid, "email": email, "level": 1, "expires": 0,
                                      "multiple": multiple, "keyid": "0000000000000000"})
        name = self.certpath("csr", "gpg", row_id)
        self._write(name, key)
        self.db.execute("UPDATE gpg SET csr=? WHERE id=?", (name, row_id))
        return row_id

    def row(self, table: str, row_id: int) -> dict[str, Any]:
        return self.db.query(f"SELECT * FROM `{table}` WHERE id=?", (row_id,))[0]


# -- a real SMTP server for the notification mails ----------------------------------------------

class SmtpSink:
    """aiosmtpd as its own process on a loopback port, delivering into a Maildir."""

    def __init__(self, folder: Path) -> None:
        self.maildir = folder / "maildir"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = folder / "smtp.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
                                             "-c", "aiosmtpd.handlers.Mailbox", str(self.maildir)],
                                            stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"aiosmtpd did not start: {self.log.read_text()}") from None
                time.sleep(0.05)

    def messages(self) -> list[EmailMessage]:
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(self.maildir, factory=None, create=False)
        return [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in box.keys()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
