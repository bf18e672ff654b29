"""Frame codec for the serial link.

A frame on the wire is ``COBS(payload || CRC32(payload)) || 0x00``. COBS removes every
0x00 from the encoded bytes, so 0x00 is an unambiguous frame delimiter: after any
corruption the receiver resynchronises at the next 0x00. The CRC32 (big-endian, zlib's
polynomial) catches bytes damaged on the line, which COBS alone cannot.

This module is plain code (no actors) so it can be unit-tested against the vectors in
``tests/vectors/``; the Framing actor and the client library both use it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

from cobs import cobs

DELIMITER = b"\x00"
CRC_BYTES = 4
DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024


@dataclass(frozen=True)
class FrameError:
    """A frame that could not be decoded; `code` is one of the protocol's frame error codes."""

    code: str
    message: str


def max_encoded_length(max_payload: int) -> int:
    """Longest COBS encoding (without delimiter) of a payload plus CRC of at most max_payload."""
    raw = max_payload + CRC_BYTES
    return raw + raw // 254 + 1


def encode_frame(payload: bytes) -> bytes:
    """Encode one payload as a complete frame, delimiter included."""
    raw = payload + zlib.crc32(payload).to_bytes(CRC_BYTES, "big")
    encoded: bytes = cobs.encode(raw)  # cobs has no type hints
    # The paper's encoder (Cheshire & Baker 1999) ends a frame whose last run of non-zero
    # bytes fills whole 254-byte blocks with a 0x01 block (the phantom zero it then drops);
    # the cobs package leaves it out. A decoder written from the paper loses a byte without
    # it, so the signer sends the paper's form (docs/protocol.md, COBS); cobs.decode
    # accepts both.
    last_run = len(raw) - (raw.rfind(0) + 1)
    if last_run and last_run % 254 == 0:
        encoded += b"\x01"
    return encoded + DELIMITER


def decode_frame(encoded: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes | FrameError:
    """Decode the bytes between two delimiters into the payload, or a FrameError."""
    try:
        raw: bytes = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        return FrameError("bad_cobs", f"COBS decoding failed: {exc}")
    if len(raw) < CRC_BYTES:
        return FrameError("frame_too_short", f"frame has {len(raw)} bytes, fewer than its CRC32")
    payload, crc = raw[:-CRC_BYTES], raw[-CRC_BYTES:]
    if len(payload) > max_payload:  # COBS overhead lets a frame just under the byte cap through
        return FrameError("frame_too_large", f"frame exceeds the limit of {max_payload} payload bytes")
    expected = zlib.crc32(payload).to_bytes(CRC_BYTES, "big")
    if crc != expected:
        return FrameError("bad_crc", f"CRC32 mismatch: frame says {crc.hex()}, payload gives {expected.hex()}")
    return payload


class FrameDecoder:
    """Splits a byte stream into payloads, resynchronising on every delimiter.

    Empty frames (two delimiters in a row, e.g. a 0x00 flood used for resync) are skipped
    silently. A frame longer than the limit is reported once and its bytes are dropped
    until the next delimiter, so memory stays bounded whatever arrives on the line.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._max_encoded = max_encoded_length(max_payload)
        self._buffer = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        results: list[bytes | FrameError] = []
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            chunk = data[start:] if end < 0 else data[start:end]
            self._append(chunk, results)
            if end < 0:
                return results
            self._finish_frame(results)
            start = end + 1

    def _append(self, chunk: bytes, results: list[bytes | FrameError]) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buffer) + len(chunk) > self._max_encoded:
            self._buffer.clear()
            self._discarding = True
            results.append(FrameError(
                "frame_too_large", f"frame exceeds the limit of {self.max_payload} payload bytes"))
            return
        self._buffer += chunk

    def _finish_frame(self, results: list[bytes | FrameError]) -> None:
        if self._discarding:
            self._discarding = False
            return
        if self._buffer:
            results.append(decode_frame(bytes(self._buffer), self.max_payload))
            self._buffer.clear()
