"""Messages to and from the Sync actor (the bridge to NATS JetStream)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from messages.repository import RepoRequest


@dataclass(frozen=True)
class EventsCommitted:
    """Repository -> Sync: the event log grew to `last_seq`; `events` are every event with
    a seq in (`after_seq`, `last_seq`] (at most PUSH_LIMIT, in seq order; None: not said).
    Sync publishes them at once when they continue what it holds (else it reads its
    outbox), so replication lag is bounded by the work, not by a timer or a second
    repository round trip."""
    last_seq: int
    events: tuple[dict[str, Any], ...] = ()
    after_seq: int | None = None


@dataclass(frozen=True)
class SyncStatusRequest:
    tag: int


@dataclass(frozen=True)
class SyncStatusReply:
    tag: int
    status: dict[str, Any]
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class QuarantineCount(RepoRequest[int]):
    """How many peer events sit in the repository's sync_quarantine."""
    operation: ClassVar[str] = "quarantine_count"
