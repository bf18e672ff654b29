"""core.wire.framing against the vectors, both ways, plus properties and every broken frame."""
import json
import zlib
from pathlib import Path

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from core.wire.framing import FrameDecoder, FrameError, decode_frame, encode_frame

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "frames.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_encode_matches_vector(vector):
    assert encode_frame(bytes.fromhex(vector["payload"])).hex() == vector["frame"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_matches_vector(vector):
    frame = bytes.fromhex(vector["frame"])
    assert FrameDecoder().feed(frame) == [bytes.fromhex(vector["payload"])]


@given(st.binary(max_size=2000))
def test_any_payload_round_trips(payload):
    frame = encode_frame(payload)
    assert frame.count(0) == 1 and frame.endswith(b"\x00")
    assert FrameDecoder().feed(frame) == [payload]


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_stream_split_anywhere_yields_every_payload(payloads, data):
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder, results, start = FrameDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        results += decoder.feed(stream[start:cut])
        start = cut
    assert results == payloads


def test_one_byte_writes():
    frame = encode_frame(b"hello signer")
    decoder = FrameDecoder()
    results = []
    for byte in frame:
        results += decoder.feed(bytes([byte]))
    assert results == [b"hello signer"]


def good_after(decoder: FrameDecoder) -> None:
    assert decoder.feed(encode_frame(b"next")) == [b"next"]


def test_bad_crc_is_reported_and_next_frame_decodes():
    raw = b"payload" + (zlib.crc32(b"payload") ^ 1).to_bytes(4, "big")
    decoder = FrameDecoder()
    [error] = decoder.feed(cobs.encode(raw) + b"\x00")
    assert isinstance(error, FrameError) and error.code == "bad_crc"
    good_after(decoder)


def test_bad_cobs_is_reported():
    # A code byte pointing past the end of the frame is invalid COBS.
    decoder = FrameDecoder()
    [error] = decoder.feed(b"\x09abc\x00")
    assert error.code == "bad_cobs"
    good_after(decoder)


def test_too_short_frame():
    decoder = FrameDecoder()
    [error] = decoder.feed(cobs.encode(b"ab") + b"\x00")
    assert error.code == "frame_too_short"
    good_after(decoder)


def test_oversized_frame_reported_once_and_dropped():
    decoder = FrameDecoder(max_payload=1024)
    big = encode_frame(b"x" * 5000)
    results = []
    for i in range(0, len(big), 700):
        results += decoder.feed(big[i:i + 700])
    assert [r.code for r in results] == ["frame_too_large"]
    assert decoder.buffered == 0
    good_after(decoder)


def test_zero_flood_and_noise_between_frames():
    decoder = FrameDecoder()
    results = decoder.feed(b"\x00" * 1000 + encode_frame(b"a") + b"\x00\x00" + encode_frame(b"b"))
    assert results == [b"a", b"b"]


def test_direct_decode_of_vectors():
    for vector in VECTORS:
        assert decode_frame(bytes.fromhex(vector["frame"])[:-1]) == bytes.fromhex(vector["payload"])


def test_payload_over_the_limit_inside_the_byte_cap():
    decoder = FrameDecoder(max_payload=1024)
    [error] = decoder.feed(encode_frame(b"\x00" * 1025))  # 1025 zeros encode to 1030 bytes
    assert error.code == "frame_too_large"
    good_after(decoder)


def test_a_final_full_block_is_followed_by_the_papers_0x01_and_both_forms_decode():
    """payload+CRC of exactly 254 non-zero bytes: the signer sends the paper's form (ff, 254
    bytes, 01); the form some libraries send (without the 01) is accepted as well."""
    vector = next(v for v in VECTORS if "cobs-254-run-at-end" in v["name"])
    payload, frame = bytes.fromhex(vector["payload"]), bytes.fromhex(vector["frame"])
    assert frame[0] == 0xFF and frame[-2:] == b"\x01\x00" and len(frame) == 1 + 254 + 2
    assert encode_frame(payload) == frame
    assert decode_frame(frame[:-1]) == payload
    assert decode_frame(frame[:-2]) == payload  # without the 0x01 block
