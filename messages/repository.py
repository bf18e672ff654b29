"""Messages to the Repository actor, the one owner of the SQLite database.

Each operation is its own dataclass (a subclass of RepoRequest) naming the repository
operation it runs; every one is answered with RepoReply(tag, value | error). The fields
are the operation's arguments, so the actor needs no code per message.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


@dataclass(frozen=True)
class RepoHealthRequest:
    tag: int


@dataclass(frozen=True)
class RepoHealthReply:
    tag: int
    health: dict[str, Any]
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class RepoRequest:
    tag: int
    operation: ClassVar[str] = ""

    def arguments(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tag"}


@dataclass(frozen=True)
class RepoReply:
    tag: int
    value: Any = None
    error: dict[str, str] | None = None
    # The audit head {"seq", "hash", "node_id"} when the operation appended audit entries
    # (a state change a client is answered about), else None.
    audit_head: dict[str, Any] | None = None


@dataclass(frozen=True)
class LookupRequest(RepoRequest):
    """The stored outcome of a client request id, or None."""
    request_id: str
    operation: ClassVar[str] = "lookup_request"


@dataclass(frozen=True)
class ReserveSerial(RepoRequest):
    """Record a serial before its certificate is signed, so it can never be issued twice."""
    issuer: str
    serial_hex: str
    request_id: str
    profile: str
    subject: str
    not_before: datetime
    not_after: datetime
    operation: ClassVar[str] = "reserve_serial"


@dataclass(frozen=True)
class LookupOrReserve(ReserveSerial):
    """LookupRequest and ReserveSerial in one transaction (ReserveSerial's fields): the
    stored outcome of the request id (then nothing is reserved), or None once the serial is
    reserved for it."""
    operation: ClassVar[str] = "lookup_or_reserve"


@dataclass(frozen=True)
class CompleteCertificate(RepoRequest):
    """Store the signed certificate, the request's result and an x509_issued event."""
    issuer: str
    serial_hex: str
    der: bytes
    request_id: str
    command: str
    request_digest: str
    result: dict[str, Any]
    operation: ClassVar[str] = "complete_certificate"


@dataclass(frozen=True)
class DiscardReservation(RepoRequest):
    issuer: str
    serial_hex: str
    operation: ClassVar[str] = "discard_reservation"


@dataclass(frozen=True)
class RevokeCertificate(RepoRequest):
    issuer: str
    serial_hex: str
    reason: int | None
    revoked_at: datetime
    request_id: str | None
    operation: ClassVar[str] = "revoke"


@dataclass(frozen=True)
class CrlState(RepoRequest):
    """What the CRL handler needs to decide on a rebuild (see actors/owners/repository.py)."""
    issuer: str
    now: datetime
    grace_s: float
    max_age_s: float
    base_number: int | None
    operation: ClassVar[str] = "crl_state"


@dataclass(frozen=True)
class StoreCrl(RepoRequest):
    issuer: str
    number: int
    der: bytes
    this_update: datetime
    next_update: datetime
    revocation_digest: str
    keep: int
    operation: ClassVar[str] = "store_crl"


@dataclass(frozen=True)
class StoreOpenPgpSignature(RepoRequest):
    """Store a certified OpenPGP key, the request's result and an openpgp_signed event."""
    request_id: str
    fingerprint: str
    signed_key: bytes
    uids: list[str]
    expires_at: datetime
    command: str
    request_digest: str
    result: dict[str, Any]
    operation: ClassVar[str] = "store_openpgp_signature"


@dataclass(frozen=True)
class Outbox(RepoRequest):
    """Events after `after_seq` (at most `limit`) and the newest event seq."""
    after_seq: int
    limit: int
    operation: ClassVar[str] = "outbox"


@dataclass(frozen=True)
class GetSyncState(RepoRequest):
    key: str
    operation: ClassVar[str] = "get_sync_state"


@dataclass(frozen=True)
class SetSyncState(RepoRequest):
    key: str
    value: str
    operation: ClassVar[str] = "set_sync_state"


@dataclass(frozen=True)
class ApplyEvents(RepoRequest):
    """A peer's events, applied in order, each idempotently in its own transaction."""
    events: list[dict[str, Any]]
    operation: ClassVar[str] = "apply_events"
