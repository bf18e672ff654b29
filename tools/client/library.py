"""The client library that speaks the signer's protocol over a serial port (what WebDB uses).

    with SignerClient("/dev/ttyUSB0") as client:
        health = client.call("health")

Requests may be pipelined: `send` several, then `receive` answers in any order; `call`
waits for one id and keeps the others for later `receive`/`wait_for` calls.
"""
from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import serial

from core.wire.framing import FrameDecoder, FrameError, encode_frame
from core.wire.protocol import encode_request, unpack


MAX_ANSWER_BYTES = 32 * 1024 * 1024  # bounds a silence-based wait (a full 1M-entry CRL is 45 MB: diffs)
MAX_ERROR_FRAMES = 100  # error frames in one wait that mean noise, not a slow answer


class SignerTimeout(Exception):
    """No answer within the timeout: the signer is down, or the link is broken. `noise`:
    the wait ended on too many error frames; `stopped`: on the caller's abort."""

    def __init__(self, message: str, noise: bool = False, stopped: bool = False) -> None:
        super().__init__(message)
        self.noise, self.stopped = noise, stopped


@dataclass
class Response:
    request_id: str | int | None
    body: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answer(self) -> dict[str, Any]:
        """The body of an answer that is ok: the signer sends one with every success."""
        assert self.body is not None, "an answer with neither body nor error"
        return self.body


class SignerClient:
    def __init__(self, port: str, baudrate: int = 115200, timeout: float = 10.0,
                 exclusive: bool = False, timeout_is_silence: bool = False) -> None:
        self.port_path = port
        self.timeout = timeout
        # timeout_is_silence: the timeout counts from the last byte received, not from the
        # request, so a 4 MB CRL taking minutes at 115200 baud is not "no answer".
        self.timeout_is_silence = timeout_is_silence
        self.abort: Callable[[], bool] | None = None  # checked while waiting: True ends the wait
        # Called with the bytes received so far while waiting for one answer (a progress
        # display for a long answer: a full CRL over a slow line). The size is not known
        # before the answer's last frame, so no total is given.
        self.progress: Callable[[int], None] | None = None
        # exclusive: refuse the port while another exclusive client holds it (flock)
        self.serial = serial.Serial(port, baudrate, timeout=0.05, exclusive=exclusive or None)
        self.serial.reset_input_buffer()  # stale answers of an earlier client are not ours
        # A delimiter first: it ends any half frame an earlier client left on the line, so our
        # first frame is not glued to it (empty frames are skipped by the signer).
        self.serial.write(b"\x00")
        self.decoder = FrameDecoder(64 * 1024 * 1024)
        self.waiting: dict[Any, Response] = {}
        self.unmatched: list[Response] = []  # answers with id nil (frame errors)
        self._ids = itertools.count(1)
        self.received = 0  # bytes read from the port
        # Ids are the idempotency keys on every replicated signer: unique per client.
        self._prefix = f"c-{secrets.token_hex(8)}-"

    def __enter__(self) -> "SignerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.serial.close()

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def write_raw(self, data: bytes) -> None:
        self.serial.write(data)
        self.serial.flush()

    def send(self, command: str, body: dict[str, Any] | None = None,
             request_id: str | int | None = None) -> str | int:
        request_id = self.new_id() if request_id is None else request_id
        self.write_raw(encode_frame(encode_request(request_id, command, body)))
        return request_id

    def receive(self, timeout: float | None = None) -> Response:
        """The next answer, whatever its id."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.waiting:
                return self.waiting.pop(next(iter(self.waiting)))
            if self.unmatched:
                return self.unmatched.pop(0)
            self._read_some(deadline)

    def wait_for(self, request_id: str | int, timeout: float | None = None) -> Response:
        budget = self.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + budget
        # With timeout_is_silence, only clean bytes (no frame error among them) push the
        # deadline on, and never past the time the largest answer takes at this baud rate:
        # line noise must not keep the client waiting for ever.
        cap = started + budget + MAX_ANSWER_BYTES * 10 / max(self.serial.baudrate, 1)
        errors_before = len(self.unmatched)
        received_before = self.received
        while request_id not in self.waiting:
            if self.abort is not None and self.abort():
                raise SignerTimeout("stopped while waiting for the signer", stopped=True)
            clean = self._read_some(deadline)
            if self.progress is not None:
                self.progress(self.received - received_before)
            if len(self.unmatched) - errors_before > MAX_ERROR_FRAMES:
                raise SignerTimeout(f"{len(self.unmatched) - errors_before} error frames while waiting "
                                    f"on {self.port_path}: line noise?", noise=True)
            if clean and self.timeout_is_silence:
                deadline = min(time.monotonic() + budget, cap)
        return self.waiting.pop(request_id)

    def call(self, command: str, body: dict[str, Any] | None = None,
             request_id: str | int | None = None, timeout: float | None = None) -> Response:
        return self.wait_for(self.send(command, body, request_id), timeout)

    def _read_some(self, deadline: float) -> bool:
        """Read what is there (up to 50 ms); True when bytes came and none was a frame error."""
        if time.monotonic() > deadline:
            raise SignerTimeout(f"no answer from the signer on {self.port_path} in time")
        data = self.serial.read(self.serial.in_waiting or 1)
        self.received += len(data)
        clean = bool(data)
        for result in self.decoder.feed(data):
            response = (Response(None, error={"code": result.code, "message": result.message})
                        if isinstance(result, FrameError) else parse_response(result))
            if response.request_id is None:
                self.unmatched.append(response)
                clean = False
            else:
                self.waiting[response.request_id] = response
        return clean


def parse_response(payload: bytes) -> Response:
    try:
        obj = unpack(payload)
    except Exception as exc:  # a CRC-valid frame that is not msgpack: a bug or a foreign device
        return Response(None, error={"code": "bad_msgpack", "message": f"answer is not msgpack: {exc}"})
    if not isinstance(obj, dict):
        return Response(None, error={"code": "bad_envelope", "message": "answer is not a map"})
    return Response(obj.get("id"), body=obj.get("body"), error=obj.get("error"))
