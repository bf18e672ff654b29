"""The audit log's hash chain: how an entry is written down and hashed, and how a chain
of entries is verified. Plain functions, no database: core/repository/store.py stores the
entries (table audit_log) and `signer-admin verify-audit` checks them.

Every signature the signer makes (X.509 issuance, OpenPGP certification, CRL) and every
revocation becomes one entry (seq, at, kind, body, prev_hash, hash), where

    hash = sha256(prev_hash "\\n" seq "\\n" at "\\n" kind "\\n" body), lowercase hex,

prev_hash is the previous entry's hash (GENESIS_HASH, 64 zeros, for entry 1) and body is
canonical JSON. No field can hold a raw newline (canonical JSON escapes it, seq is a
number, at and kind are fixed vocabularies), so the joined text names one entry only.

Changing or inserting an entry breaks the chain at that entry, deleting one at the entry
after it, even when the database's append-only triggers were bypassed. What a chain cannot
show by itself is a rewrite of the entry and of everything after it (anyone can recompute
sha256), or a cut-off tail. Two things close that gap (docs/decisions/0002-audit-seals-on-the-hsm.md):

- seals: the Hsm actor signs the head (seq, hash) with the token's audit key, which signs
  nothing else and never leaves the token; a seal is stored in audit_seals. A rewritten
  entry no longer has the hash a seal names, a cut log lacks the sealed entry, and only
  the token can make a new seal (seal_message, verify_sealed_chain);
- heads kept elsewhere: every state-changing answer and `health` carry the head
  {seq, hash}; the WebDB daemon keeps the latest, and `signer-admin verify-audit --head
  SEQ:HASH` fails when that entry is no longer in the log.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

GENESIS_HASH = "0" * 64
KINDS = frozenset({"x509_issued", "x509_revoked", "crl_issued", "openpgp_signed", "x509_imported"})

AuditRow = tuple[int, str, str, str, str, str]  # (seq, at, kind, body, prev_hash, hash)


def canonical_body(fields: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces; bytes become base64 text. ASCII only
    (json's \\u escapes), so the UTF-8 the hash reads is the text itself."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      default=_bytes_as_base64)


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"an audit body cannot hold a {type(value).__name__}")


def sha256_hex(data: bytes) -> str:
    """How a body names a blob (a DER, a signed key) instead of carrying it."""
    return hashlib.sha256(data).hexdigest()


# What an entry records of each kind of event: these fields of the event body, and of its
# blobs only their sha256 (the blob itself stays in its repository table).
_RECORDED_FIELDS = {
    "x509_issued": ("issuer", "serial", "request_id", "profile", "subject", "not_before",
                    "not_after"),
    "x509_revoked": ("issuer", "serial", "reason", "revoked_at", "request_id"),
    "crl_issued": ("issuer", "number", "this_update", "next_update", "revocation_digest"),
    "openpgp_signed": ("request_id", "fingerprint", "uids", "expires_at"),
    "x509_imported": ("issuer", "serial", "subject", "not_before", "not_after", "revoked_at",
                      "reason", "imported_from"),
}
_HASHED_BLOBS = {"der": "der_sha256", "signed_key": "signed_key_sha256"}


def event_summary(kind: str, event_body: Mapping[str, Any], origin_node: str,
                  event_id: str) -> dict[str, Any]:
    """The audit body of an event, the same whether this signer made the event or
    applied it from the peer: origin_node is the signer that acted, event_id links the
    entry to the event log. Fields the event lacks (events of older releases) are left
    out rather than invented."""
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not an audited kind")
    summary: dict[str, Any] = {name: event_body[name] for name in _RECORDED_FIELDS[kind]
                               if name in event_body}
    for blob, name in _HASHED_BLOBS.items():
        if isinstance(event_body.get(blob), bytes):
            summary[name] = sha256_hex(event_body[blob])
    return summary | {"origin_node": origin_node, "event_id": event_id}


def entry_hash(prev_hash: str, seq: int, at: str, kind: str, body: str) -> str:
    text = "\n".join((prev_hash, str(seq), at, kind, body))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditReport:
    """ok: the whole chain verified. entries_checked: entries found good, in seq order
    (when broken, those before first_bad_seq). first_bad_seq/problem: the first entry
    that breaks the chain and why (None when ok). last_hash: the hash of the last good
    entry (GENESIS_HASH if none), the value to record elsewhere to detect a rewrite."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    last_hash: str = GENESIS_HASH


