"""Issue 18: the Dispatcher gives each X509Signer worker at most WINDOW requests at a time;
the others wait in the Dispatcher, oldest first, with their deadline running from arrival
(actors/spine/dispatcher.py). Mock peers, as in test_fast_path.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from actors.spine import dispatcher as dispatcher_module
from actors.spine.dispatcher import Dispatcher
from core.wire.protocol import encode_request, unpack
from messages import Batch, CommandReply, CommandRequest, Configure, FrameReceived, FrameToSend
from tests.support.actor_harness import ActorHarness

CONFIG = SimpleNamespace(protocol=SimpleNamespace(max_payload_bytes=4096, handler_timeout_s=5.0))
PEERS = {"serial_link": "SL", "dispatcher": "D", "framing": "F", "health": "H",
         "x509_signer": "X1", "x509_signer_2": "X2"}


@pytest.fixture
def window_of_2(monkeypatch):
    monkeypatch.setitem(dispatcher_module.WINDOW, "x509_signer", 2)
    return ActorHarness(Dispatcher, CONFIG, PEERS)


def sign(h: ActorHarness, *ids: str) -> None:
    for request_id in ids:
        h.deliver(FrameReceived(encode_request(request_id, "sign_x509", {"n": request_id})), "F")


def routed(h: ActorHarness) -> list[tuple[str, str]]:
    return [(address, message.request_id) for address, message in h.take(CommandRequest)]


def answers(h: ActorHarness) -> list[tuple[str, str | None]]:
    return [(a["id"], a.get("error", {}).get("code")) for a in
            (unpack(m.payload) for _, m in h.take(FrameToSend))]


def test_the_shipped_window_is_16_per_x509_worker():
    assert dispatcher_module.WINDOW == {"x509_signer": 16}


def test_requests_beyond_the_window_wait_and_go_to_the_first_worker_with_room(window_of_2):
    h = window_of_2
    sign(h, "s0", "s1", "s2", "s3", "s4", "s5")
    assert routed(h) == [("X1", "s0"), ("X2", "s1"), ("X1", "s2"), ("X2", "s3")]
    assert h.actor.figures()["in_flight"] == 4 and h.actor.figures()["waiting"] == 2
    # X2 answers s1: the oldest waiting request (s4) goes to X2, with its own body.
    h.deliver(CommandReply(_tag_of(h, "s1"), body={"ok": 1}), "X2")
    sent = h.take(CommandRequest)
    assert [(a, m.request_id, m.body) for a, m in sent] == [("X2", "s4", {"n": "s4"})]
    assert answers(h) == [("s1", None)]
    h.deliver(CommandReply(_tag_of(h, "s0"), body={}), "X1")
    assert [(a, m.request_id) for a, m in h.take(CommandRequest)] == [("X1", "s5")]
    assert h.actor.figures()["waiting"] == 0 and h.actor.figures()["in_flight"] == 4


def _tag_of(h: ActorHarness, request_id: str) -> int:
    for tag, flight in h.actor.pending.items():
        if flight.request_id == request_id:
            return tag
    raise AssertionError(f"{request_id} is not pending")


def test_a_waiting_request_is_in_flight_for_duplicates_and_other_commands_never_wait(window_of_2):
    h = window_of_2
    sign(h, "s0", "s1", "s2", "s3", "s4")
    routed(h)
    sign(h, "s4")  # waiting, not sent: still a duplicate
    assert answers(h) == [("s4", "duplicate_request")]
    h.deliver(FrameReceived(encode_request("h1", "health")), "F")
    assert routed(h) == [("H", "h1")]


def test_a_waiting_request_keeps_its_deadline_from_arrival(window_of_2):
    h = window_of_2
    sign(h, "s0", "s1", "s2", "s3", "s4")
    routed(h)
    h.pass_time(5.1)
    assert sorted(answers(h)) == [(f"s{i}", "handler_unavailable") for i in range(5)]
    # A late reply frees nothing twice, and the answered waiting request is never sent.
    h.deliver(CommandReply(1, body={}), "X1")
    assert routed(h) == [] and answers(h) == []
    assert h.actor.figures()["in_flight"] == 0 and h.actor.figures()["waiting"] == 0
    sign(h, "t0", "t1", "t2", "t3")  # every slot is free again
    assert len(routed(h)) == 4


def test_a_restarted_worker_fails_its_own_requests_and_gets_the_waiting_ones(window_of_2):
    h = window_of_2
    sign(h, "s0", "s1", "s2", "s3", "s4", "s5")
    routed(h)
    h.deliver(Configure("dispatcher", CONFIG, dict(PEERS, x509_signer_2="X2-new"), first=False), "supervisor")
    assert sorted(answers(h)) == [("s1", "handler_unavailable"), ("s3", "handler_unavailable")]
    assert routed(h) == [("X2-new", "s4"), ("X2-new", "s5")]


def test_a_burst_still_reaches_a_worker_as_one_batch_of_a_full_window(monkeypatch):
    """The window keeps the batches of the fast path (docs/actors.md#batches)."""
    sent: list = []
    from thespian.actors import ActorTypeDispatcher
    monkeypatch.setattr(ActorTypeDispatcher, "send", lambda self, address, message: sent.append((address, message)),
                        raising=False)
    h = ActorHarness(Dispatcher, CONFIG, PEERS)
    del h.actor.send  # the batching send, over the recorded transport
    sent.clear()
    h.deliver(Batch(tuple(FrameReceived(encode_request(f"s{i}", "sign_x509", {})) for i in range(40))), "F")
    by_peer = dict(sent)
    assert [len(by_peer[worker].messages) for worker in ("X1", "X2")] == [16, 16]
    assert h.actor.figures()["waiting"] == 8
