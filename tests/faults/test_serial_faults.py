"""Faults on the serial line, against the real signer process (item 3 of the hardening issue).

The signer runs in `serial.mode: device` on a symlink this module controls, pointing at one
end (`path_a`) of a PtyRelay owned by the test process; clients open the other end
(`path_b`). So the test can pull the "device" away and plug a new one in, exactly as a USB
serial adapter is unplugged and re-plugged. Every case ends with the signer answering a good
request.
"""
from __future__ import annotations

import os
import random
import time
import tty
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cobs import cobs

from core.wire.framing import (DEFAULT_MAX_PAYLOAD, FrameDecoder, FrameError, encode_frame,
                          max_encoded_length)
from core.wire.protocol import ERROR_CODES, encode_request
from tests.support.helpers import SignerProcess, signer_config
from tools.client.library import SignerClient
from core.runtime.ptyrelay import PtyRelay

pytestmark = pytest.mark.e2e

FRAME_ERRORS = {"bad_cobs", "bad_crc", "frame_too_short", "frame_too_large"}
MAX = DEFAULT_MAX_PAYLOAD  # the dev config keeps the default limit


class DeviceSigner(SignerProcess):
    """`signer run` in device mode: it prints no client-pty line, so wait for its
    "signer: running" line on stderr (a file or a pipe, whichever tests/support/helpers.py gives)."""

    def _read_client_path(self) -> str:
        deadline = time.monotonic() + 90
        path = getattr(self, "stderr_path", None)
        pipe = self.process.stderr
        while time.monotonic() < deadline:
            text = pipe.readline() if pipe is not None else (
                Path(path).read_text(errors="replace") if path and Path(path).exists() else "")
            if "signer: running" in text:
                return ""
            if self.process.poll() is not None:
                raise RuntimeError(f"signer exited {self.process.returncode}: {text[-4000:]}")
            if pipe is None:
                time.sleep(0.1)
        raise RuntimeError("the signer did not say it was running within 90 s")


@dataclass
class Line:
    """The signer, the device symlink it opens, and the relay currently behind it."""
    signer: DeviceSigner
    device: Path
    relay: PtyRelay

    @property
    def client_path(self) -> str:
        return self.relay.path_b

    def serial_link(self) -> dict:
        return next(r for r in self.signer.status() if r["name"] == "serial_link")

    def framing(self) -> dict:
        return next(r for r in self.signer.status() if r["name"] == "framing")


@pytest.fixture(scope="module")
def line(dev_data, tmp_path_factory):
    target = tmp_path_factory.mktemp("serial-faults")
    device = target / "ttyUSB-signer"
    relay = PtyRelay(link_a=str(device)).start()  # the relay makes (and on stop removes) the link
    config = signer_config(dev_data, target)
    data = yaml.safe_load(config.read_text())
    data["serial"].update(mode="device", device=str(device), link_path=None,
                          reopen_max_backoff_s=0.5)
    config.write_text(yaml.safe_dump(data))
    state = Line(DeviceSigner(config, log_dir=target), device, relay)
    wait_until(lambda: state.serial_link().get("open"), 30, "the signer never opened the device")
    yield state
    state.signer.stop()
    state.relay.stop()



@pytest.fixture
def client(line):
    with SignerClient(line.client_path, timeout=20) as c:
        yield c


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} (last: {value!r})")


def request_frame(request_id: str, command: str = "health", body: dict | None = None) -> bytes:
    return encode_frame(encode_request(request_id, command, body))


def expected_frame_errors(noise: bytes) -> list[str]:
    """What the signer's Framing answers for `noise` (which ends in a delimiter)."""
    results = FrameDecoder(MAX).feed(noise)
    assert all(isinstance(r, FrameError) for r in results), "noise that decodes: pick another seed"
    return [r.code for r in results]


def drain_unmatched(client: SignerClient, count: int, timeout: float = 10) -> list[str]:
    """The codes of the next `count` answers with id nil (frame errors)."""
    deadline = time.monotonic() + timeout
    while len(client.unmatched) < count:
        client._read_some(deadline)
    codes = [r.error["code"] for r in client.unmatched]
    client.unmatched.clear()
    return codes


