"""SerialLink alone, on a real pty pair, with a mock Framing peer."""
import os
import select
import time
from types import SimpleNamespace

import pytest
from thespian.actors import ThespianWatch, WakeupMessage, WatchMessage

from actors.spine.serial_link import DRAIN, REOPEN, SerialLink
from messages import SerialBytesReceived, SerialBytesToSend
from tests.support.actor_harness import ActorHarness
from core.runtime.ptyrelay import PtyRelay


@pytest.fixture
def link():
    relay = PtyRelay().start()
    config = SimpleNamespace(serial=SimpleNamespace(device=relay.path_a, baudrate=115200,
                                                    reopen_max_backoff_s=1.0))
    harness = ActorHarness(SerialLink, config, {"framing": "F"})
    other = os.open(relay.path_b, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    yield harness, other, relay
    os.close(other)
    harness.actor.shutdown()
    relay.stop()


def read_all(fd, want, timeout=10.0):
    data, deadline = bytearray(), time.monotonic() + timeout
    while len(data) < want and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            data += os.read(fd, 65536)
    return bytes(data)


def test_reads_are_forwarded_and_the_watch_is_always_returned(link):
    h, other, _ = link
    os.write(other, b"hello")
    time.sleep(0.2)
    result = h.deliver(WatchMessage([h.actor.port.fileno()]))
    assert isinstance(result, ThespianWatch)
    assert [m.data for _, m in h.take(SerialBytesReceived)] == [b"hello"]
    assert isinstance(h.deliver(WatchMessage([h.actor.port.fileno()])), ThespianWatch)  # nothing to read


def test_a_large_write_drains_without_blocking(link):
    h, other, _ = link
    payload = os.urandom(1_000_000)
    started = time.monotonic()
    h.deliver(SerialBytesToSend(payload), "F")
    assert time.monotonic() - started < 1.0  # the actor returned with bytes still queued
    received = bytearray()
    deadline = time.monotonic() + 30
    while len(received) < len(payload) and time.monotonic() < deadline:
        received += read_all(other, 1, timeout=0.05)
        h.deliver(WakeupMessage(0.005, DRAIN))
    assert bytes(received) == payload
    assert h.actor.figures()["bytes_out"] == len(payload) and h.actor.figures()["outbox_bytes"] == 0


def test_a_missing_device_is_reopened_with_backoff(tmp_path):
    config = SimpleNamespace(serial=SimpleNamespace(device=str(tmp_path / "gone"), baudrate=115200,
                                                    reopen_max_backoff_s=1.0))
    h = ActorHarness(SerialLink, config, {"framing": "F"})
    assert h.actor.port is None and h.wakeups[-1] == (0.1, REOPEN)
    h.deliver(SerialBytesToSend(b"lost"), "F")
    assert h.actor.figures()["dropped_bytes"] == 4
    relay = PtyRelay(link_a=str(tmp_path / "gone")).start()
    try:
        h.deliver(WakeupMessage(0.1, REOPEN))
        assert h.actor.port is not None and h.actor.figures()["opens"] == 1
    finally:
        h.actor.shutdown()
        relay.stop()
