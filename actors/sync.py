"""Sync: replicates the repository's event log to the peer signer over NATS JetStream, and
applies the peer's events. See docs/sync.md.

Producing is an outbox: the event log is the truth, `last_published` (stored in the
repository only after JetStream acknowledged) says how far publishing got, so after any
outage or restart it resumes exactly there; JetStream drops a re-sent event by its
Nats-Msg-Id. Consuming acknowledges a peer message only after the repository committed it;
applying is idempotent by event id, so a redelivery changes nothing.

The nats-py loop runs in a thread (core.sync.bridge); it reaches this actor only through a
socketpair watched with ThespianWatch, never by calling Thespian from the thread. An actor
that owns threads must not create actors, and this one creates none.
"""
from __future__ import annotations

import queue
import socket
import time
from functools import partial
from typing import Any, Callable, Sequence

from thespian.actors import ThespianWatch, WakeupMessage, WatchMessage

from actors.base import SignerActor, error_dict
from core.sync.event_signing import load_or_create_signing_key, sign_event
from core.sync.nats_auth import read_password
from core.sync.bridge import NatsBridge
from messages.repository import (ApplyEvents, GetSyncState, Outbox, OutboxEvents, RepoReply,
                                 SetSyncState)
from messages.sync import EventsCommitted, QuarantineCount, SyncStatusReply, SyncStatusRequest

LAST_PUBLISHED = "last_published_seq"
LAST_APPLIED = "last_applied_peer_seq"
PUBLISH_DEADLINE_S = 60.0
# Events waiting this long with none acked meanwhile (the local server reachable) is a
# health problem: publishing is stuck on something that retrying does not cure, such as an
# event above the server's max_payload, and every later event waits behind it.
PUBLISH_STUCK_S = 120.0
APPLY_DEADLINE_S = 60.0
# Every other repository ask (the stored positions, the quarantine count, saving a
# position) is forgotten after this, so a lost reply cannot block its retry for ever.
REPLY_DEADLINE_S = 60.0
# Pushed events held beyond this many (the local server is away and publishes wait): dropped,
# the outbox has them.
QUEUE_LIMIT = 2000
MAX_IN_FLIGHT = 8  # batches handed to the bridge and not yet acked
HANDED_MEMORY = 20_000  # event ids handed to the bridge that Sync remembers (echoes: no-ops)