def assert_good(client: SignerClient, request_id: str | None = None, timeout: float = 20) -> None:
    """The closing check of every case: a good request is answered, with its id."""
    response = client.call("health", request_id=request_id, timeout=timeout)
    assert response.ok and response.body["healthy"] is True, response


# --- the client end closed and reopened ------------------------------------------------------

def test_client_closes_and_reopens_its_end_repeatedly(line):
    for round_ in range(6):
        with SignerClient(line.client_path, timeout=20) as c:
            assert c.call("ca_info", request_id=f"reopen-{round_}").ok
            if round_ % 2:  # close with a request in flight: its answer is left behind unread
                c.send("health", request_id=f"abandoned-{round_}")
    with SignerClient(line.client_path, timeout=20) as c:
        assert_good(c, "reopen-last")
        # An abandoned answer still in flight when this client opened may reach it: that is
        # why answers are matched by id. Nothing else may.
        assert all(str(i).startswith("abandoned-") for i in c.waiting) and c.unmatched == []


def test_client_dies_mid_frame_and_the_next_client_flushes_with_a_delimiter(line):
    """Half a frame from a dead client stays in the signer's buffer; the protocol's remedy
    is a 0x00 ("a sender may send 0x00 at any time"): the half frame is answered with a
    frame error (id nil), and the new client's request goes through."""
    half = request_frame("dead-client")[:17]
    with SignerClient(line.client_path) as c:
        c.write_raw(half)
    time.sleep(0.2)
    with SignerClient(line.client_path, timeout=20) as c:
        c.write_raw(b"\x00")
        assert drain_unmatched(c, 1) == expected_frame_errors(half + b"\x00")
        assert_good(c, "after-flush")


def test_client_dies_mid_frame_and_the_next_clients_first_call_is_answered(line):
    half = request_frame("dead-client-2")[:17]
    with SignerClient(line.client_path) as c:
        c.write_raw(half)
    time.sleep(0.2)
    try:
        with SignerClient(line.client_path, timeout=3) as c:
            first = c.call("health", request_id="first-after-death")
    finally:  # leave the link clean for the next case either way
        with SignerClient(line.client_path, timeout=20) as c:
            c.write_raw(b"\x00")
            assert_good(c)
    assert first.ok


# --- the device removed and re-created -------------------------------------------------------

def test_device_removed_and_recreated(line):
    with SignerClient(line.client_path, timeout=20) as c:
        assert_good(c, "before-unplug")
    opens_before = line.serial_link()["opens"]
    errors_before = line.serial_link()["read_errors"]
    for cycle in range(2):
        line.relay.stop()  # the device is gone: ptys closed, symlink removed
        assert not line.device.exists()
        gap = wait_until(lambda: (lambda r: r if not r["open"] else None)(line.serial_link()),
                         15, "serial_link still says open after the device went away")
        assert gap["read_errors"] > errors_before and gap["last_port_error"]
        time.sleep(1.0)  # a few failed reopens (backoff 0.1 s, doubling to 0.5 s)
        assert line.serial_link()["open"] is False
        errors_before = gap["read_errors"]

        line.relay = PtyRelay(link_a=str(line.device)).start()  # plugged in again: new ptys
        record = wait_until(lambda: (lambda r: r if r["open"] else None)(line.serial_link()),
                            15, "serial_link did not reopen the re-created device")
        assert record["opens"] >= opens_before + cycle + 1
        with SignerClient(line.client_path, timeout=20) as c:
            assert_good(c, f"after-replug-{cycle}")
            assert c.call("ca_info").ok


# --- damaged and odd streams -----------------------------------------------------------------

def test_frame_split_at_every_byte_boundary(client):
    frame = request_frame("cut-00")
    ids = []
    for k in range(1, len(frame)):
        request_id = f"cut-{k:02d}"
        frame = request_frame(request_id)
        client.write_raw(frame[:k])
        time.sleep(0.02)
        client.write_raw(frame[k:])
        ids.append(request_id)
    for request_id in ids:
        assert client.wait_for(request_id).ok, request_id
    assert client.unmatched == []
    assert_good(client)


def test_one_byte_per_write(client):
    for byte in request_frame("bytewise"):
        client.write_raw(bytes([byte]))
    assert client.wait_for("bytewise").ok
    assert_good(client)


