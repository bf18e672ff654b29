"""Bytes and frames on their way between SerialLink, Framing and Dispatcher."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SerialBytesReceived:
    """SerialLink -> Framing: raw bytes read from the port, numbered from 1 per SerialLink
    life. Thespian does not promise that two messages arrive in the order they were sent
    (seen: chunk 319 after 322), and a byte stream must be decoded in order."""
    data: bytes
    seq: int = 0


@dataclass(frozen=True)
class SerialBytesToSend:
    """Framing -> SerialLink: encoded frames to write to the port."""
    data: bytes


@dataclass(frozen=True)
class FrameReceived:
    """Framing -> Dispatcher: one frame's payload, CRC already checked."""
    payload: bytes


@dataclass(frozen=True)
class FrameToSend:
    """Dispatcher -> Framing: one response payload to frame and send."""
    payload: bytes
