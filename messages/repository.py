"""Messages to the Repository actor, the one owner of the SQLite database.

Each operation is its own dataclass (a subclass of RepoRequest[V]) naming the repository
operation it runs; every one is answered with RepoReply[V](tag, value | error). The fields
are the operation's arguments, so the actor needs no code per message. V is the type of the
reply's value: the store answers plain values (dicts of columns), and the request's
`typed_value` turns them into V (the frozen dataclasses below), so a handler knows what it
gets. They are defined here, in `messages`, because the actor transport unpickles only
classes of `messages` (core/runtime/actor_transport_auth.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypedDict, TypeVar

V = TypeVar("V")

# -- what the operations answer -----------------------------------------------------------


@dataclass(frozen=True)
class StoredRequest:
    """A request id's stored outcome (the `requests` table): the command, the digest of
    its body (actors/handlers/handler.py request_digest) and the answer given."""
    command: str
    request_digest: str
    result: dict[str, Any]

    @classmethod
    def of(cls, raw: Any) -> StoredRequest | None:
        if raw is None or isinstance(raw, cls):
            return raw
        return cls(raw["command"], raw["request_digest"], raw["result"])


@dataclass(frozen=True)
class Revocation:
    """A certificate's (first) revocation, and whether it existed before this request."""
    issuer: str
    serial: str
    reason: int | None
    revoked_at: datetime
    already_revoked: bool

    def body(self) -> dict[str, Any]:
        """The answer to the client (docs/protocol.md, revoke_x509)."""
        return {"issuer": self.issuer, "serial": self.serial, "reason": self.reason,
                "revoked_at": self.revoked_at.isoformat(), "already_revoked": self.already_revoked}


@dataclass(frozen=True)
class CrlRecord:
    """A stored CRL (or one just built), as the CRL handler answers it."""
    issuer: str
    number: int
    der: bytes
    this_update: datetime
    next_update: datetime

    @classmethod
    def of(cls, raw: Any) -> CrlRecord | None:
        if raw is None or isinstance(raw, cls):
            return raw
        return cls(raw["issuer"], raw["number"], raw["der"], raw["this_update"], raw["next_update"])


@dataclass(frozen=True)
class CrlStatus:
    """What the CRL handler needs to decide on a rebuild: the latest CRL, whether it must be
    rebuilt, the revocation set's digest, its entries (only for a rebuild: 100k entries are
    megabytes to pass between processes), the client's base CRL and the number the next
    CRL must exceed (this signer's and the peer's)."""
    latest: CrlRecord | None
    rebuild: bool
    digest: str
    entries: tuple[tuple[int, datetime, int | None], ...] | None  # (serial, revoked_at, reason)
    base: CrlRecord | None
    previous_number: int | None


@dataclass(frozen=True)
class OutboxEvents:
    """Events after a sequence number, decoded, and the newest event's seq."""
    events: tuple[dict[str, Any], ...]
    last_seq: int


@dataclass(frozen=True)
class AppliedEvents:
    """The outcome of ApplyEvents: the first `applied` events were committed (known and
    quarantined ones count), `quarantined` of them refused and parked, `quarantine_total`
    parked in all; `error` the failure that stopped the batch, if any."""
    applied: int
    quarantined: int
    quarantine_total: int
    error: dict[str, str] | None


@dataclass(frozen=True)
class RepoHealthRequest:
    tag: int


class AuditState(TypedDict):
    head: dict[str, Any]  # {seq, hash, node_id}, as RepoReply.audit_head
    sealed_seq: int
    unsealed: int
    seal_error: str | None


class RepoHealth(TypedDict, total=False):
    """The Repository actor's part of `health` (docs/protocol.md, `repository`); the Health
    actor adds `ok` and `error`."""
    quick_check: str
    quick_check_age_s: float
    schema_version: int
    counts: dict[str, int]
    last_event_seq: int
    path: str
    audit: AuditState


