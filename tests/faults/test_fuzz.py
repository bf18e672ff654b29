"""Property-based fuzzing (item 4 of the hardening issue), in the normal suite.

Targets: the frame decoder (core.wire.framing), the Dispatcher (envelope validation and routing,
in-process with mock peers) and the command handlers (X509Signer, Revoker, CrlIssuer,
OpenPgpSigner, in-process with mock Hsm and Repository). The properties: nothing raises, every
answer is a typed error with a documented code, memory stays bounded, every frame gets
exactly one answer. `max_examples` is kept modest so the module runs in seconds; the long
variant is `python -m tools.dev.fuzz` (and `test_fuzz_harness_for_a_minute`, with --run-slow).

Inputs reach the handlers as they would off the wire: generated values are packed and
unpacked with msgpack first (lists, not tuples; no lone surrogates in strings).

The bugs this fuzzing found (pre-1950 revocations breaking CRLs, overflowing times and
validities, loose serial forms) are fixed; the tests at the end pin them.
SIGNER_FUZZ_SCALE=20 runs twenty times the examples.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from actors.handlers.crl_issuer import CrlIssuer
from actors.spine.dispatcher import ROUTES, Dispatcher
from actors.handlers.openpgp_signer import OpenPgpSigner
from actors.handlers.revoker import Revoker
from actors.handlers.x509_signer import X509Signer
from core.openpgp import certify as openpgp
from core.wire.framing import (DEFAULT_MAX_PAYLOAD, FrameDecoder, FrameError, decode_frame,
                          encode_frame, max_encoded_length)
from core.x509.profiles import load_profiles
from core.wire.protocol import (ERROR_CODES, MAX_ID_LENGTH, RequestError, SignerError, decode_request,
                           pack, unpack, valid_request_id)
from messages import CommandReply, CommandRequest, FrameReceived, FrameToSend, HsmSignRequest
from messages.repository import CrlState, LookupOrReserve, LookupRequest, RepoReply, RevokeCertificate
from tests.support.actor_harness import ActorHarness
from tests.support.fixtures_shared import write_test_ca

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "config" / "profiles"
FRAME_CODES = {"bad_cobs", "bad_crc", "frame_too_short", "frame_too_large"}
COMMANDS = sorted(ROUTES)
CLIENT = "D"
HANDLER_PEERS = {"hsm": "HSM", "repository": "REPO"}

# SIGNER_FUZZ_SCALE=20 multiplies the examples, for a longer hunt by hand.
SCALE = max(1, int(os.environ.get("SIGNER_FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=150 * SCALE, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
FEWER = settings(FUZZ, max_examples=60 * SCALE)


def wire(value: Any) -> Any:
    """The value as a handler sees it after a trip through msgpack."""
    return unpack(pack(value))


# --- strategies ----------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.integers(-300, 300),
    st.floats(), texts, st.binary(max_size=24))
map_keys = st.one_of(texts, st.integers(-3, 3), st.sampled_from(["v", "id", "cmd", "body"]),
                     st.binary(max_size=3), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(map_keys, inner, max_size=4)), max_leaves=12)
maps = st.dictionaries(map_keys, values, max_size=5)

valid_ids = st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1,
                              max_size=MAX_ID_LENGTH), st.integers(0, 2**63 - 1))
invalid_ids = st.one_of(
    st.just(""), st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                         min_size=MAX_ID_LENGTH + 1, max_size=MAX_ID_LENGTH + 8),
    st.integers(-2**63, -1), st.integers(2**63, 2**64 - 1), st.booleans(), st.floats(),
    st.binary(max_size=8), st.none(), st.lists(st.integers(-9, 9), max_size=2))
envelope_fields = {
    "v": st.one_of(st.just(1), st.sampled_from([1.0, True, 0, 2, -1, "1", None]), values),
    "id": st.one_of(valid_ids, invalid_ids, values),
    "cmd": st.one_of(st.sampled_from(COMMANDS), st.sampled_from(["", "HEALTH", "make_coffee"]), values),
    "body": st.one_of(maps, values, st.none()),
}
envelopes = st.builds(
    lambda base, extra: {**extra, **base},
    st.fixed_dictionaries({}, optional=envelope_fields),
    st.one_of(st.just({}), st.dictionaries(map_keys, values, max_size=2)))
valid_envelopes = st.fixed_dictionaries(
    {"v": st.just(1), "id": valid_ids, "cmd": st.sampled_from(COMMANDS)},
    optional={"body": maps})


@st.composite
def mangled(draw, packed: st.SearchStrategy[bytes]) -> bytes:
    """A packed object cut short, extended, or with one byte changed."""
    data = draw(packed)
    how = draw(st.sampled_from(["cut", "extend", "flip"]))
    if how == "cut" or not data:
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=8))
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]


payloads = st.one_of(
    st.binary(max_size=64), values.map(pack), envelopes.map(pack), valid_envelopes.map(pack),
    mangled(envelopes.map(pack)), mangled(valid_envelopes.map(pack)))


# --- the frame decoder ---------------------------------------------------------------------

stream_parts = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=120).map(encode_frame),
    st.integers(1, 20).map(lambda n: b"\x00" * n),
    st.integers(1, 1500).map(lambda n: b"\x01" * n),  # long runs: past the cap for small limits
    st.binary(min_size=1, max_size=30).map(lambda b: encode_frame(b)[: max(1, len(b) // 2)]),
)
limits = st.sampled_from([1, 4, 16, 64, 300, 1024, DEFAULT_MAX_PAYLOAD])


def model_decode(stream: bytes, max_payload: int) -> list[Any]:
    """What the decoder should yield for the whole stream, from the documented rules."""
    cap, out = max_encoded_length(max_payload), []
    *complete, tail = stream.split(b"\x00")
    for segment in complete:
        if segment:
            out.append("frame_too_large" if len(segment) > cap else decode_frame(segment, max_payload))
    if len(tail) > cap:
        out.append("frame_too_large")
    return [r.code if isinstance(r, FrameError) else r for r in out]


def feed_in_chunks(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[Any]:
    results, start = [], 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        chunk_results = decoder.feed(stream[start:cut])
        assert decoder.buffered <= max_encoded_length(decoder.max_payload)
        results += chunk_results
        start = cut
    return results


@FUZZ
@given(parts=st.lists(stream_parts, max_size=25), max_payload=limits, data=st.data())
def test_decoder_never_raises_stays_bounded_and_ignores_chunking(parts, max_payload, data):
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    results = feed_in_chunks(FrameDecoder(max_payload), stream, cuts)
    for result in results:
        if isinstance(result, FrameError):
            assert result.code in FRAME_CODES and result.code in ERROR_CODES
            assert isinstance(result.message, str) and result.message
        else:
            assert isinstance(result, bytes) and len(result) <= max_payload
    codes = [r.code if isinstance(r, FrameError) else r for r in results]
    assert codes == model_decode(stream, max_payload)
    whole = FrameDecoder(max_payload).feed(stream)
    assert [r.code if isinstance(r, FrameError) else r for r in whole] == codes


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=200).map(lambda p: ("good", p)),
                          st.binary(max_size=300).map(lambda n: ("noise", n))), max_size=12),
       limits, st.data())
def test_decoder_recovers_every_good_frame_after_noise(parts, max_payload, data):
    """Noise flushed by a 0x00 never costs a good frame that follows it."""
    stream, good = b"", []
    for kind, value in parts:
        if kind == "good" and len(value) <= max_payload:
            stream += encode_frame(value)
            good.append(value)
        elif kind == "noise":
            stream += value + b"\x00"
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    results = feed_in_chunks(FrameDecoder(max_payload), stream, cuts)
    assert [r for r in results if isinstance(r, bytes)] == good


@FUZZ
@given(st.binary(max_size=600), st.data())
def test_a_damaged_byte_never_yields_another_payload(payload, data):
    frame = encode_frame(payload)[:-1]
    assert decode_frame(frame) == payload
    i = data.draw(st.integers(0, len(frame) - 1))
    damaged = frame[:i] + bytes([frame[i] ^ data.draw(st.integers(1, 255))]) + frame[i + 1:]
    for segment in damaged.split(b"\x00"):
        result = decode_frame(segment)
        assert isinstance(result, FrameError) or result == payload, (frame.hex(), damaged.hex())


@FUZZ
@given(st.integers(0, 3000), st.data())
def test_cap_is_exact_for_the_longest_encoding(extra, data):
    """A frame of max_payload non-zero bytes fits the byte cap; the cap + 1 byte does not."""
    max_payload = data.draw(st.integers(1, 3000))
    longest = encode_frame(b"\x01" * max_payload)[:-1]
    assert len(longest) <= max_encoded_length(max_payload)
    decoder = FrameDecoder(max_payload)
    assert decoder.feed(longest + b"\x00") == [b"\x01" * max_payload]
    over = b"\x01" * (max_encoded_length(max_payload) + 1 + extra)
    assert [r.code for r in decoder.feed(over)] == ["frame_too_large"]
    assert decoder.buffered == 0
    assert decoder.feed(b"\x00" + encode_frame(b"k")) == [b"k"]


# --- envelope validation and the Dispatcher ------------------------------------------------

DISPATCH_CONFIG = SimpleNamespace(protocol=SimpleNamespace(max_payload_bytes=4096, handler_timeout_s=5.0))
DISPATCH_PEERS = {"serial_link": "SL", "framing": "F", "dispatcher": "D",
                  **{name: name.upper() for name in ROUTES.values()}}


def expected_outcome(payload: bytes, in_flight: set) -> tuple[str, Any]:
    """("route", Request) or (error code, id in the answer), from decode_request."""
    try:
        request = decode_request(payload, frozenset(ROUTES))
    except SignerError as exc:
        assert exc.code in ERROR_CODES
        return exc.code, exc.request_id if isinstance(exc, RequestError) else None
    if request.request_id in in_flight:
        return "duplicate_request", request.request_id
    return "route", request


def same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@FUZZ
@given(st.lists(st.one_of(payloads, st.none()), min_size=1, max_size=14), st.data())
def test_dispatcher_answers_every_frame_exactly_once(steps, data):
    h = ActorHarness(Dispatcher, DISPATCH_CONFIG, DISPATCH_PEERS)
    in_flight: dict[int, Any] = {}  # tag -> request id
    for step in steps:
        if step is None:  # a handler answers one of the requests in flight
            if not in_flight:
                continue
            tag = data.draw(st.sampled_from(sorted(in_flight)))
            error = data.draw(st.one_of(st.none(), st.fixed_dictionaries(
                {"code": st.sampled_from(sorted(ERROR_CODES)), "message": texts})))
            body = None if error else data.draw(st.one_of(st.none(), maps.map(wire)))
            h.deliver(CommandReply(tag, body=body, error=error), "H")
            [(address, message)] = h.take()
            answer = unpack(message.payload)
            assert address == "F" and same_id(answer["id"], in_flight.pop(tag))
            assert answer["error"] == error if error else pack(answer["body"]) == pack(body or {})
            continue
        payload = step
        note(f"payload {payload.hex()}")
        expected, detail = expected_outcome(payload, set(in_flight.values()))
        h.deliver(FrameReceived(payload), "F")
        sent = h.take()
        assert len(sent) == 1, sent  # exactly one answer or one routed request
        address, message = sent[0]
        if expected == "route":
            assert isinstance(message, CommandRequest), message
            assert address == DISPATCH_PEERS[ROUTES[detail.command]]
            assert same_id(message.request_id, detail.request_id) and message.command == detail.command
            assert isinstance(message.body, dict) and pack(message.body) == pack(detail.body)
            assert valid_request_id(message.request_id)
            in_flight[message.tag] = message.request_id
            event(f"routed {message.command}")
        else:
            assert isinstance(message, FrameToSend) and address == "F"
            answer = unpack(message.payload)
            assert set(answer) == {"v", "id", "error"} and answer["v"] == 1
            assert answer["error"]["code"] == expected and expected in ERROR_CODES
            assert isinstance(answer["error"]["message"], str)
            assert same_id(answer["id"], detail) if detail is not None else answer["id"] is None
            event(f"refused {expected}")
    h.deliver(CommandReply(10**9, body={}), "H")  # an unknown (late) tag: dropped silently
    assert h.take() == []
    assert h.actor.errors == 0 and len(h.actor.pending) == len(in_flight)


@FUZZ
@given(payloads)
def test_decode_request_raises_only_typed_errors(payload):
    try:
        request = decode_request(payload, frozenset(ROUTES))
    except SignerError as exc:
        assert exc.code in ERROR_CODES
        if isinstance(exc, RequestError):
            assert valid_request_id(exc.request_id)
        return
    assert valid_request_id(request.request_id) and request.command in ROUTES
    assert isinstance(request.body, dict)


# --- the command handlers --------------------------------------------------------------------

def make_ca(folder: Path, issuer_id: str, key: Any) -> SimpleNamespace:
    _, path = write_test_ca(folder, issuer_id, key, label="Fuzz")
    return SimpleNamespace(id=issuer_id, certificate=str(path), key_label=f"{issuer_id}-key", key=key)


@pytest.fixture(scope="module")
def x509_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-issuers")
    cas = [make_ca(folder, "root", rsa.generate_private_key(65537, 2048)),
           make_ca(folder, "class3", ec.generate_private_key(ec.SECP256R1()))]
    return SimpleNamespace(
        node_id="node-fuzz",
        issuers=[SimpleNamespace(id=c.id, certificate=c.certificate, key_label=c.key_label) for c in cas],
        x509=SimpleNamespace(profiles=str(PROFILES), lint=True),
        crl=SimpleNamespace(lifetime_days=7, grace=14.0, rebuild_after_fraction=0.5, keep=10, issuing_distribution_point=False,
                            hash="sha256"))


def make_csr(key: Any) -> bytes:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr.example.net")]))
            .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))


@pytest.fixture(scope="module")
def csrs() -> list[bytes]:
    rsa_csr = make_csr(rsa.generate_private_key(65537, 2048))
    return [rsa_csr, make_csr(ec.generate_private_key(ec.SECP256R1())),
            make_csr(ec.generate_private_key(ec.SECP384R1())),
            make_csr(rsa.generate_private_key(65537, 1024)),
            rsa_csr[:-1] + bytes([rsa_csr[-1] ^ 1])]  # a broken signature


_tags = itertools.count(1)


def drive(h: ActorHarness, command: str, body: dict[str, Any], stored: Any = None) -> tuple[str, Any]:
    """One request to a handler; the request-id lookup is answered `stored` (None: unknown).

    Returns ("error", error dict), ("body", body) or ("asked", the message sent to a peer)."""
    tag = next(_tags)
    h.deliver(CommandRequest(tag, f"fuzz-{tag}", command, body), CLIENT)
    for _ in range(4):
        sent = h.take()
        replies = [m for a, m in sent if isinstance(m, CommandReply)]
        asks = [(a, m) for a, m in sent if not isinstance(m, CommandReply)]
        if replies:
            assert len(replies) == 1 and not asks and replies[0].tag == tag, sent
            reply = replies[0]
            if reply.error is not None:
                assert reply.body is None and set(reply.error) == {"code", "message"}
                return "error", reply.error
            return "body", reply.body
        assert asks, f"{command} neither answered nor asked a peer"
        assert all(a in HANDLER_PEERS.values() for a, _ in asks), asks
        if len(asks) == 1 and isinstance(asks[0][1], LookupRequest):
            h.deliver(RepoReply(asks[0][1].tag, asks[0][1].typed_value(stored)), "REPO")
            continue
        return "asked", asks
    raise AssertionError("the handler kept asking")


def check_outcome(h: ActorHarness, errors_before: int, outcome: tuple[str, Any]) -> None:
    kind, detail = outcome
    note(f"outcome {outcome!r}")
    assert kind != "error" or detail["code"] in ERROR_CODES, detail
    assert kind != "error" or detail["code"] != "internal_error", detail  # an unexpected exception
    assert h.actor.errors == errors_before, h.actor.last_error
    event(f"error {detail['code']}" if kind == "error" else
          f"asked {type(detail[0][1]).__name__}" if kind == "asked" else kind)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws (shrinks to False)."""
    return st.integers(0, n - 1).map(lambda i: i == n - 1)


