"""Start-up, wiring and status messages between system.py, the Supervisor and its children."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StartSigner:
    """system.py -> Supervisor: create every actor from this configuration."""
    config: Any  # core.runtime.config.SignerConfig


@dataclass(frozen=True)
class SignerStarted:
    """Supervisor -> system.py: every actor configured (ok) or the start-up errors."""
    ok: bool
    errors: list[str] = field(default_factory=list)
    supervisor_pid: int = 0  # `signer run` watches it: the Supervisor's death ends the signer


@dataclass(frozen=True)
class Configure:
    """Supervisor -> child: the configuration and the address book of its peers.

    Sent again whenever a peer is re-created, so every actor always holds live addresses.
    """
    name: str
    config: Any
    addresses: dict[str, Any]
    first: bool = True  # False when re-sent only to refresh addresses
    down: tuple[str, ...] = ()  # children that exited and are not configured again yet


@dataclass(frozen=True)
class Configured:
    """Child -> Supervisor: the child is ready, or why it is not."""
    name: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class ActorStatusRequest:
    tag: int


@dataclass(frozen=True)
class ActorStatusReply:
    tag: int
    record: dict[str, Any]


@dataclass(frozen=True)
class SystemStatusRequest:
    """signer-admin -> Supervisor: one record per actor, plus the supervisor's own."""


@dataclass(frozen=True)
class SystemStatusReply:
    records: list[dict[str, Any]]