def test_two_frames_in_one_write(client):
    client.write_raw(request_frame("pair-1") + request_frame("pair-2", "ca_info"))
    assert client.wait_for("pair-1").ok and client.wait_for("pair-2").ok
    client.write_raw(b"".join(request_frame(f"batch-{i}", "ca_info") for i in range(20)))
    assert all(client.wait_for(f"batch-{i}").ok for i in range(20))
    assert client.unmatched == []
    assert_good(client)


def damaged_crc(payload: bytes) -> bytes:
    return cobs.encode(payload + (zlib.crc32(payload) ^ 1).to_bytes(4, "big")) + b"\x00"


NOISE = {
    "random_bytes": lambda rng: bytes(rng.randrange(256) for _ in range(300)) + b"\x00",
    "random_nonzero": lambda rng: bytes(rng.randrange(1, 256) for _ in range(300)) + b"\x00",
    "truncated_frame": lambda rng: request_frame("never")[:20] + b"\x00",
    "flipped_bit": lambda rng: damaged_crc(encode_request("flipped", "health")),
    "short_frames": lambda rng: b"\x01\x00\x02x\x00\x03xy\x00",
    "ascii_line_noise": lambda rng: b"AT+RESET\r\nOK\r\n+++" + b"\x00",
}


@pytest.mark.parametrize("kind", sorted(NOISE))
def test_noise_between_frames(client, kind):
    noise = NOISE[kind](random.Random(kind))
    expected = expected_frame_errors(noise)
    client.write_raw(request_frame(f"{kind}-before") + noise + request_frame(f"{kind}-after"))
    assert client.wait_for(f"{kind}-before").ok and client.wait_for(f"{kind}-after").ok
    assert drain_unmatched(client, len(expected)) == expected
    assert set(expected) <= FRAME_ERRORS
    assert_good(client)


def test_zero_flood_then_good_frame(client):
    client.write_raw(b"\x00" * 100_000 + request_frame("after-zeros"))
    assert client.wait_for("after-zeros", timeout=30).ok
    assert client.unmatched == []  # empty frames are skipped silently
    # A partial frame flushed by a flood: one frame error, then the good frame.
    partial = request_frame("cut-short")[:12]
    client.write_raw(partial + b"\x00" * 100_000 + request_frame("after-flush"))
    assert client.wait_for("after-flush", timeout=30).ok
    assert drain_unmatched(client, 1) == expected_frame_errors(partial + b"\x00")
    assert_good(client)


def sized_request(request_id: str, size: int) -> bytes:
    """A health request padded (health ignores body fields) to exactly `size` payload bytes."""
    pad = 0
    for _ in range(4):  # the bin header grows with the pad: converge on the exact size
        payload = encode_request(request_id, "health", {"pad": b"\x01" * pad})
        pad += size - len(payload)
    assert len(payload) == size
    return payload


def test_frame_over_the_limit_then_good_frame_in_the_same_write(line, client):
    oversized = b"\x01" * (max_encoded_length(MAX) + 4096) + b"\x00"
    client.write_raw(oversized + request_frame("after-oversize"))
    assert client.wait_for("after-oversize", timeout=60).ok
    assert drain_unmatched(client, 1) == ["frame_too_large"]
    # Zeros encode compactly: this one passes the byte cap and fails after decoding.
    compact = encode_frame(b"\x00" * (MAX + 1))
    assert len(compact) - 1 <= max_encoded_length(MAX)
    client.write_raw(compact + request_frame("after-compact"))
    assert client.wait_for("after-compact", timeout=60).ok
    assert drain_unmatched(client, 1) == ["frame_too_large"]
    assert line.framing()["buffered_bytes"] == 0
    assert_good(client)


def test_payload_of_exactly_the_limit_is_accepted_one_more_is_not(client):
    client.write_raw(encode_frame(sized_request("at-limit", MAX))
                     + encode_frame(sized_request("over-limit", MAX + 1)))
    assert client.wait_for("at-limit", timeout=60).ok
    assert drain_unmatched(client, 1, timeout=60) == ["frame_too_large"]
    assert "over-limit" not in client.waiting
    assert_good(client)