def mostly(valid: st.SearchStrategy, odd: st.SearchStrategy = values, n: int = 5) -> st.SearchStrategy:
    """Usually `valid`, about once in n anything: so requests get past the first checks."""
    return one_in(n).flatmap(lambda is_odd: odd if is_odd else valid)


def optional_body(fields: dict[str, st.SearchStrategy], required: dict[str, st.SearchStrategy]):
    """Bodies near the valid ones (required fields present) and random ones, plus stray keys."""
    near = st.fixed_dictionaries(required, optional=fields)
    loose = st.fixed_dictionaries({}, optional={**required, **fields})
    stray = mostly(st.just({}), st.dictionaries(map_keys, values, min_size=1, max_size=2), n=8)
    return st.builds(lambda body, extra: wire({**extra, **body}), mostly(near, loose, n=4), stray)


# sign_x509 -------------------------------------------------------------------------------

PROFILE_NAMES = sorted(load_profiles(str(PROFILES)))
ATTRIBUTE_TYPES = ["C", "ST", "L", "O", "OU", "CN", "E", "email", "commonName", "countryName",
                   "serialNumber", "x", ""]
NAMEISH = st.one_of(st.sampled_from([
    "www.example.org", "example.org", "*.example.org", "a@example.org", "DE", "USA", "", " ",
    "x" * 70, "ex ample.org", "xn--bcher-kva.example", "bücher.example", "-a.example", "a..b",
    "me@jabber.example", "1.2.3.4", "a\x00b", "ﬁ.example"]), texts)
