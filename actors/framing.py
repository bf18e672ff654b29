"""Framing: bytes from the serial link into checked payloads, and payloads back into frames.

A broken frame is answered here, at once, with an error frame (id nil): the Dispatcher
never sees bytes that failed COBS or CRC, and the link stays usable for the next frame.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from actors.base import SignerActor
from core.framing import FrameDecoder, FrameError, encode_frame
from core.protocol import encode_error
from messages import FrameReceived, FrameToSend, SerialBytesReceived, SerialBytesToSend


class Framing(SignerActor):
    actor_name = "framing"

    def configure(self, config: Any) -> None:
        self.decoder = FrameDecoder(config.protocol.max_payload_bytes)
        self.frames_in = 0
        self.frames_out = 0
        self.frame_errors: Counter[str] = Counter()

    def receiveMsg_SerialBytesReceived(self, message: SerialBytesReceived, sender: Any) -> None:
        for result in self.decoder.feed(message.data):
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

    def figures(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out,
                "frame_errors": dict(self.frame_errors), "buffered_bytes": self.decoder.buffered}
