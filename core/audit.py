"""The audit log's hash chain: how an entry is written down and hashed, and how a chain
of entries is verified. Plain functions, no database: core/repository.py stores the
entries (table audit_log) and `signer-admin verify-audit` checks them.

Every signature the signer makes (X.509 issuance, OpenPGP certification, CRL) and every
revocation becomes one entry (seq, at, kind, body, prev_hash, hash), where

    hash = sha256(prev_hash "\\n" seq "\\n" at "\\n" kind "\\n" body), lowercase hex,

prev_hash is the previous entry's hash (GENESIS_HASH, 64 zeros, for entry 1) and body is
canonical JSON. No field can hold a raw newline (canonical JSON escapes it, seq is a
number, at and kind are fixed vocabularies), so the joined text names one entry only.

Changing or inserting an entry breaks the chain at that entry, deleting one at the entry
after it, even when the database's append-only triggers were bypassed. What a chain cannot show by itself is a
rewrite of the entry and of everything after it, or a cut-off tail: that needs the head
hash (AuditReport.last_hash) recorded somewhere else, e.g. in the operator's log book.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64
KINDS = frozenset({"x509_issued", "x509_revoked", "crl_issued", "openpgp_signed"})

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


def verify_chain(rows: Iterable[AuditRow]) -> AuditReport:
    """Check rows (seq, at, kind, body, prev_hash, hash) in seq order, one at a time (a
    cursor streams through without the log ever being in memory). Stops at the first
    entry that breaks the chain: a seq that is not the previous one plus one (entry 1
    first), a prev_hash that is not the previous entry's hash, or a stored hash that is
    not the hash of the entry's own fields."""
    checked, expected_seq, previous_hash = 0, 1, GENESIS_HASH
    for seq, at, kind, body, prev_hash, stored_hash in rows:
        try:  # the fast path, about 3 s per million entries with the database reads
            intact = (seq == expected_seq and prev_hash == previous_hash
                      and entry_hash(prev_hash, seq, at, kind, body) == stored_hash)
        except (TypeError, AttributeError):  # a column of the wrong type
            intact = False
        if not intact:
            problem = _entry_problem(expected_seq, previous_hash,
                                     seq, at, kind, body, prev_hash, stored_hash)
            return AuditReport(False, checked, seq, problem, previous_hash)
        checked, expected_seq, previous_hash = checked + 1, seq + 1, stored_hash
    return AuditReport(True, checked, last_hash=previous_hash)


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