def test_frame_errors_are_typed(client):
    """Every answer the damaged-stream cases produced carries a documented code."""
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(2000)) + b"\x00"
    expected = expected_frame_errors(noise)
    client.write_raw(noise)
    codes = drain_unmatched(client, len(expected))
    assert codes == expected and set(codes) <= set(ERROR_CODES)
    assert_good(client)


# --- SerialLink's end-of-file check, in-process on a bare pty ---------------------------------

@pytest.fixture
def bare_link():
    """SerialLink on the slave of a fresh pty; the test holds the master (the 'device')."""
    from actors.spine.serial_link import SerialLink
    from tests.support.actor_harness import ActorHarness

    master, slave = os.openpty()
    tty.setraw(slave)
    config = SimpleNamespace(serial=SimpleNamespace(device=os.ttyname(slave), baudrate=115200,
                                                    reopen_max_backoff_s=1.0))
    harness = ActorHarness(SerialLink, config, {"framing": "F"})
    yield harness, master
    harness.actor.shutdown()
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_vanished_device_is_detected_on_the_bare_pty(bare_link):
    """The control for the next test: a hung-up line is seen as gone."""
    from thespian.actors import WatchMessage

    h, master = bare_link
    fd = h.actor.port.fileno()
    os.close(master)
    h.deliver(WatchMessage([fd]))
    assert h.actor.port is None and h.actor.read_errors == 1


def test_bytes_arriving_between_an_empty_read_and_select_do_not_close_the_port(bare_link, monkeypatch):
    import select as real_select

    from thespian.actors import WatchMessage

    import actors.spine.serial_link as serial_link

    h, master = bare_link
    fd = h.actor.port.fileno()

    class PollAfterAByteArrived:
        """The readiness check after an empty read, with a byte landing just before it."""

        def __init__(self):
            self.poller = real_select.poll()

        def register(self, *args):
            self.poller.register(*args)

        def poll(self, timeout):
            os.write(master, b"\x00")  # the line delivers a byte just after the empty read
            time.sleep(0.02)
            return self.poller.poll(timeout)

    checks = []
    fake = SimpleNamespace(**{name: getattr(real_select, name) for name in dir(real_select)
                              if name.startswith("POLL")})
    fake.poll = lambda: checks.append(1) or PollAfterAByteArrived()
    monkeypatch.setattr(serial_link, "select", fake)
    h.deliver(WatchMessage([fd]))  # a wake-up whose bytes an earlier read already took
    assert checks, "the empty read was not followed by a readiness check"
    assert h.actor.port is not None and h.actor.read_errors == 0, h.actor.last_port_error
    assert h.actor.errors == 0, h.actor.last_error


# --- status of the serial path's actors before they are configured -------------------------

@pytest.mark.parametrize("name", ["serial_link", "framing", "dispatcher"])
def test_status_before_configure_is_answered(name):
    from actors.supervisor import CHILDREN
    from messages import ActorStatusReply, ActorStatusRequest

    actor, sent = CHILDREN[name](), []
    actor.send = lambda address, message: sent.append(message)
    actor.receiveMessage(ActorStatusRequest(7), "supervisor")
    assert [type(m) for m in sent] == [ActorStatusReply] and actor.errors == 0, actor.last_error


# --- found by tests/faults/test_fuzz.py, shown end to end ------------------------------------------

def test_revocation_dated_1900_leaves_fetch_crl_working(line):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(Encoding.DER))
    with SignerClient(line.client_path, timeout=60) as c:
        signed = c.call("sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                      "subject": [["CN", "www.example.org"]],
                                      "sans": [["dns", "www.example.org"]]})
        assert signed.ok, signed.error
        revoked = c.call("revoke_x509", {"issuer": "root", "serial": signed.body["serial"],
                                         "time": "1900-01-01T00:00:00Z"})
        try:
            fetched = [c.call("fetch_crl", {"issuer": "root"}, timeout=60) for _ in range(2)]
        finally:
            assert_good(c)
    # Either the revocation is refused up front, or the CRL is still built afterwards.
    assert (not revoked.ok and revoked.error["code"] == "bad_request") or all(f.ok for f in fetched), \
        [f.error for f in fetched]
