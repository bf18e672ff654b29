"""Several messages for one peer in one transport message."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Batch:
    """The messages one actor sent one peer while handling one incoming message (or batch),
    in the order it sent them. Every actor (actors/base.py) unpacks a Batch and handles its
    messages one by one, exactly as if each had come alone. Batching only what one handling
    produced adds no waiting: under load one chunk of frames becomes one batch per hop
    instead of one message per request per hop (each costs ~1 ms of CPU: docs/actors.md)."""
    messages: tuple[Any, ...]
