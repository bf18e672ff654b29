"""Messages to and from the Sync actor (the bridge to NATS JetStream)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from messages.repository import RepoRequest


@dataclass(frozen=True)
class EventsCommitted:
    """Repository -> Sync: the event log grew to `last_seq`. Sync publishes at once instead
    of waiting for its next outbox tick, so replication lag is bounded by the work."""
    last_seq: int


@dataclass
class SyncStatusRequest:
    tag: int


@dataclass
class SyncStatusReply:
    tag: int
    status: dict[str, Any]
    error: dict[str, str] | None = None


@dataclass
class QuarantineCount(RepoRequest):
    """How many peer events sit in the repository's sync_quarantine."""
    operation: ClassVar[str] = "quarantine_count"
