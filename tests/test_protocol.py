"""core.protocol: envelope validation, every envelope error, and docs/protocol.md in step."""
import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.protocol import (ERROR_CODES, RequestError, SignerError, decode_request, encode_error,
                           encode_request, encode_response, field, unpack)

COMMANDS = {"health", "ca_info"}


def test_request_round_trip():
    request = decode_request(encode_request("id-1", "health", {"x": 1}), COMMANDS)
    assert (request.request_id, request.command, request.body) == ("id-1", "health", {"x": 1})


@pytest.mark.parametrize("payload, code, has_id", [
    (b"\xc1", "bad_msgpack", False),  # 0xc1 is never used in msgpack
    (msgpack.packb([1, 2]), "bad_envelope", False),
    (msgpack.packb({"v": 1, "cmd": "health"}), "bad_envelope", False),
    (msgpack.packb({"v": 1, "id": "", "cmd": "health"}), "bad_envelope", False),
    (msgpack.packb({"v": 1, "id": True, "cmd": "health"}), "bad_envelope", False),
    (msgpack.packb({"v": 2, "id": "a", "cmd": "health"}), "unsupported_version", True),
    (msgpack.packb({"v": 1, "id": "a", "cmd": "nope"}), "unknown_command", True),
    (msgpack.packb({"v": 1, "id": "a", "cmd": 5}), "bad_envelope", True),
    (msgpack.packb({"v": 1, "id": "a", "cmd": "health", "body": []}), "bad_envelope", True),
    (msgpack.packb({"v": 1, "id": "a", "cmd": "health", "extra": 1}), "bad_envelope", True),
    (msgpack.packb({"v": 1, "id": 1}) + b"\x00", "bad_msgpack", False),
])
def test_envelope_errors(payload, code, has_id):
    with pytest.raises(SignerError) as info:
        decode_request(payload, COMMANDS)
    assert info.value.code == code
    assert isinstance(info.value, RequestError) == has_id


@given(st.binary(max_size=200))
def test_random_payloads_give_typed_errors_only(payload):
    try:
        decode_request(payload, COMMANDS)
    except SignerError as exc:
        assert exc.code in ERROR_CODES


@given(st.dictionaries(st.sampled_from(["v", "id", "cmd", "body", "x"]),
                       st.one_of(st.none(), st.integers(-2**63, 2**64 - 1), st.text(max_size=5), st.binary(max_size=5),
                                 st.lists(st.integers(-2**63, 2**64 - 1), max_size=2), st.booleans())))
def test_random_maps_give_typed_errors_only(obj):
    try:
        decode_request(msgpack.packb(obj), COMMANDS)
    except SignerError as exc:
        assert exc.code in ERROR_CODES


def test_responses():
    assert unpack(encode_response("a", {"k": b"\x01"})) == {"v": 1, "id": "a", "body": {"k": b"\x01"}}
    assert unpack(encode_error(None, "bad_crc", "m")) == {
        "v": 1, "id": None, "error": {"code": "bad_crc", "message": "m"}}


def test_field_names_the_field():
    with pytest.raises(SignerError, match="field 'issuer' is required"):
        field({}, "issuer", str)
    with pytest.raises(SignerError, match="field 'days' must be int, got bool"):
        field({"days": True}, "days", int)
    assert field({}, "days", int, required=False, default=3) == 3


def test_every_error_code_is_documented():
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", doc, re.MULTILINE))
    assert set(ERROR_CODES) <= documented, set(ERROR_CODES) - documented