x509_fields = {
    "subject": mostly(st.sampled_from([{"CN": "www.example.org"}, [["CN", "a.example.org"], ["O", "Org"]],
                                       ["CN:www.example.org"], {"CN": "Alice", "E": "a@example.org"}]),
                      st.one_of(
        st.dictionaries(st.sampled_from(ATTRIBUTE_TYPES), NAMEISH, max_size=3),
        st.lists(st.tuples(st.sampled_from(ATTRIBUTE_TYPES), NAMEISH).map(list), max_size=3),
        st.lists(st.builds(lambda t, v: f"{t}:{v}", st.sampled_from(ATTRIBUTE_TYPES), NAMEISH), max_size=3),
        values)),
    "sans": mostly(st.sampled_from([[["dns", "www.example.org"]], ["dns:www.example.org", "dns:example.org"],
                                    [["email", "a@example.org"]], [["xmpp", "me@jabber.example"]]]),
                   st.one_of(
        st.lists(st.tuples(st.sampled_from(["dns", "email", "xmpp", "ip", "uri", "DNS", ""]),
                           NAMEISH).map(list), max_size=3),
        st.lists(st.builds(lambda t, v: f"{t}:{v}", st.sampled_from(["dns", "email", "xmpp"]), NAMEISH),
                 max_size=3),
        values)),
    "hash": mostly(st.sampled_from(["sha256", "sha384", "sha512", "sha1", "md5", "SHA256"])),
    "days": mostly(st.integers(-5, 800), st.one_of(st.integers(-2**63, 2**64 - 1), values)),
}
PROFILE_ISSUER = [(name, issuer) for name, profile in load_profiles(str(PROFILES)).items()
                  for issuer in profile.issuers]


