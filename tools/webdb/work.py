"""From a WebDB row to a signer request, and from the answer back to column values.

Pure functions (no database, no serial port), so every rule is unit-tested on its own:
which rows are work, the request id of a row, the subject and SANs out of CAcert's
`subject` column, the profile and issuer of a row, and which signer errors are worth a retry.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.openpgp_packets import OpenPgpError, dearmor, parse_packets
from core.x509build import X509_PARSE_ERRORS, MalformedCsr, load_csr
from tools.webdb.config import ClientConfig, WebDbConfig

CERT_TABLES = ("emailcerts", "domaincerts", "orgemailcerts", "orgdomaincerts")
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
ROW_CODES = {"bad_request", "malformed_csr", "bad_csr_signature", "key_too_weak", "key_type_not_allowed",
             "attribute_not_allowed", "san_type_not_allowed", "hash_not_allowed", "lint_failed",
             "invalid_reason", "unknown_serial", "request_id_conflict", "limit_exceeded"}
WAIT_CODES = {"duplicate_request", "handler_unavailable", "bad_cobs", "bad_crc", "frame_too_short", "frame_too_large",
              "bad_msgpack", "bad_envelope"}
SIGNER_CODES = {"repository_error", "crl_build_failed", "signature_invalid", "timeout"}
SETUP_CODES = {"unknown_profile", "unknown_issuer", "unknown_command", "unsupported_version",
               "validity_too_long"}


def classify(code: str) -> str:
    if code in ROW_CODES or code.startswith("openpgp_"):
        return "row"
    if code in WAIT_CODES:
        return "wait"
    if code in SIGNER_CODES or code.startswith("hsm_"):
        return "signer"
    if code in SETUP_CODES:
        return "setup"
    return "retry"  # internal_error, duplicate_serial, and any new code


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


def output_name(input_name: str, suffix: str) -> str:
    """Where the web application looks for the result of the request file `input_name`: as the
    old client did, the `csr` folder becomes `crt` and `.csr` becomes `suffix`."""
    parts = list(Path(input_name).parts)
    if "csr" in parts:
        parts[len(parts) - 1 - parts[::-1].index("csr")] = "crt"
    path = Path(*parts)
    stem = path.name[:-4] if path.name.endswith(".csr") else path.name
    return str(path.with_name(stem + suffix))


def parse_subject(text: str) -> tuple[list[list[str]], list[list[str]]]:
    """CAcert's `subject` column, "/CN=a/emailAddress=b/subjectAltName=email:b", into the
    signer's subject pairs and SAN pairs (in their order)."""
    subject: list[list[str]] = []
    sans: list[list[str]] = []
    for part in (p for p in text.strip().split("/") if p.strip()):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise RowProblem(f"subject part {part!r} is not TYPE=VALUE")
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


def variant_of(row: dict[str, Any], sans: list[list[str]]) -> str:
    if row.get("type") in (8, "8"):
        return "ocsp"
    if row.get("type") in (9, "9"):
        return "timestamp"
    if str(row.get("codesign", 0)) not in ("0", "", "None"):
        return "codesign"
    if any(kind == "xmpp" for kind, _ in sans):
        return "jabber"
    return ""


def read_csr_der(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        # A missing file may still be on its way (shared storage): counted, retried; an
        # unreadable tree is the daemon's problem, not the row's.
        raise file_problem("read the CSR file", path, exc) from None
    if data.lstrip().startswith(b"SPKAC="):
        raise RowProblem("SPKAC (Netscape keygen) requests are not supported; a PKCS#10 CSR is needed")
    try:
        csr = load_csr(data)
    except MalformedCsr as exc:  # every parse failure, a version other than 0 included
        raise RowProblem(f"the CSR file {path} holds no PKCS#10 request (PEM or DER): {exc.message}") from None
    return csr.public_bytes(Encoding.DER)


def x509_job(config: ClientConfig, table: str, row: dict[str, Any]) -> Job:
    subject, sans = parse_subject(row.get("subject") or "")
    variant = variant_of(row, sans)
    route = config.route(table, variant)
    if route is None:
        raise RowProblem(f"no x509 route for table {table} variant {variant or 'default'!r} "
                         "(x509.routes in the client configuration)", verdict="setup")
    body: dict[str, Any] = {"issuer": route.issuer, "profile": route.profile,
                            "csr": read_csr_der(row_file(config.webdb, row["csr_name"])),
                            "subject": subject, "sans": sans}
    md = (row.get("md") or "sha256").lower()
    # md5/sha1 are sent as they are: the signer refuses them with hash_not_allowed, and the
    # row says so, rather than silently getting another hash than the one asked for.
    body["hash"] = md
    if route.days is not None:
        body["days"] = route.days
    rid = request_id(config.webdb.request_id_prefix, table, row["id"], "sign")
    return Job(table, int(row["id"]), "sign", rid, "sign_x509", body, row, route.issuer)


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
    route = config.route(table, variant_of(row, sans)) or config.route(table, "")
    if route is None:
        raise RowProblem(f"no x509 route for table {table}: the issuer is unknown", verdict="setup")
    rid = request_id(config.webdb.request_id_prefix, table, row["id"], "revoke")
    return Job(table, int(row["id"]), "revoke", rid, "revoke_x509",
               {"issuer": route.issuer, "serial": serial}, row, route.issuer)


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


def uid_email(uid: str) -> str | None:
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>\s*$", uid) or re.fullmatch(r"\s*(\S+@\S+)\s*", uid)
    return match.group(1).lower() if match else None


def openpgp_job(config: ClientConfig, row: dict[str, Any], emails: set[str]) -> Job:
    """`emails` are the member's addresses the web side has verified (see docs/webdb-client.md)."""
    path = row_file(config.webdb, row["csr"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise file_problem("read the key file", path, exc) from None
    uids = [uid for uid in key_uids(data) if uid_email(uid) in emails]
    if not uids:
        raise RowProblem(f"no user id on the key has a verified address ({', '.join(sorted(emails))})")
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
