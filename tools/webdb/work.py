"""From a WebDB row to a signer request, and from the answer back to column values.

Pure functions (no database, no serial port), so every rule is unit-tested on its own:
which rows are work, the request id of a row, the subject and SANs out of CAcert's
`subject` column, the profile and issuer of a row, and which signer errors are worth a retry.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.wire.errors import retry_class
from core.openpgp.packets import OpenPgpError, dearmor, parse_packets
from core.x509.certificate import X509_PARSE_ERRORS, MalformedCsr, load_csr
from tools.webdb.config import ClientConfig, WebDbConfig

CERT_TABLES = ("emailcerts", "domaincerts", "orgemailcerts", "orgdomaincerts")
# The file-name prefix of each table (includes/general.php generatecertpath, client.pl HandleCerts).
FILE_PREFIX = {"emailcerts": "client", "domaincerts": "server", "orgemailcerts": "orgclient",
               "orgdomaincerts": "orgserver", "gpg": "gpg"}
ASSURED_POINTS = 50  # client.pl calculateDays: 730 days from 50 assurance points, else 180
XMPP_OID = "1.3.6.1.5.5.7.8.5"
ALLOWED_HASHES = ("sha256", "sha384", "sha512")

# What an error code says about the request that got it (docs/webdb-client.md#failures):
# "row"    the request itself is wrong: the row fails at once, not retried;
# "retry"  perhaps the row, perhaps not (an unexpected failure): counted, retried after
#          webdb.retry_delay_s, failed after max_attempts, so one odd row cannot stall the rest;
# "wait"   the request did not get through (damaged frame, still in flight): not counted;
# "signer" the signer cannot sign anything now (HSM, repository): rows untouched, back off;
# "setup"  this kind of work does not fit this signer (profile, issuer or command unknown,
#          validity above the profile's): rows untouched, the kind skipped, an operator's job.
# The class of each code is part of the signer's error vocabulary (core/wire/errors.py).


def classify(code: str) -> str:
    return retry_class(code).value  # an unknown, newer code: "retry"


class RowProblem(Exception):
    """The row cannot become a request now. `verdict` as classify() says of error codes:
    "row" (its content is wrong), "retry" (its file is missing: perhaps still on its way),
    "wait" (not yet: a revocation of a row whose certificate is still being issued),
    "setup" (no route for it in the configuration)."""

    def __init__(self, message: str, permanent: bool = True, verdict: str | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict or ("row" if permanent else "retry")

    @property
    def permanent(self) -> bool:
        return self.verdict == "row"


class LocalTrouble(Exception):
    """The daemon's own side fails for every row alike (a folder not readable or writable, a
    full disk): nothing is counted against rows; the daemon backs off."""


# errno values of a missing file (per row) versus a folder or disk the daemon cannot use (all rows)
_MISSING = {errno.ENOENT}


def file_problem(action: str, path: Path, exc: OSError) -> Exception:
    if exc.errno in _MISSING:
        return RowProblem(f"cannot {action} {path}: {exc.strerror}", verdict="retry")
    return LocalTrouble(f"cannot {action} {path}: {exc.strerror or exc}")


@dataclass
class Job:
    """One request for one row; `result` is filled from the signer's answer."""
    table: str
    row_id: int
    action: str  # "sign" or "revoke"
    request_id: str
    command: str
    body: dict[str, Any]
    row: dict[str, Any] = field(repr=False)
    issuer: str = ""
    notes: list[str] = field(default_factory=list)  # what the daemon changed, logged at issuance


def request_id(prefix: str, table: str, row_id: int, action: str) -> str:
    """Stable across restarts: a retried row gets the signer's stored answer, never a second
    certificate."""
    return f"{prefix}:{table}:{int(row_id)}:{action}"


def db_time(iso: str) -> str:
    """ISO 8601 from the signer -> the WebDB's DATETIME text, in UTC."""
    moment = dt.datetime.fromisoformat(iso).astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def now_text() -> str:
    return later(0)