class Sync(SignerActor):
    actor_name = "sync"

    def configure(self, config: Any) -> None:
        self.sync = config.sync
        self.node_id = config.node_id
        # Both read before the bridge starts: a missing or too open file stops Sync here.
        self.event_key = load_or_create_signing_key(self.sync.event_signing_key)
        password = read_password(self.sync.credentials_file)
        self.wake_reader, wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.bridge = NatsBridge(config.node_id, self.sync.local_url, self.sync.peer_url,
                                 self.sync.peer_node_id, wake_writer, password=password).start()
        self.quarantined: int | None = None  # peer events refused and parked; unknown until read
        self.last_published: int | None = None  # unknown until read from the repository
        self.last_event_seq = 0
        self.publishing = False  # an Outbox read or a bridge publish is running
        self.init_outbox()
        self.local_ready = False
        self.applied = 0
        self.last_applied_seq: int | None = None
        self.remote: dict[str, Any] = {"local_connected": False, "peer_connected": False}
        self.sync_error: str | None = None
        self.publish_started: float | None = None
        self.last_publish_at: float | None = None
        self.ask_repository(lambda tag: GetSyncState(tag, LAST_PUBLISHED), "last_published")
        self.ask_repository(lambda tag: GetSyncState(tag, LAST_APPLIED), "last_applied")
        self.ask_repository(QuarantineCount, "quarantined")
        self.wakeupAfter(self.sync.publish_interval_s)

    def init_outbox(self) -> None:
        # Events pushed by the Repository (EventsCommitted) or read from the outbox, in seq
        # order, after those published or being published, not handed to the bridge yet.
        self.queue: list[dict[str, Any]] = []
        # The seq up to which Sync holds every event (published, being published or queued):
        # a push continuing it is queued as it is; None: unknown, the outbox is read.
        self.held_upto: int | None = None
        self.reading = False  # the Outbox read in flight (publishing is set too)
        # (after_seq, last_seq, events) of each push that came during that read
        self.pushed_while_reading: list[tuple[int | None, int, Sequence[dict[str, Any]]]] = []
        # Batches handed to the bridge and not reported yet, oldest first: (id, last seq).
        # The bridge sends each at once and reports them in order, as JetStream acks them.
        self.in_flight: list[tuple[int, int]] = []
        self.batch_ids = 0
        # A batch failed: the reports of those sent after it move nothing (what JetStream
        # acked of them is published again from the outbox and dropped by event id).
        self.discarding = False
        self.failed = False  # a publish failed with nothing acked: wait for the next tick
        self.unsaved: dict[str, str] = {}  # positions to store in sync_state at the next tick
        # When events began to wait with none acked since (time.monotonic); None: none waits.
        self.waiting_since: float | None = None
        self.pushed = False  # an EventsCommitted came since the last tick
        # Ids of the events handed to the bridge lately, oldest first (an ordered set).
        self.handed: dict[str, None] = {}

    def ask_repository(self, make: Callable[[int], Any], purpose: str, context: Any = None) -> None:
        deadline = {"apply": APPLY_DEADLINE_S, "outbox": PUBLISH_DEADLINE_S}.get(purpose, REPLY_DEADLINE_S)
        self.send_ask(self.peer("repository"), make, (purpose, context), deadline, self.repository_silent)

    def repository_silent(self, tag: int, asked: tuple[str, Any]) -> None:
        """No reply by the deadline (a restarted repository). A batch being applied is handed
        back to the peer's server, or the consumer would wait for it for ever; a lost Outbox
        reply is the publish deadline's (receiveMsg_WakeupMessage); the others are asked again
        when due."""
        purpose, context = asked
        if purpose == "apply":
            _, batch = context
            self.bridge.settle([], [token for token, _, _ in batch])
            self.sync_error = f"apply: no answer within {APPLY_DEADLINE_S:g} s; handed back"

    # -- the outbox ------------------------------------------------------------------------
    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> Any:
        asking = {purpose for _, (purpose, _) in self.pending.items()}
        if self.last_published is None and "last_published" not in asking:
            self.ask_repository(lambda tag: GetSyncState(tag, LAST_PUBLISHED), "last_published")  # retry
        if (self.publishing and self.publish_started is not None  # set together
                and time.monotonic() - self.publish_started > PUBLISH_DEADLINE_S):
            # A lost reply (a restarted repository, a stuck publish): start over from the
            # stored position; JetStream drops whatever was already stored, by event id.
            self.publishing = self.reading = self.discarding = False
            self.queue, self.held_upto, self.in_flight = [], None, []
            self.sync_error = f"publish: no progress within {PUBLISH_DEADLINE_S:g} s; retrying"
        self.failed = False
        self.note_waiting()
        self.save_positions()
        if not self.publishing and not self.queue and not self.pushed:
            # The fallback, when nothing was pushed for a whole interval (a read while pushes
            # come would hold them until its reply): whatever a lost push left behind.
            self.read_outbox()
        self.pushed = False
        self.wakeupAfter(self.sync.publish_interval_s)
        return self.after_message()

    def receiveMsg_EventsCommitted(self, message: EventsCommitted, sender: Any) -> Any:
        # Pushed by the Repository after the operations of each incoming message committed.
        # Events continuing what Sync holds are queued and published at the end of this
        # message, or as soon as the publish running is acked: no Outbox round trip.
        self.last_event_seq = max(self.last_event_seq, message.last_seq)
        self.hold(message.events, message.after_seq, message.last_seq)
        self.pushed = True
        return self.after_message()

    def hold(self, events: Sequence[dict[str, Any]], after: int | None, covered_upto: int) -> None:
        """Queue `events`, every event with a seq in (after, covered_upto], if they continue
        what Sync holds; else forget what it holds beyond the publish running (the outbox
        is read when that is done)."""
        if self.reading:  # joined with what the read finds when it is back
            self.pushed_while_reading.append((after, covered_upto, events))
            return
        if self.held_upto is None or after is None or after > self.held_upto:
            self.queue, self.held_upto = [], None
            return
        self.queue.extend(event for event in events if event["seq"] > self.held_upto)
        self.held_upto = max(self.held_upto, covered_upto)
        if len(self.queue) > QUEUE_LIMIT:  # the local server is away: the outbox keeps them
            self.queue, self.held_upto = [], None

    def end_of_message(self) -> None:
        if getattr(self, "sync", None) is not None:  # configured
            self.publish_next()

    def publish_next(self) -> None:
        """Hand the bridge the queued events at once, in batches of at most `sync.batch`
        (several may be in flight: the bridge sends them in order on one connection), else
        read the outbox when Sync does not hold every event the repository told of."""
        if (self.reading or self.discarding or self.failed or not self.local_ready
                or self.last_published is None):
            return
        while self.queue and len(self.in_flight) < MAX_IN_FLIGHT:
            events, self.queue = self.queue[:self.sync.batch], self.queue[self.sync.batch:]
            self.batch_ids += 1
            self.in_flight.append((self.batch_ids, events[-1]["seq"]))
            self.publishing = True
            self.publish_started = time.monotonic()
            self.bridge.publish([self.signed(event) for event in events], self.batch_ids)
            self.handed.update((event["event_id"], None) for event in events)
            while len(self.handed) > HANDED_MEMORY:
                del self.handed[next(iter(self.handed))]  # the oldest
        if not self.publishing and (self.held_upto is None or self.held_upto < self.last_event_seq):
            self.read_outbox()

    def read_outbox(self) -> None:
        if self.publishing or not self.local_ready or self.last_published is None:
            return
        self.publishing = self.reading = True
        self.publish_started = time.monotonic()
        after = self.last_published
        self.queue, self.held_upto, self.pushed_while_reading = [], after, []
        self.ask_repository(lambda tag: Outbox(tag, after, self.sync.batch), "outbox", after)

    def outbox_read(self, after: int, value: OutboxEvents) -> None:
        """The outbox from `after`, joined with what was pushed meanwhile as far as the two
        cover the log without a gap."""
        self.publishing = self.reading = False
        self.last_event_seq = max(self.last_event_seq, value.last_seq)
        events = value.events
        # What the read covers: every event up to the newest, unless it stopped at the limit.
        covered = events[-1]["seq"] if len(events) >= self.sync.batch else max(after, value.last_seq)
        pieces: list[tuple[int, int, Sequence[dict[str, Any]]]] = [(after, covered, events)]
        pieces += [(start, upto, pushed) for start, upto, pushed in self.pushed_while_reading
                   if start is not None]
        self.pushed_while_reading = []
        held, merged = after, dict[int, dict[str, Any]]()
        for start, upto, piece in sorted(pieces, key=lambda piece: piece[0]):
            if start > held:
                break  # a gap: read again once these are published
            merged.update((event["seq"], event) for event in piece if event["seq"] > after)
            held = max(held, upto)
        self.queue = [merged[seq] for seq in sorted(merged) if seq <= held]
        self.held_upto = held

    def save_positions(self) -> None:
        """Store the positions that moved since the last tick (one write each per
        publish_interval_s, not one per batch: each is a commit in the repository). A crash
        before the save re-publishes the events since the stored position, and JetStream
        drops them by event id."""
        for key, value in self.unsaved.items():
            self.ask_repository(partial(SetSyncState, key=key, value=value), "saved")
        self.unsaved = {}

    def receiveMsg_RepoReply(self, message: RepoReply[Any], sender: Any) -> Any:
        asked: tuple[str | None, Any] = self.pending.pop(message.tag) or (None, None)
        purpose, context = asked
        value: Any = message.value  # its type is the purpose's request's (messages/repository.py)
        if message.error is not None:
            self.sync_error = f"{purpose}: {message.error['message']}"
            if purpose == "outbox":
                self.publishing = self.reading = False
                self.queue, self.held_upto, self.failed = [], None, True
                self.pushed_while_reading = []
            elif purpose == "apply":
                _, batch = context
                self.bridge.settle([], [token for token, _, _ in batch])
            return self.after_message()
        if purpose == "last_published":
            self.last_published = int(value or 0)
        elif purpose == "last_applied":
            self.last_applied_seq = int(value) if value else None
        elif purpose == "outbox":
            self.outbox_read(context, value)
        elif purpose == "apply":
            known, batch = context
            self.applied_batch(batch, known + value.applied, value.error)
            self.quarantined = value.quarantine_total
        elif purpose == "quarantined":
            self.quarantined = int(value)
        return self.after_message()

    def signed(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event as it is published: this signer's own events signed now (Ed25519 is
        deterministic: a re-publish carries the same signature), a peer's with the
        signature it arrived with (events.signature)."""
        if event["origin_node"] == self.node_id:
            return event | {"signature": sign_event(self.event_key, event)}
        return event

    # -- the bridge --------------------------------------------------------------------------
    def receiveMsg_WatchMessage(self, message: WatchMessage, sender: Any) -> Any:
        try:
            while self.wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                kind, value = self.bridge.results.get_nowait()
            except queue.Empty:
                break
            self.bridge_result(kind, value)
        return self.after_message()

    def bridge_result(self, kind: str, value: Any) -> None:
        if kind == "local_ready":
            self.local_ready = True
        elif kind == "published":
            self.published(value)
        elif kind == "received":
            # Events this Sync handed to its bridge are in the local log: coming back from the
            # peer's stream (the peer applied and relayed them), they are no-ops to apply.
            known = 0
            while known < len(value) and value[known][2].get("event_id") in self.handed:
                known += 1
            if known == len(value):
                self.applied_batch(value, known, None)
            else:
                events = [event for _, _, event in value[known:]]
                self.ask_repository(lambda tag: ApplyEvents(tag, events), "apply", (known, value))
        elif kind == "status":
            self.remote.update(value)
        elif kind == "error":
            self.sync_error = value

    def published(self, report: dict[str, Any]) -> None:
        """The bridge's report on the oldest batch in flight: `last_seq` is the last event
        JetStream acked of it (each acked in order; None: none), `error` why it stopped."""
        if not self.in_flight or self.in_flight[0][0] != report["batch"]:
            return  # a batch given up at the publish deadline
        self.in_flight.pop(0)
        self.publish_started = time.monotonic()  # progress
        if report["last_seq"] is not None and not self.discarding:
            self.last_published = report["last_seq"]
            self.last_publish_at = time.time()
            self.unsaved[LAST_PUBLISHED] = str(report["last_seq"])
            self.waiting_since = None  # progress: what still waits, waits from now
            self.note_waiting()
        if report["error"]:
            self.sync_error = f"publish: {report['error']}"
            # What was not acked is read again from the outbox once the batches in flight
            # are reported: at once when some of this one were acked (the server is
            # there), else at the next tick.
            self.queue, self.held_upto, self.discarding = [], None, True
            self.failed = self.failed or report["last_seq"] is None
        if not self.in_flight:
            self.publishing = self.discarding = False

    def applied_batch(self, batch: list[tuple[int, int, dict[str, Any]]], count: int,
                      error: dict[str, str] | None) -> None:
        """The first `count` messages of the batch are applied (committed, or known): acked;
        the rest nak'ed for redelivery."""
        self.bridge.settle([token for token, _, _ in batch[:count]], [token for token, _, _ in batch[count:]])
        self.applied += count
        if count:
            self.last_applied_seq = batch[count - 1][1]
            self.unsaved[LAST_APPLIED] = str(self.last_applied_seq)  # shown in status only
        if error:
            self.sync_error = f"apply: {error['message']}"

    def unpublished(self) -> int | None:
        if self.last_published is None:
            return None
        return max(self.last_event_seq - self.last_published, 0)

    def note_waiting(self) -> None:
        """Start (or end) the clock of events waiting to be published (PUBLISH_STUCK_S). While
        the local server is unreachable that is the problem health names; the clock starts
        once it is back."""
        if not self.unpublished() or not self.remote.get("local_connected"):
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = time.monotonic()

    # -- status --------------------------------------------------------------------------------
    def receiveMsg_SyncStatusRequest(self, message: SyncStatusRequest, sender: Any) -> Any:
        self.send(sender, SyncStatusReply(message.tag, self.status()))
        return self.after_message()

    def status(self) -> dict[str, Any]:
        unpublished = self.unpublished()
        status = {"local_connected": bool(self.remote.get("local_connected")),
                  "peer_connected": bool(self.remote.get("peer_connected")) if self.sync.peer_url else None,
                  "unpublished_events": unpublished,
                  "last_published_seq": self.last_published,
                  "peer_events_applied": self.applied, "last_applied_peer_seq": self.last_applied_seq,
                  "peer_lag": self.remote.get("peer_pending"), "last_sync_error": self.sync_error,
                  "peer_error": self.remote.get("peer_error"), "local_error": self.remote.get("local_error")}
        status["quarantined"] = self.quarantined
        # Healthy sync: the local stream is reachable, what waits gets published, and no
        # peer event was refused; the peer being away is normal (it catches up later) and
        # only reported.
        waited = time.monotonic() - self.waiting_since if self.waiting_since is not None else 0.0
        if not status["local_connected"]:
            status["problem"] = "the local NATS server is not reachable"
        elif waited > PUBLISH_STUCK_S:
            status["problem"] = (f"publishing stuck: {unpublished} event(s) waiting, none acked for"
                                 f" {waited:.0f} s (last error: {self.sync_error})")
        elif self.quarantined:
            status["problem"] = (f"{self.quarantined} peer event(s) refused and quarantined:"
                                 " signer-admin quarantine")
        status["ok"] = "problem" not in status
        return status

    def figures(self) -> dict[str, Any]:
        return self.status() if getattr(self, "sync", None) else {}

    def after_message(self) -> Any:
        reader = getattr(self, "wake_reader", None)
        return ThespianWatch([reader.fileno()]) if reader is not None else None

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> Any:
        if isinstance(message, SyncStatusRequest):
            self.send(sender, SyncStatusReply(message.tag, {}, error=error_dict(exc)))
        return self.after_message()

    def shutdown(self) -> None:
        if getattr(self, "bridge", None) is not None:
            self.bridge.stop()