class _ChainWalk:
    """verify_chain one entry at a time, so a caller can check more per entry (seals)."""

    def __init__(self) -> None:
        self.checked, self.expected_seq, self.previous_hash = 0, 1, GENESIS_HASH

    def accept(self, row: AuditRow) -> str | None:
        """None if the row continues the chain, else why it does not."""
        seq, at, kind, body, prev_hash, stored_hash = row
        try:  # the fast path, about 3 s per million entries with the database reads
            intact = (seq == self.expected_seq and prev_hash == self.previous_hash
                      and entry_hash(prev_hash, seq, at, kind, body) == stored_hash)
        except (TypeError, AttributeError):  # a column of the wrong type
            intact = False
        if not intact:
            return _entry_problem(self.expected_seq, self.previous_hash, *row)
        self.checked, self.expected_seq, self.previous_hash = (self.checked + 1, seq + 1,
                                                               stored_hash)
        return None

    def report(self, bad_seq: Any = None, problem: str | None = None) -> AuditReport:
        return AuditReport(problem is None, self.checked, bad_seq, problem, self.previous_hash)


def resume_chain(seq: int, head_hash: str) -> _ChainWalk:
    """A walk that continues after entry `seq` whose hash is head_hash (known good)."""
    walk = _ChainWalk()
    walk.expected_seq, walk.previous_hash = seq + 1, head_hash
    return walk


def verify_chain(rows: Iterable[AuditRow]) -> AuditReport:
    """Check rows (seq, at, kind, body, prev_hash, hash) in seq order, one at a time (a
    cursor streams through without the log ever being in memory). Stops at the first
    entry that breaks the chain: a seq that is not the previous one plus one (entry 1
    first), a prev_hash that is not the previous entry's hash, or a stored hash that is
    not the hash of the entry's own fields."""
    walk = _ChainWalk()
    for row in rows:
        problem = walk.accept(row)
        if problem is not None:
            return walk.report(row[0], problem)
    return walk.report()


def _entry_problem(expected_seq: int, previous_hash: str, seq: Any, at: Any, kind: Any,
                   body: Any, prev_hash: Any, stored_hash: Any) -> str:
    """Why an entry failed the fast path, checked in the order a reader needs."""
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"seq is a {type(seq).__name__}, not an integer"
    if seq != expected_seq:
        if seq > expected_seq:
            missing = (f"entry {expected_seq}" if seq == expected_seq + 1
                       else f"entries {expected_seq} to {seq - 1}")
            after = (f"seq {seq} follows {expected_seq - 1}" if expected_seq > 1
                     else f"the log starts at seq {seq}")
            return f"{missing} missing ({after})"
        return f"seq {seq} is out of order (expected {expected_seq})"
    fields = (at, kind, body, prev_hash, stored_hash)
    if not all(isinstance(field, str) for field in fields):
        return "a column is not text"
    if prev_hash != previous_hash:
        before = f"entry {seq - 1}'s hash" if seq > 1 else "the genesis hash (64 zeros)"
        return f"prev_hash {prev_hash[:16]}... is not {before} {previous_hash[:16]}..."
    recomputed = entry_hash(prev_hash, seq, at, kind, body)
    if recomputed != stored_hash:
        return (f"stored hash {stored_hash[:16]}... is not the hash of the entry's"
                f" contents {recomputed[:16]}... (the entry was changed)")
    return "the entry does not verify"  # not reached: one of the checks above failed


# -- seals: the head signed by the token's audit key --------------------------------------

SEAL_DOMAIN = "CAcert signer audit seal v1"  # no other signature of the key can read as a seal
SEAL_CURVE = ec.SECP256R1
SEAL_MECHANISM = "sha256-ecdsa"  # core.hsm.session's name for what seal_signature_ok checks
MAX_SEAL_PROBLEMS = 20  # enough to act on, not a flood
_HEAD_FORM = re.compile(r"([0-9]+):([0-9a-f]{64})")

SealRow = tuple[int, str, str, bytes]  # (seq, hash, sealed_at, signature)


def seal_message(seq: int, head_hash: str, sealed_at: str) -> bytes:
    """The bytes the audit key signs for a seal of entry `seq` whose hash is head_hash."""
    return "\n".join((SEAL_DOMAIN, str(seq), head_hash, sealed_at)).encode("ascii")