def later(seconds: float) -> str:
    """UTC in the WebDB's DATETIME text form; such texts compare in time order."""
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def row_file(webdb: WebDbConfig, name: Any) -> Path:
    """The file a WebDB row names (csr_name, crt_name, gpg.csr, gpg.crt), which must lie
    inside webdb.files_root: the names come from the web side's database, and the daemon
    must not read or write any other file for it. A relative name starts at
    webdb.names_relative_to (default: files_root); `..` may climb only as far as files_root
    (CAcert's names are `../csr/...`), an absolute name is refused, and so is a symlink on
    the way that leads out of files_root. A refused name is the row's error (RowProblem)."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise RowProblem(f"file name {name!r} is empty or not a path")
    if Path(name).is_absolute():
        raise RowProblem(f"file name {name!r} is absolute; files are named relative to "
                         "webdb.names_relative_to, inside webdb.files_root")
    root = Path(os.path.realpath(webdb.files_root))
    start = Path(os.path.realpath(webdb.names_relative_to or webdb.files_root))
    path = Path(os.path.normpath(start / name))
    if not path.is_relative_to(root):
        raise RowProblem(f"file name {name!r} leads out of webdb.files_root ({root})")
    if not Path(os.path.realpath(path)).is_relative_to(root):
        raise RowProblem(f"file name {name!r} leads out of webdb.files_root ({root}) through a symlink")
    return path


def result_name(webdb: WebDbConfig, table: str, row_id: int) -> str:
    """The certificate (or signed key) file of a row, from its table and id alone as
    client.pl and the web application's generatecertpath() name it:
    files_root/crt/<prefix>/<id // 1000>/<prefix>-<id>.crt, written relative to
    names_relative_to (CAcert: `../crt/...`). Never from csr_name: a renewal inserts its row
    with the OLD row's csr_name first, and a name derived from that would overwrite the
    previous certificate's file."""
    prefix = FILE_PREFIX[table]
    root = os.path.realpath(webdb.files_root)
    start = os.path.realpath(webdb.names_relative_to or webdb.files_root)
    path = os.path.join(root, "crt", prefix, str(int(row_id) // 1000), f"{prefix}-{int(row_id)}.crt")
    return os.path.relpath(path, start)


def parse_subject(text: str, skipped: list[str] | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """CAcert's `subject` column, "/CN=a/emailAddress=b/subjectAltName=email:b", into the
    signer's subject pairs and SAN pairs (in their order). A part whose type has blanks
    around it (`/emailAddress = <hash>`, which the web application adds for SSO
    certificates) is no attribute openssl knew: the old signer skipped it ("Skipping unknown
    subject name attribute") and issued without it, and so does this; it is named in
    `skipped` for the log."""
    subject: list[list[str]] = []
    sans: list[list[str]] = []
    for part in (p for p in text.strip().split("/") if p.strip()):
        raw_key, sep, value = part.partition("=")
        key, value = raw_key.strip(), value.strip()
        if not sep or not key or not value:
            raise RowProblem(f"subject part {part!r} is not TYPE=VALUE")
        if raw_key != key and key != "subjectAltName" and skipped is not None:
            skipped.append(f"subject attribute {part.strip()!r} skipped (blanks around its type, as openssl did)")
            continue
        if key != "subjectAltName":
            subject.append([key, value])
            continue
        for one in (v.strip() for v in value.split(",") if v.strip()):
            sans.append(parse_san(one))
    return subject, sans


def parse_san(text: str) -> list[str]:
    kind, _, value = text.partition(":")
    if kind.lower() in ("email", "dns") and value:
        return [kind.lower(), value]
    match = re.fullmatch(rf"otherName:{re.escape(XMPP_OID)};UTF8:(.+)", text)
    if match:
        return ["xmpp", match.group(1)]
    raise RowProblem(f"subjectAltName {text!r} is not email:, DNS: or an XMPP otherName")


def variant_of(row: dict[str, Any], sans: list[list[str]], table: str = "domaincerts") -> str:
    """client.pl's profile choice: `type` 8 / 9 on any table, then `codesign`. An XMPP name
    picks server-jabber only on personal server rows; the web application puts an XmppAddr
    next to every DNS name, org server rows too, and those stay server-org."""
    if row.get("type") in (8, "8"):
        return "ocsp"
    if row.get("type") in (9, "9"):
        return "timestamp"
    if str(row.get("codesign", 0)) not in ("0", "", "None"):
        return "codesign"
    if table == "domaincerts" and any(kind == "xmpp" for kind, _ in sans):
        return "jabber"
    return ""


def validity_days(table: str, points: int | None) -> int:
    """client.pl's validity: org server 730 days, org client 365, otherwise 730 for a
    member with at least ASSURED_POINTS assurance points and 180 for the others."""
    if table == "orgdomaincerts":
        return 730
    if table == "orgemailcerts":
        return 365
    return 730 if (points or 0) >= ASSURED_POINTS else 180


def issuer_of(config: ClientConfig, route: Any, row: dict[str, Any]) -> str:
    """The issuer the row's `rootcert` names (1 the root, 2 class 3), unless the route fixes one."""
    if route.issuer:
        return route.issuer
    rootcert = row.get("rootcert")
    issuer = config.x509.issuer_for(1 if rootcert in (None, "") else rootcert)
    if issuer is None:
        raise RowProblem(f"rootcert {rootcert!r} names no issuer (x509.rootcerts in the client "
                         "configuration)", verdict="setup")
    return issuer


_SPKAC_LINE = re.compile(r"^\s*(?:\d+\.)?(\w+)\s*=\s*(.*?)\s*$")


def parse_spkac_file(data: bytes) -> tuple[str, list[list[str]]] | None:
    """CAcert's SPKAC request file (includes/account.php, keytype NS): `N.emailAddress = …`
    lines, a `commonName = …` line and an `SPKAC = <base64>` line (an openssl `spkac`
    file). Returns the SignedPublicKeyAndChallenge as base64 text without blanks (the form
    sign_x509's `spkac` takes) and the subject the file names (commonName first, then the
    addresses), or None when the file is no SPKAC file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    fields = [m.groups() for m in map(_SPKAC_LINE.match, text.splitlines()) if m]
    spkac = [value for key, value in fields if key == "SPKAC"]
    if not spkac:
        return None
    if len(spkac) > 1:
        raise RowProblem("the SPKAC file holds more than one SPKAC line")
    text = "".join(spkac[0].split())
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RowProblem("the SPKAC line of the request file is not base64") from None
    names = [["CN", value] for key, value in fields if key == "commonName" and value]
    names += [["emailAddress", value] for key, value in fields if key == "emailAddress" and value]
    return text, names


def read_request_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        # A missing file may still be on its way (shared storage): counted, retried; an
        # unreadable tree is the daemon's problem, not the row's.
        raise file_problem("read the CSR file", path, exc) from None


def read_csr_der(path: Path) -> bytes:
    return csr_der(read_request_file(path), path)


def csr_der(data: bytes, path: Path) -> bytes:
    """A PKCS#10 request (PEM or DER) as DER; anything else is the row's error."""
    if data.lstrip().startswith(b"SPKAC="):
        raise RowProblem("SPKAC (Netscape keygen) requests are not supported; a PKCS#10 CSR is needed")
    try:
        csr = load_csr(data)
    except MalformedCsr as exc:  # every parse failure, a version other than 0 included
        raise RowProblem(f"the CSR file {path} holds no PKCS#10 request (PEM or DER): {exc.message}") from None
    return csr.public_bytes(Encoding.DER)


def x509_job(config: ClientConfig, table: str, row: dict[str, Any], points: int | None = None) -> Job:
    """The sign_x509 request for a certificate row. `points`: the member's assurance points
    (personal tables; they choose the validity)."""
    notes: list[str] = []
    subject, sans = parse_subject(row.get("subject") or "", notes)
    variant = variant_of(row, sans, table)
    route = config.route(table, variant)
    if route is None:
        raise RowProblem(f"no x509 route for table {table} variant {variant or 'default'!r} "
                         "(x509.routes in the client configuration)", verdict="setup")
    issuer = issuer_of(config, route, row)
    path = row_file(config.webdb, row["csr_name"])
    data = read_request_file(path)
    body: dict[str, Any] = {"issuer": issuer, "profile": route.profile}
    spkac = parse_spkac_file(data)
    if spkac is not None:
        # keytype NS: the web application leaves `subject` empty and names it in the file
        body["spkac"], file_subject = spkac
        if not subject and not sans:
            subject = file_subject
    else:
        body["csr"] = csr_der(data, path)
    kept = [pair for pair in subject if pair[0] != "emailAddress" or "@" in pair[1]]
    notes += [f"subject attribute emailAddress={value!r} dropped (not an address: the SSO hash)"
              for key, value in subject if [key, value] not in kept]
    body["subject"], body["sans"] = kept, sans
    # md as the row gives it; '' (what MySQL stores for a value its enum lacks, e.g. sha384)
    # sends none, so the signer's default applies, as openssl's did. md5/sha1 are sent as
    # they are: the signer refuses them with hash_not_allowed and the row says so.
    md = str(row.get("md") or "").strip().lower()
    if md:
        body["hash"] = md
    days = validity_days(table, points)
    body["days"] = min(days, route.days) if route.days is not None else days
    rid = request_id(config.webdb.request_id_prefix, table, row["id"], "sign")
    return Job(table, int(row["id"]), "sign", rid, "sign_x509", body, row, issuer, notes)


def revoke_job(config: ClientConfig, table: str, row: dict[str, Any]) -> Job:
    serial = (row.get("serial") or "").strip()
    if not row.get("crt_name"):
        if int(row.get("warning") or 0) < config.webdb.max_attempts and row.get("csr_name"):
            # Its certificate is still being asked for (or its answer was lost): revoke it
            # once it is written back, rather than leave a certificate nobody revokes.
            raise RowProblem("no certificate written back yet; revoked once it is", verdict="wait")
        raise RowProblem("the row never got a certificate: nothing to revoke")
    if not serial:  # an old row with a certificate file but no serial column value
        serial = serial_from_file(row_file(config.webdb, row["crt_name"]))
    try:
        _, sans = parse_subject(row.get("subject") or "")
    except RowProblem:
        sans = []  # the subject only picks the variant; an old, odd one must not block a revocation
    route = config.route(table, variant_of(row, sans, table)) or config.route(table, "")
    if route is None:
        raise RowProblem(f"no x509 route for table {table}: the issuer is unknown", verdict="setup")
    issuer = issuer_of(config, route, row)
    rid = request_id(config.webdb.request_id_prefix, table, row["id"], "revoke")
    return Job(table, int(row["id"]), "revoke", rid, "revoke_x509",
               {"issuer": issuer, "serial": serial}, row, issuer)


def serial_from_file(path: Path) -> str:
    try:
        data = path.read_bytes()
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data))
    except (OSError, *X509_PARSE_ERRORS) as exc:
        raise RowProblem(f"the row has no serial and its certificate file {path} cannot be read: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    return f"{cert.serial_number:X}"


def key_uids(data: bytes) -> list[str]:
    """The user ids on an OpenPGP key file (armoured or binary), in the key's order."""
    try:
        raw = dearmor(data) if data.lstrip().startswith(b"-----") else data
        packets = parse_packets(raw)
    except (OpenPgpError, ValueError) as exc:
        raise RowProblem(f"the key file is not an OpenPGP key: {exc}") from None
    return [p.body.decode("utf-8", "replace") for p in packets if p.tag == 13]


def uid_is_name_only(uid: str) -> bool:
    """`Name` or `Name (comment)`: no address part at all."""
    return "<" not in uid and "@" not in uid and bool(uid.strip())


def uid_email(uid: str) -> str | None:
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>\s*$", uid) or re.fullmatch(r"\s*(\S+@\S+)\s*", uid)
    return match.group(1).lower() if match else None


def openpgp_job(config: ClientConfig, row: dict[str, Any], emails: set[str]) -> Job:
    """`emails` are the member's addresses the web side has verified (see docs/webdb-client.md).
    The web application (www/gpg.php) keeps on the key only the uids it accepted (a verified
    address, or the member's verified name without an address) and the old signer certified
    every uid left: so are name-only uids here. A uid whose address is not verified is not
    asked for (the web side should have deleted it)."""
    path = row_file(config.webdb, row["csr"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise file_problem("read the key file", path, exc) from None
    uids = [uid for uid in key_uids(data) if uid_is_name_only(uid) or uid_email(uid) in emails]
    if not uids:
        raise RowProblem(f"no user id on the key is name-only or has a verified address "
                         f"({', '.join(sorted(emails))})")
    body: dict[str, Any] = {"key": data, "uids": uids}
    if config.openpgp.days is not None:
        body["days"] = config.openpgp.days
    rid = request_id(config.webdb.request_id_prefix, "gpg", row["id"], "sign")
    return Job("gpg", int(row["id"]), "sign", rid, "sign_openpgp", body, row)


_AUDIT_HASH = re.compile(r"[0-9a-f]{64}")


def audit_head_of(body: Any) -> dict[str, Any] | None:
    """The audit head {"seq", "hash", "node_id"} an answer carries (docs/protocol.md), or
    None when it carries none or a malformed one."""
    head = body.get("audit_head") if isinstance(body, dict) else None
    if not (isinstance(head, dict) and isinstance(head.get("seq"), int)
            and not isinstance(head.get("seq"), bool) and head["seq"] >= 0
            and isinstance(head.get("hash"), str) and _AUDIT_HASH.fullmatch(head["hash"])
            and isinstance(head.get("node_id"), str)):
        return None
    return {"seq": head["seq"], "hash": head["hash"], "node_id": head["node_id"]}


def keep_audit_head(kept: dict[str, dict[str, Any]], head: dict[str, Any], at: str,
                    is_log_end: bool) -> str | None:
    """Keep in `kept` (node_id -> {"seq", "hash", "at"}) the newest audit head seen of each
    signer; return a warning when the signer's log contradicts what was kept: the same seq
    with another hash (rewritten), or, for a head that is the log's end (`health`), a seq
    below the kept one (cut). Answers of one window may arrive in any order, so only the
    log's end can show a cut. The kept head is never lowered: it is what to check with
    `signer-admin verify-audit --head SEQ:HASH`."""
    node, before = head["node_id"], kept.get(head["node_id"])
    if before is None or head["seq"] > before["seq"]:
        kept[node] = {"seq": head["seq"], "hash": head["hash"], "at": at}
        return None
    kept_text = f"{before['seq']}:{before['hash']}"
    if head["seq"] == before["seq"] and head["hash"] != before["hash"]:
        return (f"signer {node}: audit entry {head['seq']} changed its hash (the log was"
                f" rewritten?); check with signer-admin verify-audit --head {kept_text}")
    if is_log_end and head["seq"] < before["seq"]:
        return (f"signer {node}: its audit log ends at entry {head['seq']}, before entry"
                f" {before['seq']} seen at {before['at']} (the log was cut?); check with"
                f" signer-admin verify-audit --head {kept_text}")
    return None
