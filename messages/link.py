"""Bytes and frames on their way between SerialLink, Framing and Dispatcher."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SerialBytesReceived:
    """SerialLink -> Framing: raw bytes read from the port."""
    data: bytes


@dataclass
class SerialBytesToSend:
    """Framing -> SerialLink: encoded frames to write to the port."""
    data: bytes


@dataclass
class FrameReceived:
    """Framing -> Dispatcher: one frame's payload, CRC already checked."""
    payload: bytes


@dataclass
class FrameToSend:
    """Dispatcher -> Framing: one response payload to frame and send."""
    payload: bytes
