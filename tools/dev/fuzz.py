"""A longer fuzz run than the test suite's (tests/faults/test_fuzz.py), on demand:

    python -m tools.dev.fuzz --seconds 60 [--seed N] [--targets decoder,envelope,dispatcher]

Loops random inputs through three targets, round-robin, until the time is up:

decoder     core.wire.framing.FrameDecoder: random streams (noise, frames, zero runs, long runs,
            cut frames) fed in random chunks with a random payload limit. Checked: no
            exception; every result is a payload within the limit or a FrameError with a frame
            code of core.wire.protocol.ERROR_CODES; `buffered` never passes the cap; the chunking
            does not change the results; the results are those of the documented rules
            (docs/protocol.md section 1); every good frame after noise + 0x00 comes through.
envelope    core.wire.protocol.decode_request: random payloads (bytes, msgpack values, envelopes
            valid and not, cut or damaged). Checked: only SignerError with a documented code;
            the code and id are those of the documented validation order (protocol.md
            section 2, checked by an independent reference here).
dispatcher  actors.spine.dispatcher.Dispatcher in-process with mock peers: random frames and handler
            replies. Checked: each frame gives exactly one answer (a typed error) or one routed
            CommandRequest; each reply exactly one answer with its request's id; the actor
            records no error.

Each input is made from its own seed, printed with a failure, so `--replay TARGET:SEED`
rebuilds it. Prints inputs per target and the rate; exits 1 if anything failed, with the
failing input in hex.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
import traceback
from types import SimpleNamespace
from typing import Any, Callable

import msgpack

from core.wire.framing import (DEFAULT_MAX_PAYLOAD, FrameDecoder, FrameError, decode_frame, encode_frame,
                          max_encoded_length)
from core.wire.protocol import (ERROR_CODES, MAX_ID_LENGTH, MAX_NESTING_DEPTH, PROTOCOL_VERSION, Extension,
                           RequestError, SignerError, decode_request, pack, unpack, valid_request_id)

FRAME_CODES = {"bad_cobs", "bad_crc", "frame_too_short", "frame_too_large"}
MAX_FAILURES_PER_TARGET = 5
SLICE_S = 0.25


class FuzzFailure(AssertionError):
    """A property did not hold; `data` is the input, shown in hex."""

    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message)
        self.data = data


def check(condition: bool, message: str, data: bytes) -> None:
    if not condition:
        raise FuzzFailure(message, data)


# --- random inputs ---------------------------------------------------------------------------

COMMANDS = ("health", "ca_info", "sign_x509", "revoke_x509", "fetch_crl", "sign_openpgp")


def random_text(rng: random.Random, max_len: int = 12) -> str:
    pools = ("abcxyz019_-:. ", "vidcmdbody", "\x00\x7f\xe9\u00fc\u20ac\U0001f600\u0301")
    pool = rng.choice(pools)
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, max_len)))


def random_int(rng: random.Random) -> int:
    return rng.choice((
        lambda: rng.randint(-3, 3), lambda: rng.randint(-2**63, 2**64 - 1),
        lambda: rng.choice((2**63 - 1, 2**63, -2**63, 2**64 - 1, 127, 128, 255, 256, 65535, 65536)),
    ))()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return random_int(rng)
    if kind == 3:
        return rng.choice((0.0, -0.0, 1.0, 1.5, math.inf, -math.inf, math.nan, rng.random() * 1e300))
    if kind in (4, 5):
        return random_text(rng)
    if kind == 6:
        return rng.randbytes(rng.randint(0, 12))
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return random_map(rng, depth + 1)


def random_key(rng: random.Random) -> Any:
    return rng.choice((lambda: rng.choice(("v", "id", "cmd", "body", "error", "")), lambda: random_text(rng, 4),
                       lambda: rng.randint(-2, 2), lambda: rng.randbytes(2), lambda: None))()


def random_map(rng: random.Random, depth: int = 0) -> dict:
    return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_id(rng: random.Random, valid: bool) -> Any:
    if valid:
        return rng.choice((lambda: random_text(rng, 20) or "x", lambda: rng.randint(0, 2**63 - 1),
                           lambda: "i" * MAX_ID_LENGTH, lambda: 0, lambda: 2**63 - 1))()
    return rng.choice((lambda: "", lambda: "i" * (MAX_ID_LENGTH + 1), lambda: rng.randint(-2**63, -1),
                       lambda: 2**63, lambda: True, lambda: 1.0, lambda: b"id", lambda: None,
                       lambda: [1], lambda: random_value(rng)))()


def random_envelope(rng: random.Random) -> dict:
    """An envelope each of whose fields is right more often than not."""
    envelope: dict[Any, Any] = {}
    if rng.random() < 0.9:
        envelope["v"] = PROTOCOL_VERSION if rng.random() < 0.7 else rng.choice(
            (1.0, True, 0, 2, "1", None, random_value(rng)))
    if rng.random() < 0.9:
        envelope["id"] = random_id(rng, rng.random() < 0.7)
    if rng.random() < 0.9:
        envelope["cmd"] = rng.choice(COMMANDS) if rng.random() < 0.7 else rng.choice(
            ("", "HEALTH", "make_coffee", random_value(rng)))
    if rng.random() < 0.7:
        envelope["body"] = random_map(rng) if rng.random() < 0.7 else random_value(rng)
    if rng.random() < 0.15:
        envelope[random_key(rng)] = random_value(rng)
    return envelope


def mangle(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randint(1, 4))
    how = rng.randrange(3)
    if how == 0:
        return data[:rng.randrange(len(data))]
    if how == 1:
        return data + rng.randbytes(rng.randint(1, 6))
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ rng.randint(1, 255)]) + data[i + 1:]


def random_payload(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 48))
    if kind == 1:
        return pack(random_value(rng))
    if kind in (2, 3):
        return pack(random_envelope(rng))
    return mangle(rng, pack(random_envelope(rng)))


def random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 20)):
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(rng.randbytes(rng.randint(0, 40)))
        elif kind == 1:
            parts.append(encode_frame(rng.randbytes(rng.randint(0, 120))))
        elif kind == 2:
            parts.append(b"\x00" * rng.randint(1, 20))
        elif kind == 3:
            parts.append(bytes([rng.randint(1, 255)]) * rng.randint(1, 1500))
        elif kind == 4:
            frame = encode_frame(rng.randbytes(rng.randint(1, 40)))
            parts.append(frame[:rng.randint(1, len(frame) - 1)])
        else:
            parts.append(encode_frame(random_payload(rng)))
    return b"".join(parts)


# --- target: the frame decoder -------------------------------------------------------------------

def model_decode(stream: bytes, max_payload: int) -> list[Any]:
    """docs/protocol.md section 1, applied to the whole stream at once."""
    cap, out = max_encoded_length(max_payload), []
    *complete, tail = stream.split(b"\x00")
    for segment in complete:
        if segment:
            out.append("frame_too_large" if len(segment) > cap else decode_frame(segment, max_payload))
    if len(tail) > cap:
        out.append("frame_too_large")
    return [r.code if isinstance(r, FrameError) else r for r in out]


def fuzz_decoder(rng: random.Random) -> None:
    max_payload = rng.choice((1, 4, 16, 64, 300, 1024, DEFAULT_MAX_PAYLOAD))
    stream = random_stream(rng)
    cuts = sorted({rng.randint(0, len(stream)) for _ in range(rng.randint(0, 12))})
    data = stream  # what a failure shows
    try:
        decoder, results, start = FrameDecoder(max_payload), [], 0
        for cut in cuts + [len(stream)]:
            results += decoder.feed(stream[start:cut])
            start = cut
            check(decoder.buffered <= max_encoded_length(max_payload),
                  f"buffered {decoder.buffered} passes the cap (limit {max_payload})", data)
        for result in results:
            if isinstance(result, FrameError):
                check(result.code in FRAME_CODES and result.code in ERROR_CODES,
                      f"undocumented frame error {result.code!r}", data)
            else:
                check(isinstance(result, bytes) and len(result) <= max_payload,
                      f"payload of {len(result)} bytes over the limit {max_payload}", data)
        codes = [r.code if isinstance(r, FrameError) else r for r in results]
        check(codes == model_decode(stream, max_payload),
              f"results differ from the documented rules (limit {max_payload}, cuts {cuts})", data)
        whole = [r.code if isinstance(r, FrameError) else r for r in FrameDecoder(max_payload).feed(stream)]
        check(whole == codes, f"chunking changed the results (cuts {cuts})", data)

        # Good frames after noise flushed with 0x00 all come through.
        good, recovery = [], b""
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.5:
                payload = rng.randbytes(rng.randint(0, min(max_payload, 200)))
                good.append(payload)
                recovery += encode_frame(payload)
            else:
                recovery += rng.randbytes(rng.randint(0, 300)) + b"\x00"
        data = recovery
        got = [r for r in FrameDecoder(max_payload).feed(recovery) if isinstance(r, bytes)]
        check(got == good, f"a good frame after noise was lost (limit {max_payload})", data)
    except FuzzFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - any exception is a finding
        raise FuzzFailure(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", data) from None


# --- target: envelope validation -------------------------------------------------------------------

def _depth_and_extension(value: Any) -> tuple[int, bool]:
    """How deep maps and arrays nest (the envelope map is level 1), and whether a msgpack
    ext value or timestamp is anywhere (map keys included): steps 4 and 5, walked depth
    first with a stack of its own, unlike the signer's level-by-level walk."""
    deepest, has_extension = 0, False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (Extension, msgpack.Timestamp)):
            has_extension = True
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for pair in item.items() for child in pair)
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest, has_extension