def x509_bodies(csrs: list[bytes]):
    csr = mostly(st.sampled_from(csrs), st.one_of(
        st.binary(max_size=64), st.sampled_from(csrs).map(lambda d: d[: len(d) // 2]), values))
    pair = st.sampled_from(sorted(PROFILE_ISSUER))  # (profile, one of its issuers)
    rest = st.fixed_dictionaries({k: x509_fields[k] for k in ("subject", "sans")},
                                 optional={k: x509_fields[k] for k in ("hash", "days")})
    near = st.builds(lambda p, csr, extra: {"profile": p[0], "issuer": p[1], "csr": csr, **extra},
                     pair, csr, rest)
    required = {"issuer": mostly(st.sampled_from(["root", "class3"])),
                "profile": mostly(st.sampled_from(PROFILE_NAMES)), "csr": csr}
    return mostly(near.map(wire), optional_body(x509_fields, required), n=3)


@FEWER
@given(st.data())
def test_sign_x509_handler_answers_typed_errors_or_asks_a_peer(x509_config, csrs, data):
    h = x509_signer(x509_config)
    body = data.draw(x509_bodies(csrs))
    before = h.actor.errors
    outcome = drive(h, "sign_x509", body)
    if outcome[0] == "asked":
        [(peer, message)] = outcome[1]
        assert (peer, type(message)) == ("REPO", LookupOrReserve)
    check_outcome(h, before, outcome)


_x509_signers: dict[int, ActorHarness] = {}


def x509_signer(config) -> ActorHarness:
    """One configured X509Signer per config (its linter takes a while to load)."""
    key = id(config)
    if key not in _x509_signers:
        _x509_signers.clear()
        _x509_signers[key] = ActorHarness(X509Signer, config, HANDLER_PEERS)
    h = _x509_signers[key]
    h.take()
    return h


# revoke_x509 ------------------------------------------------------------------------------

OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
revoke_fields = {
    "reason": st.one_of(st.sampled_from(["unspecified", "keyCompromise", "cACompromise", "superseded",
                                         "certificateHold", "removeFromCRL", "KeyCompromise", ""]),
                        st.integers(-3, 12), values),
    "time": st.one_of(
        st.datetimes(timezones=OFFSETS).map(lambda d: d.isoformat()),
        st.datetimes(timezones=OFFSETS).map(lambda d: d.astimezone(timezone.utc).isoformat()[:-6] + "Z"),
        st.datetimes().map(lambda d: d.isoformat()),  # no zone
        st.integers(-2**63, 2**64 - 1), st.integers(-10**11, 10**11), texts, values),
}
def colon_hex(n: int) -> str:
    """1 -> '01', 0xABCDE -> '0a:bc:de': the colon form of a serial."""
    digits = format(n, "x")
    digits = "0" * (len(digits) % 2) + digits
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))


revoke_required = {
    "issuer": mostly(st.sampled_from(["root", "class3"])),
    "serial": st.one_of(
        st.integers(0, 2**170).map(lambda n: format(n, "x")),
        st.integers(1, 2**159).map(lambda n: "0x" + format(n, "X")),
        st.integers(1, 2**64).map(colon_hex),
        texts, values),
}


@FUZZ
@given(optional_body(revoke_fields, revoke_required))
def test_revoke_handler_answers_typed_errors_or_asks_a_peer(x509_config, body):
    h = ActorHarness(Revoker, x509_config, HANDLER_PEERS)
    outcome = drive(h, "revoke_x509", body)
    if outcome[0] == "asked":
        [(peer, message)] = outcome[1]
        assert (peer, type(message)) == ("REPO", RevokeCertificate)
        assert message.issuer in ("root", "class3")
        serial = int(message.serial_hex, 16)
        assert 0 < serial < 2**159 and message.serial_hex == format(serial, "x")
        assert message.reason is None or message.reason in (0, 1, 2, 3, 4, 5, 6, 9, 10)
        assert message.revoked_at.utcoffset() == timedelta(0) and message.revoked_at.microsecond == 0
        assert message.revoked_at <= datetime.now(timezone.utc) + timedelta(minutes=5)
        assert message.revoked_at.year >= 2000  # earlier dates break CRL encoding
    check_outcome(h, 0, outcome)


# fetch_crl --------------------------------------------------------------------------------

@FUZZ
@given(optional_body({"have_number": st.one_of(st.integers(-2**63, 2**64 - 1), values)},
                     {"issuer": mostly(st.sampled_from(["root", "class3"]))}))
def test_fetch_crl_handler_answers_typed_errors_or_asks_a_peer(x509_config, body):
    h = crl_issuer(x509_config)
    outcome = drive(h, "fetch_crl", body)
    if outcome[0] == "asked":
        [(peer, message)] = outcome[1]
        assert (peer, type(message)) == ("REPO", CrlState)
        # Leave the issuer free for the next example: answer "nothing stored yet" as an error.
        h.deliver(RepoReply(message.tag, None, {"code": "repository_error", "message": "fuzz"}), "REPO")
        h.take()
    check_outcome(h, 0, outcome)


_crl_issuers: dict[int, ActorHarness] = {}


def crl_issuer(config) -> ActorHarness:
    key = id(config)
    if key not in _crl_issuers:
        _crl_issuers.clear()
        _crl_issuers[key] = ActorHarness(CrlIssuer, config, HANDLER_PEERS)
    h = _crl_issuers[key]
    h.actor.errors = 0
    h.take()
    return h


# sign_openpgp -----------------------------------------------------------------------------

needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
CA_CREATED = 1_700_000_000
ALICE = "Alice <alice@example.org>"


def gpg(home: str, *args: str) -> bytes:
    return subprocess.run(["gpg", "--homedir", home, "--batch", "--no-tty", "--yes", "--pinentry-mode",
                           "loopback", "--passphrase", "", *args], capture_output=True, check=True,
                          timeout=120).stdout


@pytest.fixture(scope="module")
def openpgp_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-openpgp")
    key = rsa.generate_private_key(65537, 2048)
    block = openpgp.build_public_key_block(
        key.public_key(), CA_CREATED, b"Fuzz OpenPGP CA <gpg@cacert.invalid>",
        lambda data, mechanism: key.sign(data, padding.PKCS1v15(),
                                         getattr(hashes, mechanism.split("-")[0].upper())()))
    path = folder / "openpgp-ca.asc"
    path.write_text(openpgp.armor(block))
    config = SimpleNamespace(openpgp=SimpleNamespace(
        key_label="pgp-key", public_key=str(path), created=CA_CREATED, default_days=366, max_days=366,
        signature_type=0x10, policy_url="http://www.cacert.org/cps.php", max_key_bytes=1 << 20,
        max_uids=20, gpg="gpg"))
    home = tempfile.mkdtemp(prefix="fz-", dir="/tmp")
    try:
        Path(home, "gpg-agent.conf").write_text("s2k-count 65536\n")
        gpg(home, "--quick-gen-key", ALICE, "ed25519", "default", "never")
        user_key = gpg(home, "--export", ALICE)
        armored = gpg(home, "--armor", "--export", ALICE).decode()
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    return config, user_key, armored


def openpgp_bodies(user_key: bytes, armored: str):
    key = mostly(st.sampled_from([user_key, armored, armored.encode()]), st.one_of(
        st.sampled_from([user_key]).map(lambda k: k[: len(k) // 2]),
        st.binary(max_size=64), texts,
        st.sampled_from(["-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxyz\n-----END PGP PUBLIC KEY BLOCK-----\n",
                         "-----BEGIN PGP PRIVATE KEY BLOCK-----\n", "-----BEGIN PGP MESSAGE-----\n"]),
        values), n=3)
    uid = st.one_of(st.sampled_from([ALICE, "Bob <bob@example.org>", ALICE.upper()]), texts.filter(bool))
    uids = mostly(st.lists(uid, min_size=1, max_size=3),
                  st.one_of(st.just([]), st.lists(st.one_of(st.just(""), texts, values), max_size=3), values))
    fields = {"days": mostly(st.integers(-3, 400), st.one_of(st.integers(-2**63, 2**64 - 1), values)),
              "digest": mostly(st.sampled_from(["sha256", "sha384", "sha512", "sha1", "SHA256"]))}
    return optional_body(fields, {"key": key, "uids": uids})


@needs_gpg
@settings(FUZZ, max_examples=40 * SCALE)
@given(st.data())
def test_sign_openpgp_handler_answers_typed_errors_or_asks_a_peer(openpgp_setup, data):
    config, user_key, armored = openpgp_setup
    h = ActorHarness(OpenPgpSigner, config, HANDLER_PEERS)
    body = data.draw(openpgp_bodies(user_key, armored))
    outcome = drive(h, "sign_openpgp", body)
    if outcome[0] == "asked":
        assert all(peer == "HSM" and isinstance(m, HsmSignRequest) for peer, m in outcome[1])
    check_outcome(h, 0, outcome)


def test_sign_openpgp_without_openpgp_section_is_unknown_command():
    h = ActorHarness(OpenPgpSigner, SimpleNamespace(openpgp=None), HANDLER_PEERS)
    assert drive(h, "sign_openpgp", {"key": b"x", "uids": ["a"]})[1]["code"] == "unknown_command"


# --- bugs the fuzzing found ----------------------------------------------------------------

@pytest.mark.parametrize("time_value", ["0001-01-01T00:00:00+01:00", "0001-01-01T05:00:00+05:30"])
def test_revocation_time_near_year_one_is_bad_request(x509_config, time_value):
    h = ActorHarness(Revoker, x509_config, HANDLER_PEERS)
    kind, detail = drive(h, "revoke_x509", {"issuer": "root", "serial": "abcd", "time": time_value})
    assert (kind, detail["code"]) == ("error", "bad_request")
    assert h.actor.errors == 0


@pytest.mark.parametrize("time_value", ["1900-01-01T00:00:00Z", -2208988800, "1949-12-31T23:59:59Z"])
def test_revocation_before_1950_is_refused(x509_config, time_value):
    h = ActorHarness(Revoker, x509_config, HANDLER_PEERS)
    outcome = drive(h, "revoke_x509", {"issuer": "root", "serial": "abcd", "time": time_value})
    assert outcome[0] == "error" and outcome[1]["code"] == "bad_request", outcome


def test_crl_build_with_a_stored_pre_1950_revocation_answers_a_typed_error(x509_config):
    h = ActorHarness(CrlIssuer, x509_config, HANDLER_PEERS)
    kind, asks = drive(h, "fetch_crl", {"issuer": "root"})
    [(_, state)] = asks
    entries = [(0xABCD, datetime(1900, 1, 1, tzinfo=timezone.utc), 1)]  # as revoked_for_crl gives it
    try:
        h.deliver(RepoReply(state.tag, state.typed_value({"latest": None, "rebuild": True, "digest": "d",
                                                          "entries": entries, "base": None,
                                                          "previous_number": None})), "REPO")
    except BaseException as exc:  # noqa: BLE001 - the PanicException is what this test shows
        pytest.fail(f"{type(exc).__name__} escaped the actor: {exc}")
    [(_, reply)] = h.take(CommandReply)
    assert reply.error["code"] in ERROR_CODES and reply.error["code"] != "internal_error"


def test_a_pre_1950_revocation_is_stored_and_listed_for_the_crl(tmp_path):
    """The chain behind the two tests above: the repository keeps a 1900 revocation and hands
    it to the CRL build (so the Revoker is the place to refuse it)."""
    from core.repository.store import Repository

    repo = Repository(str(tmp_path / "r.sqlite"), "node-fuzz")
    try:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        repo.reserve_serial("root", "abcd", "req-1", "server", "CN=x", now, now + timedelta(days=30))
        repo.complete_certificate("root", "abcd", b"DER", "req-1", "sign_x509", "digest", {})
        repo.revoke("root", "abcd", 1, datetime(1900, 1, 1, tzinfo=timezone.utc), "req-2")
        [(serial, revoked_at, reason)] = repo.revoked_for_crl("root", now, timedelta(days=1))
    finally:
        repo.close()
    assert (serial, revoked_at.year, reason) == (0xABCD, 1900, 1)


@pytest.mark.parametrize("serial", ["ab_cd", " abcd ", "+abcd", "0x0xabcd", "\u0661\u0662"],
                         ids=["underscore", "whitespace", "plus", "double_0x", "arabic_indic_digits"])
def test_revoke_serial_outside_the_documented_forms_is_bad_request(x509_config, serial):
    h = ActorHarness(Revoker, x509_config, HANDLER_PEERS)
    outcome = drive(h, "revoke_x509", {"issuer": "root", "serial": serial})
    assert outcome[0] == "error" and outcome[1]["code"] == "bad_request", outcome


@pytest.mark.parametrize("days", [3_000_000, 10**9, 2**63 - 1])
def test_sign_x509_huge_days_is_validity_too_long(x509_config, csrs, days):
    h = ActorHarness(X509Signer, x509_config, HANDLER_PEERS)
    body = {"issuer": "root", "profile": "server", "csr": csrs[0], "subject": {"CN": "www.example.org"},
            "sans": [["dns", "www.example.org"]], "days": days}
    kind, detail = drive(h, "sign_x509", body)
    assert (kind, detail["code"]) == ("error", "validity_too_long")
    assert h.actor.errors == 0


# --- the long harness ----------------------------------------------------------------------

@pytest.mark.slow
def test_fuzz_harness_for_a_minute():
    result = subprocess.run([sys.executable, "-m", "tools.dev.fuzz", "--seconds", "60", "--seed", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failures: 0" in result.stdout
