"""core/runtime/thespian_tuning.py: the transport waits with poll() and describes the signer's
messages for its debug log without their repr (issue 18). A real actor system using both
runs in every end-to-end test; here each change is checked on its own."""
from __future__ import annotations

import selectors
import socket
from dataclasses import dataclass

from core.runtime.thespian_tuning import describe, tune_thespian
from messages import Batch, CommandReply, HsmSignRequest


@dataclass(frozen=True)
class Loud:
    """Not a signer message: described by str(), as Thespian did."""
    text: str

    def __str__(self) -> str:
        return f"loud {self.text}"


class ReprCounted(HsmSignRequest):
    reprs = 0

    def __repr__(self) -> str:
        type(self).reprs += 1
        return "counted"


def test_signer_messages_are_described_by_class_and_tag():
    assert describe(HsmSignRequest(7, "k", "sha256-rsa-pkcs1", b"\x01" * 5000)) == "HsmSignRequest(tag=7)"
    assert describe(Batch((CommandReply(1), CommandReply(2)))) == "Batch(2 messages)"
    assert describe(Loud("x")) == "loud x"


def test_thespian_waits_with_poll_and_logs_no_message_repr():
    from thespian.system import transport
    from thespian.system.transport import TCPTransport as tcp

    tune_thespian()
    tune_thespian()  # a second call changes nothing
    assert tcp.selectors.DefaultSelector is selectors.PollSelector
    message = Batch(tuple(ReprCounted(i, "k", "m", b"x" * 2000) for i in range(50)))
    envelope = transport.ReceiveEnvelope("sender-address", message)
    intent = transport.TransmitIntent("target-address", message)
    ReprCounted.reprs = 0
    assert "Batch(50 messages)" in envelope.identify()
    assert "Batch(50 messages)" in intent.identify() and "pending" in intent.identify()
    assert ReprCounted.reprs == 0
    assert "loud y" in transport.ReceiveEnvelope("s", Loud("y")).identify()


def test_poll_reports_readiness_as_thespian_reads_it():
    """What the transport loop relies on: readable and writable sockets are reported."""
    left, right = socket.socketpair()
    try:
        selector = selectors.PollSelector()
        selector.register(left.fileno(), selectors.EVENT_READ)
        selector.register(right.fileno(), selectors.EVENT_WRITE)
        assert [(key.fd, events) for key, events in selector.select(0)] == [(right.fileno(), selectors.EVENT_WRITE)]
        right.send(b"x")
        ready = {key.fd: events for key, events in selector.select(0)}
        assert ready[left.fileno()] & selectors.EVENT_READ
        selector.close()
    finally:
        left.close()
        right.close()
