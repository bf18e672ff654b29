"""Framing: bytes from the serial link into checked payloads, and payloads back into frames.

A broken frame is answered here, at once, with an error frame (id nil): the Dispatcher
never sees bytes that failed COBS or CRC, and the link stays usable for the next frame.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from actors.base import SignerActor
from core.wire.framing import FrameDecoder, FrameError, encode_frame
from core.wire.protocol import encode_error
from messages import FrameReceived, FrameToSend, SerialBytesReceived, SerialBytesToSend


MAX_OVERTAKEN_CHUNKS = 256


class Framing(SignerActor):
    actor_name = "framing"

    def configure(self, config: Any) -> None:
        self.decoder = FrameDecoder(config.protocol.max_payload_bytes)
        self.frames_in = 0
        self.frames_out = 0
        self.frame_errors: Counter[str] = Counter()
        self.next_seq: int | None = None  # None: take the first chunk's number as the start
        self.overtaken: dict[int, bytes] = {}  # chunks that overtook an earlier one
        self.reordered = 0
        self.gaps_skipped = 0

    def receiveMsg_SerialBytesReceived(self, message: SerialBytesReceived, sender: Any) -> None:
        if message.seq == 0:  # unnumbered (tests, tools): in order by definition
            self.decode(message.data)
            return
        if self.next_seq is None or message.seq < self.next_seq:
            self.next_seq = message.seq  # a (re)started SerialLink counts from 1 again
        if message.seq != self.next_seq:
            self.reordered += 1
        self.overtaken[message.seq] = message.data
        if len(self.overtaken) > MAX_OVERTAKEN_CHUNKS:
            # A chunk that never comes (it cannot, over TCP, but memory must stay bounded):
            # go on from the oldest we have; the decoder resynchronises at the next 0x00.
            self.gaps_skipped += 1
            self.next_seq = min(self.overtaken)
        while self.next_seq in self.overtaken:
            self.decode(self.overtaken.pop(self.next_seq))
            self.next_seq += 1

    def decode(self, data: bytes) -> None:
        for result in self.decoder.feed(data):
            if isinstance(result, FrameError):
                self.frame_errors[result.code] += 1
                self.send(self.peer("serial_link"), SerialBytesToSend(
                    encode_frame(encode_error(None, result.code, result.message))))
            else:
                self.frames_in += 1
                self.send(self.peer("dispatcher"), FrameReceived(result))

    def receiveMsg_FrameToSend(self, message: FrameToSend, sender: Any) -> None:
        self.frames_out += 1
        self.send(self.peer("serial_link"), SerialBytesToSend(encode_frame(message.payload)))

    def on_addresses_changed(self) -> None:
        # A restarted SerialLink re-reads from a fresh port: half a frame from the old one
        # must not be glued to the new bytes.
        self.decoder = FrameDecoder(self.decoder.max_payload)
        self.next_seq, self.overtaken = None, {}

    def figures(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out,
                "frame_errors": dict(self.frame_errors), "buffered_bytes": self.decoder.buffered,
                "chunks_reordered": self.reordered, "chunk_gaps_skipped": self.gaps_skipped}
