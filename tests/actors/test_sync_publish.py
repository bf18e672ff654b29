"""Sync's publishing (actors/sync.py, docs/sync.md "Producing: the outbox"): pushed events
are handed to the bridge at the end of the message that brought them, several batches in
flight; the position moves only over events acked without a gap; the outbox is read for a
gap, after a failure and, as a fallback, only when nothing was pushed for an interval."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from thespian.actors import WakeupMessage

from actors import sync as sync_module
from actors.sync import MAX_IN_FLIGHT, PUBLISH_STUCK_S, QUEUE_LIMIT, Sync
from messages.repository import AppliedEvents, ApplyEvents, Outbox, OutboxEvents, RepoReply, SetSyncState
from messages.sync import EventsCommitted
from tests.support.actor_harness import ActorHarness

BATCH = 3


class PublishingBridge:
    """Records what Sync hands over; reports come from the test."""

    def __init__(self) -> None:
        self.published: list[tuple[int, list[int]]] = []  # (batch id, seqs)
        self.settled: list[tuple[list, list]] = []

    def publish(self, events: list[dict[str, Any]], batch: int = 0) -> None:
        self.published.append((batch, [event["seq"] for event in events]))

    def settle(self, acks: list, naks: list) -> None:
        self.settled.append((acks, naks))


def event(seq: int) -> dict[str, Any]:
    # Another node's event: published with the signature it came with (no signing key here).
    return {"seq": seq, "event_id": f"e{seq}", "origin_node": "peer", "type": "x509_revoked",
            "body": {}, "created_at": None, "signature": b"s"}


def events(first: int, last: int) -> tuple[dict[str, Any], ...]:
    return tuple(event(seq) for seq in range(first, last + 1))


def sync_actor(last_published: int = 10) -> ActorHarness:
    """Sync without its NATS thread, its stream ready, its position read and held."""
    h = ActorHarness(Sync)
    actor = h.actor
    actor.config, actor.addresses = SimpleNamespace(), {"repository": "REPO"}
    actor.sync = SimpleNamespace(publish_interval_s=0.5, batch=BATCH, peer_url=None)
    actor.node_id, actor.bridge, actor.sync_error = "n1", PublishingBridge(), None
    actor.last_published, actor.local_ready, actor.publishing = last_published, True, False
    actor.applied, actor.last_applied_seq, actor.quarantined = 0, None, 0
    actor.remote = {"local_connected": True}
    actor.last_event_seq, actor.publish_started, actor.last_publish_at = last_published, None, None
    actor.init_outbox()
    actor.held_upto = last_published  # as after an outbox read that found nothing new
    return h


def report(h: ActorHarness, batch: int, last_seq: int | None, error: str | None = None) -> None:
    h.actor.bridge_result("published", {"batch": batch, "last_seq": last_seq, "error": error})
    h.actor.end_of_message()  # as at the end of the WatchMessage that brought it


def tick(h: ActorHarness) -> None:
    h.deliver(WakeupMessage(0.5))


def test_pushed_events_go_out_at_once_in_batches_without_waiting_for_acks():
    h = sync_actor()
    h.deliver(EventsCommitted(14, events(11, 14), after_seq=10))
    assert h.actor.bridge.published == [(1, [11, 12, 13]), (2, [14])]
    h.deliver(EventsCommitted(15, events(15, 15), after_seq=14))  # nothing acked yet
    assert h.actor.bridge.published[2:] == [(3, [15])]
    assert h.take(Outbox) == []  # no round trip to the repository
    report(h, 1, 13)
    assert h.actor.last_published == 13
    report(h, 2, 14)
    report(h, 3, 15)
    assert h.actor.last_published == 15 and not h.actor.publishing
    assert h.take(SetSyncState) == []  # stored at the next tick, once
    tick(h)
    (_, saved), = h.take(SetSyncState)
    assert (saved.key, saved.value) == ("last_published_seq", "15")


def test_no_more_than_the_in_flight_limit_is_handed_over():
    h = sync_actor(0)
    count = BATCH * (MAX_IN_FLIGHT + 1)
    h.deliver(EventsCommitted(count, events(1, count), after_seq=0))
    assert len(h.actor.bridge.published) == MAX_IN_FLIGHT
    report(h, 1, BATCH)
    assert len(h.actor.bridge.published) == MAX_IN_FLIGHT + 1
    assert h.actor.bridge.published[-1] == (MAX_IN_FLIGHT + 1, list(range(count - BATCH + 1, count + 1)))


def test_a_gap_is_read_from_the_outbox_and_merged_with_what_is_pushed_meanwhile():
    h = sync_actor()
    h.deliver(EventsCommitted(300, events(101, 300), after_seq=100))  # 11..100 were never pushed
    assert h.actor.bridge.published == []
    (_, read), = h.take(Outbox)
    assert (read.after_seq, read.limit) == (10, BATCH)
    h.deliver(EventsCommitted(302, events(301, 302), after_seq=300))  # pushed while reading
    assert h.actor.bridge.published == []  # held until the read is back
    h.deliver(RepoReply(read.tag, OutboxEvents(events(11, 13), 302)))
    # The read stopped at its limit (13): what it and the pushes cover does not join up.
    assert h.actor.bridge.published == [(1, [11, 12, 13])]
    report(h, 1, 13)
    (_, again), = h.take(Outbox)
    assert again.after_seq == 13


def test_a_read_that_covers_everything_joins_the_pushes_made_meanwhile():
    h = sync_actor()
    h.actor.held_upto = None  # a restarted Sync: nothing held
    h.deliver(EventsCommitted(12, events(12, 12), after_seq=11))
    (_, read), = h.take(Outbox)
    h.deliver(EventsCommitted(13, events(13, 13), after_seq=12))  # pushed while reading
    h.deliver(RepoReply(read.tag, OutboxEvents(events(11, 12), 12)))
    assert h.actor.bridge.published == [(1, [11, 12, 13])]
    assert h.actor.held_upto == 13


def test_a_failed_batch_moves_the_position_only_over_what_was_acked_without_a_gap():
    h = sync_actor()
    h.deliver(EventsCommitted(16, events(11, 16), after_seq=10))
    assert [batch for batch, _ in h.actor.bridge.published] == [1, 2]
    report(h, 1, 11, "TimeoutError: nats: timeout")  # 12 and 13 not acked
    h.deliver(EventsCommitted(17, events(17, 17), after_seq=16))
    assert len(h.actor.bridge.published) == 2  # nothing new while a batch sent after it is out
    report(h, 2, 16)  # acked, but after a gap: it moves nothing
    assert h.actor.last_published == 11
    (_, read), = h.take(Outbox)  # at once: the server acked some
    assert read.after_seq == 11
    assert h.actor.sync_error == "publish: TimeoutError: nats: timeout"


def test_a_batch_with_nothing_acked_is_read_again_at_the_next_tick():
    h = sync_actor()
    h.deliver(EventsCommitted(11, events(11, 11), after_seq=10))
    report(h, 1, None, "ConnectionClosedError: nats: connection closed")
    assert h.take(Outbox) == [] and h.actor.last_published == 10
    h.deliver(EventsCommitted(12, events(12, 12), after_seq=11))
    assert h.take(Outbox) == [] and len(h.actor.bridge.published) == 1
    tick(h)
    (_, read), = h.take(Outbox)
    assert read.after_seq == 10


def test_the_fallback_read_waits_for_an_interval_without_pushes():
    h = sync_actor()
    h.deliver(EventsCommitted(11, events(11, 11), after_seq=10))
    report(h, 1, 11)
    tick(h)  # a push came during this interval: no read, it would hold the next ones back
    assert h.take(Outbox) == []
    tick(h)  # a quiet interval
    (_, read), = h.take(Outbox)
    assert read.after_seq == 11


def test_a_late_report_of_a_batch_given_up_at_the_deadline_moves_nothing():
    h = sync_actor()
    h.deliver(EventsCommitted(11, events(11, 11), after_seq=10))
    h.actor.publish_started -= 61  # no progress for longer than PUBLISH_DEADLINE_S
    tick(h)
    assert h.actor.in_flight == [] and "no progress" in h.actor.sync_error
    report(h, 1, 11)
    assert h.actor.last_published == 10


def test_pushes_beyond_the_queue_limit_are_left_to_the_outbox():
    h = sync_actor()
    h.actor.local_ready = False  # nothing is handed over: the queue grows
    h.deliver(EventsCommitted(10 + QUEUE_LIMIT, events(11, 10 + QUEUE_LIMIT), after_seq=10))
    assert len(h.actor.queue) == QUEUE_LIMIT
    h.deliver(EventsCommitted(11 + QUEUE_LIMIT, events(11 + QUEUE_LIMIT, 11 + QUEUE_LIMIT),
                              after_seq=10 + QUEUE_LIMIT))
    assert h.actor.queue == [] and h.actor.held_upto is None


def test_the_repository_tells_sync_once_per_message_what_its_operations_appended(tmp_path):
    from datetime import datetime, timedelta, timezone

    from actors.owners.repository import Repository
    from messages import Batch
    from messages.repository import StoreCrl

    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")), sync=None)
    h = ActorHarness(Repository, config, {"sync": "SYNC"})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    h.deliver(StoreCrl(1, "root", 1, b"CRL", now, now + timedelta(days=7), "d1", 10), "crl_issuer")
    assert [reply.error for _, reply in h.take(RepoReply)] == [None]
    (_, told), = h.take(EventsCommitted)
    assert (told.after_seq, told.last_seq, [e["seq"] for e in told.events]) == (0, 1, [1])
    h.deliver(Batch((StoreCrl(2, "root", 2, b"CRL", now, now + timedelta(days=7), "d2", 10),
                     StoreCrl(3, "root", 3, b"CRL", now, now + timedelta(days=7), "d3", 10))), "crl_issuer")
    assert [reply.error for _, reply in h.take(RepoReply)] == [None, None]
    (_, told), = h.take(EventsCommitted)  # one for the whole batch, continuing the first
    assert (told.after_seq, told.last_seq, [e["seq"] for e in told.events]) == (1, 3, [2, 3])
    h.actor.shutdown()


def test_events_it_published_coming_back_from_the_peer_are_acked_without_the_repository():
    h = sync_actor()
    h.deliver(EventsCommitted(12, events(11, 12), after_seq=10))
    report(h, 1, 12)
    # The peer applied 11 and 12 and relayed them on its stream: known here, no-ops.
    h.actor.bridge_result("received", [("t1", 101, event(11)), ("t2", 102, event(12))])
    assert h.take(ApplyEvents) == []
    assert h.actor.bridge.settled == [(["t1", "t2"], [])]
    assert (h.actor.applied, h.actor.last_applied_seq) == (2, 102)


def test_a_batch_starting_with_echoes_sends_only_the_rest_and_settles_once():
    h = sync_actor()
    h.deliver(EventsCommitted(11, events(11, 11), after_seq=10))
    report(h, 1, 11)
    peer_event = event(7) | {"event_id": "from-the-peer"}
    batch = [("t1", 101, event(11)), ("t2", 102, peer_event), ("t3", 103, event(11))]
    h.actor.bridge_result("received", batch)
    (_, apply), = h.take(ApplyEvents)
    assert [e["event_id"] for e in apply.events] == ["from-the-peer", "e11"]  # from the first unknown on
    assert h.actor.bridge.settled == []
    h.deliver(RepoReply(apply.tag, AppliedEvents(1, 0, 0, {"code": "unknown_serial", "message": "later"})), "REPO")
    assert h.actor.bridge.settled == [(["t1", "t2"], ["t3"])]
    assert (h.actor.applied, h.actor.last_applied_seq) == (2, 102)


def test_events_that_wait_with_none_acked_for_two_minutes_are_a_health_problem(monkeypatch):
    """Publishing stuck on what retrying does not cure (an event above the server's
    max_payload): health says so after PUBLISH_STUCK_S; an ack ends it."""
    clock = [1000.0]
    monkeypatch.setattr(sync_module.time, "monotonic", lambda: clock[0])
    h = sync_actor()
    h.deliver(EventsCommitted(12, events(11, 12), after_seq=10))
    report(h, 1, None, "MaxPayloadError: nats: maximum payload exceeded")
    tick(h)
    clock[0] += PUBLISH_STUCK_S - 1
    tick(h)
    assert h.actor.status()["ok"]
    h.actor.remote["local_connected"] = False  # the server away: that is the problem named
    clock[0] += 2
    assert h.actor.status()["problem"] == "the local NATS server is not reachable"
    tick(h)
    h.actor.remote["local_connected"] = True  # back: the clock starts again
    tick(h)
    clock[0] += PUBLISH_STUCK_S - 1
    assert h.actor.status()["ok"]
    clock[0] += 2
    status = h.actor.status()
    assert not status["ok"] and status["problem"].startswith(
        f"publishing stuck: 2 event(s) waiting, none acked for {PUBLISH_STUCK_S + 1:.0f} s (last error: publish: ")
    for _, read in h.take(Outbox):
        h.deliver(RepoReply(read.tag, OutboxEvents(events(11, 12), 12)))
    for batch, last_seq in list(h.actor.in_flight):  # acked now, reported in order
        report(h, batch, last_seq)
    assert h.actor.status()["ok"] and h.actor.status()["unpublished_events"] == 0