def load_seal_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The audit public key (PEM SubjectPublicKeyInfo); ValueError if it is not P-256."""
    key = load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, SEAL_CURVE):
        raise ValueError("the audit public key must be an EC P-256 key")
    return key


def seal_signature_ok(public_key: ec.EllipticCurvePublicKey, seq: int, head_hash: str,
                      sealed_at: str, signature: bytes) -> bool:
    try:
        public_key.verify(bytes(signature), seal_message(seq, head_hash, sealed_at),
                          ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def parse_head(text: str) -> tuple[int, str]:
    """"SEQ:HASH" (as `signer-client status` shows it) -> (seq, hash); ValueError if not."""
    match = _HEAD_FORM.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not SEQ:HASH (a number, a colon, 64 hex digits)")
    return int(match.group(1)), match.group(2)


@dataclass(frozen=True)
class SealedAuditReport:
    """verify_sealed_chain's findings. chain: the hash chain (AuditReport). seals_checked:
    seals whose signature verified and whose hash is the entry's. last_sealed_seq: the
    newest such seal (0: none). unsealed_entries: intact entries after it (not an error by
    itself: the newest entries wait for their seal, or the token lacks the audit key).
    seal_problems: forged seals, seals naming another hash (a rewrite) or a missing entry
    (a cut). head/head_problem: the head asked for with --head and why it is not in the log."""

    chain: AuditReport
    seals_checked: int = 0
    last_sealed_seq: int = 0
    unsealed_entries: int = 0
    seal_problems: list[str] = field(default_factory=list)
    head: str | None = None
    head_problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.seal_problems and self.head_problem is None


def verify_sealed_chain(rows: Iterable[AuditRow], seals: Iterable[SealRow],
                        public_key: ec.EllipticCurvePublicKey,
                        head: tuple[int, str] | None = None) -> SealedAuditReport:
    """The chain as verify_chain checks it, and with it, streaming both in seq order: every
    seal's signature, that the entry it names exists and has its hash, and that `head`
    (seq, hash) is an entry of the log. Stops at the first break of the chain."""
    walk = _ChainWalk()
    problems: list[str] = []
    seal_iter: Iterator[SealRow] = iter(seals)
    seal = next(seal_iter, None)
    chain_report, head_problem = None, None
    seals_checked, last_sealed = 0, 0
    for row in rows:
        problem = walk.accept(row)
        if problem is not None:
            chain_report = walk.report(row[0], problem)
            break
        seq, entry = row[0], row[5]
        while seal is not None and seal[0] <= seq:
            if _seal_problem(seal, seq, entry, public_key, problems) is None:
                seals_checked, last_sealed = seals_checked + 1, seq
            seal = next(seal_iter, None)
        if head is not None and seq == head[0] and entry != head[1]:
            head_problem = (f"head {head[0]}:{head[1][:16]}... is not in the log: entry"
                            f" {seq} now has hash {entry[:16]}... (the log was rewritten)")
    if chain_report is None:
        chain_report = walk.report()
        last_seq = walk.expected_seq - 1
        while seal is not None:  # seals beyond the last entry: the log's tail is gone
            _note(problems, f"seal of entry {seal[0]}: the log ends at entry {last_seq}"
                            " (entries after it were cut)")
            seal = next(seal_iter, None)
        if head is not None and head[0] > last_seq:
            head_problem = (f"head {head[0]}:{head[1][:16]}... is not in the log: it ends at"
                            f" entry {last_seq} (entries were cut)")
    return SealedAuditReport(
        chain_report, seals_checked, last_sealed,
        walk.checked - last_sealed if chain_report.ok else 0, problems,
        None if head is None else f"{head[0]}:{head[1]}", head_problem)


def _seal_problem(seal: SealRow, seq: int, entry: str, public_key: ec.EllipticCurvePublicKey,
                  problems: list[str]) -> str | None:
    """Why the seal does not hold for entry `seq` (hash `entry`), noted in problems; None
    if it holds. A seal naming a seq the walk passed over (not a positive integer in the
    chain's range) names no entry."""
    sealed_seq, sealed_hash, sealed_at, signature = seal
    if sealed_seq != seq:
        problem = f"seal of entry {sealed_seq!r}: no such entry"
    elif not (isinstance(sealed_at, str) and isinstance(signature, (bytes, memoryview))
              and seal_signature_ok(public_key, seq, str(sealed_hash), sealed_at,
                                    bytes(signature))):
        problem = (f"seal of entry {seq}: its signature does not verify with the audit"
                   " public key (a forged seal)")
    elif sealed_hash != entry:
        problem = (f"seal of entry {seq}: it seals hash {str(sealed_hash)[:16]}... but the"
                   f" entry's hash is {entry[:16]}... (the log was rewritten)")
    else:
        return None
    _note(problems, problem)
    return problem


def _note(problems: list[str], problem: str) -> None:
    if len(problems) < MAX_SEAL_PROBLEMS:
        problems.append(problem)
    elif len(problems) == MAX_SEAL_PROBLEMS:
        problems.append(f"... more seal problems (only the first {MAX_SEAL_PROBLEMS} shown)")
