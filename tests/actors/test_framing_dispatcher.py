"""Framing and Dispatcher actors, each alone with mock peers."""
from types import SimpleNamespace

from thespian.actors import PoisonMessage, WakeupMessage

from actors.spine.dispatcher import Dispatcher
from actors.spine.framing import Framing
from core.wire.framing import FrameDecoder, encode_frame
from core.wire.protocol import encode_request, unpack
from messages import (CommandReply, CommandRequest, Configure, FrameReceived, FrameToSend,
                      SerialBytesReceived, SerialBytesToSend)
from tests.support.actor_harness import ActorHarness

CONFIG = SimpleNamespace(protocol=SimpleNamespace(max_payload_bytes=4096, handler_timeout_s=5.0))
PEERS = {"serial_link": "SL", "dispatcher": "D", "framing": "F", "health": "H", "ca_info": "C"}


def decode_sent_frames(sent):
    decoder = FrameDecoder()
    return [unpack(p) for _, m in sent for p in decoder.feed(m.data)]


def test_framing_passes_good_frames_and_answers_bad_ones():
    h = ActorHarness(Framing, CONFIG, PEERS)
    stream = encode_frame(b"one") + b"\x05xx\x00" + encode_frame(b"two")
    for i in range(len(stream)):  # one byte at a time
        h.deliver(SerialBytesReceived(stream[i:i + 1]), "SL")
    assert [(a, m.payload) for a, m in h.take(FrameReceived)] == [("D", b"one"), ("D", b"two")]
    [error] = decode_sent_frames(h.take(SerialBytesToSend))
    assert error["id"] is None and error["error"]["code"] == "bad_cobs"
    assert h.actor.figures()["frame_errors"] == {"bad_cobs": 1}


def test_framing_oversize_then_good():
    h = ActorHarness(Framing, CONFIG, PEERS)
    h.deliver(SerialBytesReceived(encode_frame(b"x" * 10000) + encode_frame(b"ok")), "SL")
    assert [m.payload for _, m in h.take(FrameReceived)] == [b"ok"]
    [error] = decode_sent_frames(h.take(SerialBytesToSend))
    assert error["error"]["code"] == "frame_too_large"


def test_framing_encodes_outgoing():
    h = ActorHarness(Framing, CONFIG, PEERS)
    h.deliver(FrameToSend(b"answer"), "D")
    address, message = h.only(SerialBytesToSend)
    assert address == "SL" and message.data == encode_frame(b"answer")


def dispatcher():
    return ActorHarness(Dispatcher, CONFIG, PEERS)


def answers(h):
    return [unpack(m.payload) for _, m in h.take(FrameToSend)]


def test_dispatcher_routes_and_answers_out_of_order():
    h = dispatcher()
    h.deliver(FrameReceived(encode_request("a", "health")), "F")
    h.deliver(FrameReceived(encode_request("b", "ca_info", {"k": 1})), "F")
    routed = h.take(CommandRequest)
    assert [(a, m.request_id, m.command, m.body) for a, m in routed] == [
        ("H", "a", "health", {}), ("C", "b", "ca_info", {"k": 1})]
    h.deliver(CommandReply(routed[1][1].tag, body={"r": "b"}), "C")
    h.deliver(CommandReply(routed[0][1].tag, error={"code": "hsm_unavailable", "message": "m"}), "H")
    assert answers(h) == [{"v": 1, "id": "b", "body": {"r": "b"}},
                          {"v": 1, "id": "a", "error": {"code": "hsm_unavailable", "message": "m"}}]


def test_dispatcher_rejects_bad_envelopes_with_typed_errors():
    h = dispatcher()
    h.deliver(FrameReceived(b"\xc1"), "F")
    h.deliver(FrameReceived(encode_request("x", "launch_rockets")), "F")
    assert [(a["id"], a["error"]["code"]) for a in answers(h)] == [
        (None, "bad_msgpack"), ("x", "unknown_command")]
    assert not h.take(CommandRequest)


def test_dispatcher_duplicate_in_flight_id():
    h = dispatcher()
    h.deliver(FrameReceived(encode_request("same", "health")), "F")
    h.deliver(FrameReceived(encode_request("same", "health")), "F")
    assert len(h.take(CommandRequest)) == 1
    assert answers(h)[0]["error"]["code"] == "duplicate_request"


def test_dispatcher_deadline_gives_handler_unavailable_and_drops_late_reply():
    h = ActorHarness(Dispatcher, SimpleNamespace(protocol=SimpleNamespace(
        max_payload_bytes=4096, handler_timeout_s=0.0)), PEERS)
    h.deliver(FrameReceived(encode_request("slow", "health")), "F")
    [(_, request)] = h.take(CommandRequest)
    [(delay, payload)] = h.wakeups  # armed at the deadline
    h.deliver(WakeupMessage(delay, payload), h.actor)
    [answer] = answers(h)
    assert answer["error"]["code"] == "handler_unavailable"
    h.deliver(CommandReply(request.tag, body={}), "H")
    assert answers(h) == []


def test_dispatcher_poison_and_restarted_handler():
    h = dispatcher()
    h.deliver(FrameReceived(encode_request("p", "health")), "F")
    h.deliver(FrameReceived(encode_request("q", "ca_info")), "F")
    (_, poisoned), (_, lost) = h.take(CommandRequest)
    h.deliver(PoisonMessage(poisoned), "H")
    h.deliver(Configure("dispatcher", CONFIG, dict(PEERS, ca_info="C2"), first=False), "supervisor")
    assert [(a["id"], a["error"]["code"]) for a in answers(h)] == [
        ("p", "internal_error"), ("q", "handler_unavailable")]


def test_framing_decodes_chunks_in_their_numbered_order():
    """Thespian may deliver two messages out of order; the byte stream must not be."""
    h = ActorHarness(Framing, CONFIG, PEERS)
    stream = encode_frame(b"first") + encode_frame(b"second")
    chunks = [stream[i:i + 3] for i in range(0, len(stream), 3)]
    order = list(range(len(chunks)))
    order[1], order[2] = order[2], order[1]  # chunk 3 overtakes chunk 2
    order[4], order[6] = order[6], order[4]
    for index in order:
        h.deliver(SerialBytesReceived(chunks[index], index + 1), "SL")
    assert [m.payload for _, m in h.take(FrameReceived)] == [b"first", b"second"]
    assert not h.take(SerialBytesToSend)  # no frame error
    assert h.actor.figures()["chunks_reordered"] >= 2


def test_framing_follows_a_restarted_serial_link_counting_from_one():
    h = ActorHarness(Framing, CONFIG, PEERS)
    h.deliver(SerialBytesReceived(encode_frame(b"a"), 1), "SL")
    h.deliver(SerialBytesReceived(encode_frame(b"b"), 2), "SL")
    h.deliver(SerialBytesReceived(encode_frame(b"c"), 1), "SL2")  # a new SerialLink
    assert [m.payload for _, m in h.take(FrameReceived)] == [b"a", b"b", b"c"]