def reference_validation(payload: bytes, known: frozenset[str]) -> tuple[str, Any]:
    """The validation order of docs/protocol.md section 2: ("ok", None) or (code, id)."""
    try:
        obj = unpack(payload)
    except SignerError:
        return "bad_msgpack", None
    if not isinstance(obj, dict):
        return "bad_envelope", None
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not (
            (isinstance(request_id, int) and 0 <= request_id < 2**63)
            or (isinstance(request_id, str) and 1 <= len(request_id) <= MAX_ID_LENGTH)):
        return "bad_envelope", None
    depth, has_extension = _depth_and_extension(obj)
    if depth > MAX_NESTING_DEPTH or has_extension:  # steps 4 and 5: the same answer
        return "bad_request", request_id
    version = obj.get("v")
    if type(version) is not int or version != 1:
        return "unsupported_version", request_id
    if not isinstance(obj.get("cmd"), str):
        return "bad_envelope", request_id
    if "body" in obj and not isinstance(obj["body"], dict):
        return "bad_envelope", request_id
    if set(obj) - {"v", "id", "cmd", "body"}:
        return "bad_envelope", request_id
    if obj["cmd"] not in known:
        return "unknown_command", request_id
    return "ok", request_id


def same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def fuzz_envelope(rng: random.Random) -> None:
    payload = random_payload(rng)
    known = frozenset(COMMANDS)
    try:
        expected, expected_id = reference_validation(payload, known)
        try:
            request = decode_request(payload, known)
        except SignerError as exc:
            check(exc.code in ERROR_CODES, f"undocumented code {exc.code!r}", payload)
            got_id = exc.request_id if isinstance(exc, RequestError) else None
            check(exc.code == expected and (same_id(got_id, expected_id) if expected_id is not None
                                            else got_id is None),
                  f"answered {exc.code} id {got_id!r}; the documented order gives {expected} id "
                  f"{expected_id!r}", payload)
            check(isinstance(exc.message, str) and bool(exc.message), "empty message", payload)
            return
        check(expected == "ok", f"accepted; the documented order gives {expected}", payload)
        check(valid_request_id(request.request_id) and same_id(request.request_id, expected_id),
              f"request id {request.request_id!r}", payload)
        check(request.command in known and isinstance(request.body, dict), "command or body", payload)
    except FuzzFailure:
        raise
    except Exception as exc:  # noqa: BLE001
        raise FuzzFailure(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", payload) from None


# --- target: the Dispatcher in-process -----------------------------------------------------------

class DispatcherUnderTest:
    """The Dispatcher actor with its send and wakeupAfter replaced by recorders."""

    def __init__(self) -> None:
        from actors.spine.dispatcher import ROUTES, Dispatcher
        from messages import Configure

        self.routes = ROUTES
        self.peers = {"serial_link": "SL", "framing": "F", "dispatcher": "D",
                      **{name: name.upper() for name in ROUTES.values()}}
        self.actor = Dispatcher()
        self.sent: list[tuple[Any, Any]] = []
        # a recorder in place of the actor's send (the point of this harness)
        self.actor.send = lambda address, message: self.sent.append((address, message))  # type: ignore[method-assign]
        self.actor.wakeupAfter = lambda delay, payload=None: None
        config = SimpleNamespace(protocol=SimpleNamespace(max_payload_bytes=4096, handler_timeout_s=5.0))
        self.actor.receiveMessage(Configure("dispatcher", config, self.peers), "supervisor")
        self.sent.clear()

    def deliver(self, message: Any, sender: Any) -> list[tuple[Any, Any]]:
        self.actor.receiveMessage(message, sender)
        sent, self.sent = self.sent, []
        return sent


def fuzz_dispatcher(rng: random.Random) -> None:
    from messages import CommandReply, CommandRequest, FrameReceived, FrameToSend

    d = DispatcherUnderTest()
    known = frozenset(d.routes)
    in_flight: dict[int, Any] = {}
    shown = b""
    try:
        for _ in range(rng.randint(1, 16)):
            if in_flight and rng.random() < 0.25:
                tag = rng.choice(sorted(in_flight))
                request_id = in_flight.pop(tag)
                error = ({"code": rng.choice(sorted(ERROR_CODES)), "message": random_text(rng)}
                         if rng.random() < 0.5 else None)
                body = None if error else rng.choice((None, random_map(rng)))
                shown = pack(["reply", tag, body, error])
                sent = d.deliver(CommandReply(tag, body=body, error=error), "H")
                check(len(sent) == 1 and isinstance(sent[0][1], FrameToSend) and sent[0][0] == "F",
                      f"a handler reply gave {len(sent)} messages", shown)
                answer = unpack(sent[0][1].payload)
                check(same_id(answer["id"], request_id), "a reply went out with another id", shown)
                check(answer.get("error") == error if error else pack(answer["body"]) == pack(body or {}),
                      "the handler's answer was changed", shown)
                continue
            payload = shown = random_payload(rng)
            expected, expected_id = reference_validation(payload, known)
            if expected == "ok" and expected_id in set(in_flight.values()):
                expected = "duplicate_request"
            sent = d.deliver(FrameReceived(payload), "F")
            check(len(sent) == 1, f"a frame gave {len(sent)} messages, not exactly one", payload)
            address, message = sent[0]
            if expected == "ok":
                check(isinstance(message, CommandRequest), f"valid request not routed: {message!r}", payload)
                check(address == d.peers[d.routes[message.command]], "routed to the wrong handler", payload)
                check(same_id(message.request_id, expected_id) and isinstance(message.body, dict),
                      "routed request changed", payload)
                in_flight[message.tag] = message.request_id
            else:
                check(isinstance(message, FrameToSend) and address == "F", f"expected an answer: {message!r}",
                      payload)
                answer = unpack(message.payload)
                code = answer["error"]["code"]
                check(code == expected and code in ERROR_CODES, f"answered {code}, expected {expected}", payload)
                check(same_id(answer["id"], expected_id) if expected_id is not None else answer["id"] is None,
                      f"answer id {answer['id']!r}, expected {expected_id!r}", payload)
        check(d.actor.errors == 0, f"the actor recorded an error: {d.actor.last_error}", shown)
        check(len(d.actor.pending) == len(in_flight), "pending requests out of step", shown)
    except FuzzFailure:
        raise
    except Exception as exc:  # noqa: BLE001
        raise FuzzFailure(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", shown) from None


TARGETS: dict[str, Callable[[random.Random], None]] = {
    "decoder": fuzz_decoder, "envelope": fuzz_envelope, "dispatcher": fuzz_dispatcher}


# --- the loop ------------------------------------------------------------------------------------

def run(seconds: float, seed: int, targets: list[str], out=sys.stdout) -> int:
    master = random.Random(seed)
    counts = {name: 0 for name in targets}
    spent = {name: 0.0 for name in targets}  # wall time each target ran
    failures: dict[str, list[tuple[int, FuzzFailure]]] = {name: [] for name in targets}
    active = list(targets)
    started, cpu_started = time.monotonic(), time.process_time()
    deadline = started + seconds
    while active and time.monotonic() < deadline:
        for name in list(active):
            slice_start = time.monotonic()
            slice_end = min(slice_start + SLICE_S, deadline)  # equal time for each target
            while time.monotonic() < slice_end:
                input_seed = master.getrandbits(64)
                counts[name] += 1
                try:
                    TARGETS[name](random.Random(input_seed))
                except FuzzFailure as failure:
                    failures[name].append((input_seed, failure))
                    print(f"FAILURE {name} (replay: --replay {name}:{input_seed}): {failure}\n"
                          f"  input ({len(failure.data)} bytes): {failure.data.hex()}", file=out, flush=True)
                    if len(failures[name]) >= MAX_FAILURES_PER_TARGET:
                        active.remove(name)
                        break
            spent[name] += time.monotonic() - slice_start
    elapsed = max(time.monotonic() - started, 1e-9)
    cpu = time.process_time() - cpu_started
    total = sum(counts.values())
    print(f"seed {seed}, {elapsed:.1f} s wall, {cpu:.1f} s CPU", file=out)
    for name in targets:
        rate = counts[name] / max(spent[name], 1e-9)
        print(f"  {name:<11} {counts[name]:>9} inputs  {rate:>9.0f}/s while running  "
              f"{len(failures[name])} failures", file=out)
    failed = sum(len(f) for f in failures.values())
    print(f"total {total} inputs, {total / elapsed:.0f}/s wall, {total / max(cpu, 1e-9):.0f}/s of CPU, "
          f"failures: {failed}", file=out, flush=True)
    return 1 if failed else 0


def replay(spec: str, out=sys.stdout) -> int:
    name, _, seed = spec.partition(":")
    try:
        TARGETS[name](random.Random(int(seed)))
    except FuzzFailure as failure:
        print(f"FAILURE {name}: {failure}\n  input: {failure.data.hex()}", file=out)
        return 1
    print(f"{name}:{seed} passes", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dev.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="master seed (default: random, printed)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, from {', '.join(TARGETS)} (default all)")
    parser.add_argument("--replay", metavar="TARGET:SEED", help="rerun one input from a failure line")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        parser.error(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    return run(args.seconds, seed, targets)


if __name__ == "__main__":
    sys.exit(main())
