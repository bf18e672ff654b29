"""Messages to and from the Sync actor (the bridge to NATS JetStream)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SyncStatusRequest:
    tag: int


@dataclass
class SyncStatusReply:
    tag: int
    status: dict[str, Any]
    error: dict[str, str] | None = None
