"""Regenerate tests/vectors/frames.json with an implementation written from the COBS paper
(Cheshire & Baker 1999) and zlib's CRC32 - deliberately not the code under test."""
import json
import zlib
from pathlib import Path

import msgpack


def cobs_encode_reference(data: bytes) -> bytes:
    out, block = bytearray(), bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out += b"\xff" + block
                block.clear()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


def frame(payload: bytes) -> bytes:
    return cobs_encode_reference(payload + zlib.crc32(payload).to_bytes(4, "big")) + b"\x00"


CASES = {
    "empty payload": b"",
    "one zero byte": b"\x00",
    "health request": msgpack.packb({"v": 1, "id": "req-1", "cmd": "health", "body": {}}),
    "ca_info request, integer id": msgpack.packb({"v": 1, "id": 7, "cmd": "ca_info", "body": {}}),
    "error response": msgpack.packb({"v": 1, "id": None, "error": {"code": "bad_crc", "message": "x"}}),
    "254 non-zero bytes (one full COBS block)": bytes(range(1, 255)),
    "300 bytes with zeros": bytes(i % 7 for i in range(300)),
}


def payload_whose_frame_ends_with_a_full_block() -> bytes:
    """250 non-zero payload bytes whose CRC32 has no zero byte: payload+CRC is one run of
    exactly 254 non-zero bytes, the case where the paper's encoder ends with 0x01."""
    for start in range(1, 256):
        payload = bytes((start + i) % 255 + 1 for i in range(250))
        if 0 not in zlib.crc32(payload).to_bytes(4, "big"):
            return payload
    raise AssertionError("no such payload")


CASES["payload+CRC exactly 254 non-zero bytes (cobs-254-run-at-end)"] = payload_whose_frame_ends_with_a_full_block()

if __name__ == "__main__":
    vectors = [{"name": n, "payload": p.hex(), "frame": frame(p).hex()} for n, p in CASES.items()]
    Path(__file__).with_name("frames.json").write_text(json.dumps(vectors, indent=1) + "\n")