@dataclass(frozen=True)
class RepoHealthReply:
    tag: int
    health: RepoHealth
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class RepoRequest(Generic[V]):
    tag: int
    operation: ClassVar[str] = ""

    def arguments(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tag"}

    def typed_value(self, raw: Any) -> V:
        """The reply's value from what the operation returned (operations whose value is
        None, a string or a number need no conversion)."""
        return raw  # type: ignore[no-any-return,unused-ignore]  # strict elsewhere


@dataclass(frozen=True)
class RepoReply(Generic[V]):
    tag: int
    value: V | None = None
    error: dict[str, str] | None = None
    # The audit head {"seq", "hash", "node_id"} when the operation appended audit entries
    # (a state change a client is answered about), else None.
    audit_head: dict[str, Any] | None = None


@dataclass(frozen=True)
class LookupRequest(RepoRequest[StoredRequest | None]):
    """The stored outcome of a client request id, or None."""
    request_id: str
    operation: ClassVar[str] = "lookup_request"

    def typed_value(self, raw: Any) -> StoredRequest | None:
        return StoredRequest.of(raw)


@dataclass(frozen=True)
class ReserveSerial(RepoRequest[None]):
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
class LookupOrReserve(ReserveSerial, RepoRequest[StoredRequest | None]):
    """LookupRequest and ReserveSerial in one transaction (ReserveSerial's fields): the
    stored outcome of the request id (then nothing is reserved), or None once the serial is
    reserved for it."""
    operation: ClassVar[str] = "lookup_or_reserve"

    def typed_value(self, raw: Any) -> StoredRequest | None:  # type: ignore[override]
        return StoredRequest.of(raw)


@dataclass(frozen=True)
class CompleteCertificate(RepoRequest[None]):
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
class DiscardReservation(RepoRequest[None]):
    issuer: str
    serial_hex: str
    operation: ClassVar[str] = "discard_reservation"


@dataclass(frozen=True)
class RevokeCertificate(RepoRequest[Revocation]):
    issuer: str
    serial_hex: str
    reason: int | None
    revoked_at: datetime
    request_id: str | None
    operation: ClassVar[str] = "revoke"

    def typed_value(self, raw: Any) -> Revocation:
        if isinstance(raw, Revocation):
            return raw
        return Revocation(raw["issuer"], raw["serial"], raw["reason"], raw["revoked_at"],
                          raw["already_revoked"])


@dataclass(frozen=True)
class CrlState(RepoRequest[CrlStatus]):
    """What the CRL handler needs to decide on a rebuild (see actors/owners/repository.py)."""
    issuer: str
    now: datetime
    grace_s: float
    max_age_s: float
    base_number: int | None
    operation: ClassVar[str] = "crl_state"

    def typed_value(self, raw: Any) -> CrlStatus:
        if isinstance(raw, CrlStatus):
            return raw
        entries = raw["entries"]
        return CrlStatus(CrlRecord.of(raw["latest"]), raw["rebuild"], raw["digest"],
                         None if entries is None else tuple(entries), CrlRecord.of(raw["base"]),
                         raw["previous_number"])


@dataclass(frozen=True)
class StoreCrl(RepoRequest[None]):
    issuer: str
    number: int
    der: bytes
    this_update: datetime
    next_update: datetime
    revocation_digest: str
    keep: int
    operation: ClassVar[str] = "store_crl"


@dataclass(frozen=True)
class StoreOpenPgpSignature(RepoRequest[None]):
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
class Outbox(RepoRequest[OutboxEvents]):
    """Events after `after_seq` (at most `limit`) and the newest event seq."""
    after_seq: int
    limit: int
    operation: ClassVar[str] = "outbox"

    def typed_value(self, raw: Any) -> OutboxEvents:
        if isinstance(raw, OutboxEvents):
            return raw
        return OutboxEvents(tuple(raw["events"]), raw["last_seq"])


@dataclass(frozen=True)
class GetSyncState(RepoRequest[str | None]):
    key: str
    operation: ClassVar[str] = "get_sync_state"


@dataclass(frozen=True)
class SetSyncState(RepoRequest[None]):
    key: str
    value: str
    operation: ClassVar[str] = "set_sync_state"


@dataclass(frozen=True)
class ApplyEvents(RepoRequest[AppliedEvents]):
    """A peer's events, applied in order, each idempotently in its own transaction."""
    events: list[dict[str, Any]]
    operation: ClassVar[str] = "apply_events"

    def typed_value(self, raw: Any) -> AppliedEvents:
        if isinstance(raw, AppliedEvents):
            return raw
        return AppliedEvents(raw["applied"], raw["quarantined"], raw["quarantine_total"], raw["error"])
