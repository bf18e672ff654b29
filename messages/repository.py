"""Messages to the Repository actor, the one owner of the SQLite database."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RepoHealthRequest:
    tag: int


@dataclass
class RepoHealthReply:
    tag: int
    health: dict[str, Any]
    error: dict[str, str] | None = None
