"""Messages to the Hsm actor, the only holder of a PKCS#11 session for its token."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


class AuditKeyState(TypedDict):
    label: str
    present: bool


class HsmHealth(TypedDict, total=False):
    """The Hsm actor's part of `health` (docs/protocol.md, `hsm`): on failure only `token`
    and `logged_in`; the Health actor adds `ok` and `error`."""
    token: str
    logged_in: bool | None
    test_signature_ms: float
    mechanism: str
    audit_key: AuditKeyState
    ok: bool


@dataclass(frozen=True)
class HsmSignRequest:
    tag: int
    key_label: str
    mechanism: str  # e.g. "sha256-rsa-pkcs1", "sha256-ecdsa" (see core.hsm.session)
    data: bytes  # the whole to-be-signed bytes; the token hashes them


@dataclass(frozen=True)
class HsmSignReply:
    tag: int
    signature: bytes | None = None
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class HsmHealthRequest:
    tag: int


@dataclass(frozen=True)
class HsmHealthReply:
    tag: int
    health: HsmHealth
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class HsmSealRequest:
    """Repository -> Hsm: seal the audit log's head (entry `seq`, whose hash is `hash`) with
    the token's audit key. The Hsm actor builds the signed bytes itself
    (core.repository.audit.seal_message), so the audit key can sign nothing but seals."""
    tag: int
    seq: int
    hash: str


@dataclass(frozen=True)
class HsmSealReply:
    tag: int
    seq: int
    hash: str
    sealed_at: str | None = None  # ISO 8601 UTC, part of the signed bytes
    signature: bytes | None = None
    error: dict[str, str] | None = None
