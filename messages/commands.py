"""Dispatcher <-> handler messages: one validated client command and its outcome."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommandRequest:
    tag: int  # the Dispatcher's own correlation number (client ids may repeat)
    request_id: str | int  # the client's id, for idempotency in the handlers
    command: str
    body: dict[str, Any]


@dataclass(frozen=True)
class CommandReply:
    tag: int
    body: dict[str, Any] | None = None
    error: dict[str, str] | None = None  # {"code", "message"}
