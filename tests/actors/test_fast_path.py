"""Issue 18, the signing fast path, actor by actor with mock peers: messages for one peer
produced while handling one message go as one Batch (actors/base.py), and the Dispatcher
spreads sign_x509 over the X509Signer pool (actors/handlers/pool.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from thespian.actors import ActorTypeDispatcher

from actors.spine.dispatcher import Dispatcher
from actors.spine.framing import Framing
from core.wire.framing import encode_frame
from core.wire.protocol import encode_request, unpack
from messages import (ActorStatusReply, ActorStatusRequest, Batch, CommandReply, CommandRequest,
                      FrameReceived, FrameToSend)
from tests.support.actor_harness import ActorHarness

CONFIG = SimpleNamespace(protocol=SimpleNamespace(max_payload_bytes=4096, handler_timeout_s=5.0))
PEERS = {"serial_link": "SL", "dispatcher": "D", "framing": "F", "health": "H",
         "x509_signer": "X1", "x509_signer_2": "X2"}


@pytest.fixture
def transport(monkeypatch):
    """What really leaves an actor: the harness records at Thespian's send, not the actor's."""
    sent: list = []
    monkeypatch.setattr(ActorTypeDispatcher, "send", lambda self, address, message: sent.append((address, message)),
                        raising=False)
    return sent


def on_the_wire(actor_class, transport) -> ActorHarness:
    h = ActorHarness(actor_class, CONFIG, PEERS)
    del h.actor.send  # the class's send (the batching one) again, above the recorded transport
    transport.clear()
    return h


def test_frames_of_one_chunk_reach_the_dispatcher_in_one_message(transport):
    h = on_the_wire(Framing, transport)
    h.deliver(SerialBytesReceivedOf(b"one", b"two", b"three"), "SL")
    [(address, batch)] = transport
    assert address == "D" and isinstance(batch, Batch)
    assert [m.payload for m in batch.messages] == [b"one", b"two", b"three"]  # in order
    transport.clear()
    h.deliver(SerialBytesReceivedOf(b"alone"), "SL")
    assert transport == [("D", FrameReceived(b"alone"))]  # a single message is not wrapped


def SerialBytesReceivedOf(*payloads: bytes):
    from messages import SerialBytesReceived
    return SerialBytesReceived(b"".join(encode_frame(p) for p in payloads))


def test_a_batch_is_handled_message_by_message_and_its_sends_batched_per_peer(transport):
    h = on_the_wire(Dispatcher, transport)
    h.deliver(Batch([FrameReceived(encode_request(f"s{i}", "sign_x509", {})) for i in range(4)]
                    + [FrameReceived(encode_request("h", "health")), FrameReceived(b"\xc1")]), "F")
    by_peer = dict(transport)
    assert set(by_peer) == {"X1", "X2", "H", "F"}
    assert [m.request_id for m in by_peer["X1"].messages] == ["s0", "s2"]  # spread over the pool
    assert [m.request_id for m in by_peer["X2"].messages] == ["s1", "s3"]
    assert isinstance(by_peer["H"], CommandRequest)
    assert unpack(by_peer["F"].payload)["error"]["code"] == "bad_msgpack"
    assert h.actor.handled == 1 + 6  # Configure, then each message of the batch


def test_sends_outside_the_address_book_are_never_batched(transport):
    h = on_the_wire(Dispatcher, transport)
    h.deliver(Batch([ActorStatusRequest(1), ActorStatusRequest(2)]), "supervisor")
    assert [(a, type(m)) for a, m in transport] == [("supervisor", ActorStatusReply)] * 2


def test_dispatcher_sends_each_sign_x509_to_the_least_busy_worker():
    h = ActorHarness(Dispatcher, CONFIG, PEERS)
    for i in range(3):
        h.deliver(FrameReceived(encode_request(f"s{i}", "sign_x509", {})), "F")
    routed = h.take(CommandRequest)
    assert [a for a, _ in routed] == ["X1", "X2", "X1"]
    h.deliver(CommandReply(routed[0][1].tag, body={}), "X1")
    h.deliver(CommandReply(routed[2][1].tag, body={}), "X1")
    assert [unpack(m.payload)["id"] for _, m in h.take(FrameToSend)] == ["s0", "s2"]
    for i in range(3, 5):
        h.deliver(FrameReceived(encode_request(f"s{i}", "sign_x509", {})), "F")
    assert [a for a, _ in h.take(CommandRequest)] == ["X1", "X1"]  # X2 still has one
    # A restarted worker loses only its own requests.
    h.deliver(ConfigureRewired(dict(PEERS, x509_signer_2="X2-new")), "supervisor")
    failed = [unpack(m.payload) for _, m in h.take(FrameToSend)]
    assert [(a["id"], a["error"]["code"]) for a in failed] == [("s1", "handler_unavailable")]
    assert "x509_signer_2 restarted" in failed[0]["error"]["message"]
    assert h.actor.figures()["in_flight"] == 2


def ConfigureRewired(addresses):
    from messages import Configure
    return Configure("dispatcher", CONFIG, addresses, first=False)


def test_a_poisoned_batch_answers_each_request_in_it():
    from thespian.actors import PoisonMessage
    h = ActorHarness(Dispatcher, CONFIG, PEERS)
    for i in range(2):
        h.deliver(FrameReceived(encode_request(f"s{i}", "sign_x509", {})), "F")
    routed = [m for _, m in h.take(CommandRequest)]
    h.deliver(PoisonMessage(Batch(routed), None), "X1")
    failed = [unpack(m.payload) for _, m in h.take(FrameToSend)]
    assert sorted((a["id"], a["error"]["code"]) for a in failed) == [("s0", "internal_error"), ("s1", "internal_error")]
