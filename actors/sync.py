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
from typing import Any, Callable

from thespian.actors import ThespianWatch, WakeupMessage, WatchMessage

from actors.base import SignerActor, error_dict
from core.sync.event_signing import load_or_create_signing_key, sign_event
from core.sync.nats_auth import read_password
from core.sync.bridge import NatsBridge
from messages.repository import AppliedEvents, ApplyEvents, GetSyncState, Outbox, RepoReply, SetSyncState
from messages.sync import EventsCommitted, QuarantineCount, SyncStatusReply, SyncStatusRequest

LAST_PUBLISHED = "last_published_seq"
LAST_APPLIED = "last_applied_peer_seq"
PUBLISH_DEADLINE_S = 60.0
APPLY_DEADLINE_S = 60.0
# Every other repository ask (the stored positions, the quarantine count, saving a
# position) is forgotten after this, so a lost reply cannot block its retry for ever.
REPLY_DEADLINE_S = 60.0


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
        self.publishing = False
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

    def ask_repository(self, make: Callable[[int], Any], purpose: str, context: Any = None) -> None:
        deadline = {"apply": APPLY_DEADLINE_S, "outbox": PUBLISH_DEADLINE_S}.get(purpose, REPLY_DEADLINE_S)
        self.send_ask(self.peer("repository"), make, (purpose, context), deadline, self.repository_silent)

    def repository_silent(self, tag: int, asked: tuple[str, Any]) -> None:
        """No reply by the deadline (a restarted repository). A batch being applied is handed
        back to the peer's server, or the consumer would wait for it for ever; a lost Outbox
        reply is the publish deadline's (check_outbox); the others are asked again when due."""
        purpose, context = asked
        if purpose == "apply":
            self.bridge.settle([], [token for token, _, _ in context])
            self.sync_error = f"apply: no answer within {APPLY_DEADLINE_S:g} s; handed back"

    # -- the outbox ------------------------------------------------------------------------
    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> Any:
        asking = {purpose for _, (purpose, _) in self.pending.items()}
        if self.last_published is None and "last_published" not in asking:
            self.ask_repository(lambda tag: GetSyncState(tag, LAST_PUBLISHED), "last_published")  # retry
        self.check_outbox()
        self.wakeupAfter(self.sync.publish_interval_s)
        return self.after_message()

    def receiveMsg_EventsCommitted(self, message: EventsCommitted, sender: Any) -> Any:
        # Pushed by the Repository after each commit that appended events. A publish in
        # progress re-reads the outbox when JetStream acked it, so nothing waits for a tick.
        self.last_event_seq = max(self.last_event_seq, message.last_seq)
        events = message.events
        if (events and self.last_published is not None and self.local_ready and not self.publishing
                and events[0]["seq"] <= self.last_published + 1 <= events[-1]["seq"]):
            # They continue what was published: no Outbox round trip to the repository.
            self.publishing = True
            self.publish_started = time.monotonic()
            self.bridge.publish([self.signed(e) for e in events if e["seq"] > self.last_published])
        else:
            self.check_outbox()
        return self.after_message()

    def check_outbox(self) -> None:
        if (self.publishing and self.publish_started is not None  # set together
                and time.monotonic() - self.publish_started > PUBLISH_DEADLINE_S):
            # A lost reply (a restarted repository, a stuck publish): start over from the
            # stored position; JetStream drops whatever was already stored, by event id.
            self.publishing = False
            self.sync_error = f"publish: no progress within {PUBLISH_DEADLINE_S:g} s; retrying"
        if self.last_published is not None and self.local_ready and not self.publishing:
            self.publishing = True
            self.publish_started = time.monotonic()
            after = self.last_published
            self.ask_repository(lambda tag: Outbox(tag, after, self.sync.batch), "outbox")

    def receiveMsg_RepoReply(self, message: RepoReply[Any], sender: Any) -> Any:
        asked: tuple[str | None, Any] = self.pending.pop(message.tag) or (None, None)
        purpose, context = asked
        value: Any = message.value  # its type is the purpose's request's (messages/repository.py)
        if message.error is not None:
            self.sync_error = f"{purpose}: {message.error['message']}"
            if purpose == "outbox":
                self.publishing = False
            elif purpose == "apply":
                self.bridge.settle([], [token for token, _, _ in context])
            return self.after_message()
        if purpose == "last_published":
            self.last_published = int(value or 0)
        elif purpose == "last_applied":
            self.last_applied_seq = int(value) if value else None
        elif purpose == "outbox":
            self.last_event_seq = value.last_seq
            events = value.events
            if events:
                self.bridge.publish([self.signed(event) for event in events])
            else:
                self.publishing = False
        elif purpose == "apply":
            self.applied_batch(context, value)
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
            self.check_outbox()
        elif kind == "published":
            self.publishing = False
            if value["error"]:
                self.sync_error = f"publish: {value['error']}"
            if value["last_seq"] is not None:
                self.last_published = value["last_seq"]
                self.last_publish_at = time.time()
                self.ask_repository(lambda tag: SetSyncState(tag, LAST_PUBLISHED, str(value["last_seq"])), "saved")
                self.check_outbox()  # more may be waiting
        elif kind == "received":
            events = [event for _, _, event in value]
            self.ask_repository(lambda tag: ApplyEvents(tag, events), "apply", value)
        elif kind == "status":
            self.remote.update(value)
        elif kind == "error":
            self.sync_error = value

    def applied_batch(self, batch: list[tuple[int, int, dict[str, Any]]], outcome: AppliedEvents) -> None:
        count = outcome.applied
        self.bridge.settle([token for token, _, _ in batch[:count]], [token for token, _, _ in batch[count:]])
        self.applied += count
        if count:
            self.last_applied_seq = batch[count - 1][1]
            self.ask_repository(lambda tag: SetSyncState(tag, LAST_APPLIED, str(self.last_applied_seq)), "saved")
        if outcome.error:
            self.sync_error = f"apply: {outcome.error['message']}"
        self.quarantined = outcome.quarantine_total

    # -- status --------------------------------------------------------------------------------
    def receiveMsg_SyncStatusRequest(self, message: SyncStatusRequest, sender: Any) -> Any:
        self.send(sender, SyncStatusReply(message.tag, self.status()))
        return self.after_message()

    def status(self) -> dict[str, Any]:
        unpublished = (self.last_event_seq - self.last_published) if self.last_published is not None else None
        status = {"local_connected": bool(self.remote.get("local_connected")),
                  "peer_connected": bool(self.remote.get("peer_connected")) if self.sync.peer_url else None,
                  "unpublished_events": max(unpublished, 0) if unpublished is not None else None,
                  "last_published_seq": self.last_published,
                  "peer_events_applied": self.applied, "last_applied_peer_seq": self.last_applied_seq,
                  "peer_lag": self.remote.get("peer_pending"), "last_sync_error": self.sync_error,
                  "peer_error": self.remote.get("peer_error"), "local_error": self.remote.get("local_error")}
        status["quarantined"] = self.quarantined
        # Healthy sync: the local stream is reachable and no peer event was refused; the
        # peer being away is normal (it catches up later) and only reported.
        if not status["local_connected"]:
            status["problem"] = "the local NATS server is not reachable"
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
