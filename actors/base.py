"""What every signer actor shares: configuration, counters, status, error capture and
tag-keyed pending work with deadlines.

An exception escaping `receiveMessage` makes Thespian deliver the same message again (a
second signature for one request, in the worst case), so SignerActor catches it, counts
it and lets the subclass answer with a typed error instead.

Asking another actor (an actor never waits for a reply inside `receiveMessage`) is one
mechanism for every actor: `send_ask(address, make, context, timeout_s, on_timeout)` (or
`expect(...)` when the actor sends the messages itself) keeps `context` in `self.pending`
under a new tag with a deadline; the reply handler takes it back with
`self.pending.pop(tag)` (or `get` while more replies are due); if nobody took it by the
deadline, `on_timeout(tag, context)` runs. One Thespian wakeup is armed at the earliest
deadline (not one per ask, and no periodic sweep).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, ChildActorExited, WakeupMessage

from core.wire.protocol import SignerError
from messages import ActorStatusReply, ActorStatusRequest, Batch, Configure, Configured


def error_dict(exc: BaseException) -> dict[str, str]:
    """The wire form of an exception: typed errors keep their code."""
    code = getattr(exc, "code", None)
    if isinstance(exc, SignerError):
        return exc.to_wire()
    if isinstance(code, str):
        return {"code": code, "message": str(exc)}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}


_BEFORE_CONFIGURE = (Configure, ActorStatusRequest, ActorExitRequest, ChildActorExited)
# The payload of the wakeups that end asks past their deadline: (DEADLINE_WAKEUP, due time).
DEADLINE_WAKEUP = "signer.ask_deadline"
# A deadline wakeup is asked for this much after the deadline (a timer may fire a hair
# early); one already armed up to this much later than a new deadline serves it too.
DEADLINE_SLACK_S = 0.01

T = TypeVar("T")


class SignerActor(ActorTypeDispatcher):
    """Base class: subclasses implement `configure` and `receiveMsg_<Type>` methods."""

    actor_name = "actor"
    needs_configure = True  # messages before Configure wait for it (the Supervisor has none)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.addresses: dict[str, Any] = {}
        self.peers_down: frozenset[str] = frozenset()  # as the Supervisor last said
        self.handled = 0  # messages handled, each item of a Batch counted
        self.deliveries = 0  # messages Thespian delivered, a Batch counted once
        self.errors = 0
        self.last_error: str | None = None
        self.started_at = time.time()
        self._next_tag = 0
        self._before_configure: list[tuple[Any, Any]] = []
        # Messages for peers, held while one incoming message (or Batch) is handled and
        # then sent one Batch per peer (messages/batch.py); None between messages.
        self._outbox: list[tuple[Any, list[Any]]] | None = None
        # Asks waiting for replies, by tag (send_ask / expect), and the deadline wakeups armed.
        self.pending: PendingWork[Any] = PendingWork()
        self._deadline_wakeups: list[float] = []
        self.log = logging.getLogger(f"signer.{self.actor_name}")

    # -- plumbing every actor shares -------------------------------------------------
    def receiveMessage(self, message: Any, sender: Any) -> Any:
        if self._outbox is not None:  # a Batch's item, or a message queued before Configure
            return self._receive_one(message, sender)
        self._outbox = []
        self.deliveries += 1
        try:
            return self._receive_one(message, sender)
        finally:
            try:
                self.end_of_message()
            except Exception as exc:  # noqa: BLE001 - the held messages still go
                self.record_error(exc)
                self.log.exception("%s failed finishing a message", self.actor_name)
            outbox, self._outbox = self._outbox, None
            for address, messages in outbox:
                super().send(address, messages[0] if len(messages) == 1 else Batch(tuple(messages)))

    def send(self, address: Any, message: Any) -> None:
        """Sends to a peer in the address book (every one a SignerActor, which unpacks a
        Batch) wait until the incoming message is handled; others (system.py, signer-admin,
        the Supervisor) go at once, unbatched."""
        if self._outbox is None or not any(address == peer for peer in self.addresses.values()):
            super().send(address, message)
            return
        for queued_address, messages in self._outbox:
            if queued_address == address:
                messages.append(message)
                return
        self._outbox.append((address, [message]))

    def _receive_one(self, message: Any, sender: Any) -> Any:
        if isinstance(message, Batch):
            result = None
            for item in message.messages:
                result = self._receive_one(item, sender)
            return result
        self.handled += 1
        if self.config is None and self.needs_configure and not isinstance(message, _BEFORE_CONFIGURE):
            # Peers are configured in parallel: one may ask us before our Configure arrived.
            # Keep its message and handle it once configured, in arrival order.
            self._before_configure.append((message, sender))
            return self.after_message()
        try:
            if isinstance(message, WakeupMessage) and is_deadline_wakeup(message.payload):
                self.deadlines_due(message.payload[1])
                return self.after_message()
            return super().receiveMessage(message, sender)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self.record_error(exc)
            self.log.exception("%s failed on %s", self.actor_name, type(message).__name__)
            return self.on_failure(message, sender, exc)

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> Any:
        self.addresses = dict(message.addresses)
        self.peers_down = frozenset(message.down)
        self.actor_name = message.name
        self.log = logging.getLogger(f"signer.{self.actor_name}")
        if not message.first:
            return self.on_addresses_changed()
        self.config = message.config
        try:
            self.configure(message.config)
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, not raised
            self.record_error(exc)
            self.send(sender, Configured(self.actor_name, False, f"{self.actor_name}: {exc}"))
            return self.after_message()
        self.send(sender, Configured(self.actor_name, True))
        early, self._before_configure = self._before_configure, []
        for queued, queued_sender in early:
            self.receiveMessage(queued, queued_sender)
        return self.after_message()

    def receiveMsg_ActorStatusRequest(self, message: ActorStatusRequest, sender: Any) -> Any:
        record = {"name": self.actor_name, "pid": os.getpid(), "alive": True,
                  "messages": self.handled, "deliveries": self.deliveries, "errors": self.errors,
                  "last_error": self.last_error,
                  "uptime_s": round(time.time() - self.started_at, 1)}
        if self.config is not None or not self.needs_configure:  # figures need configure()
            record.update(self.figures())
        self.send(sender, ActorStatusReply(message.tag, record))
        return self.after_message()

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> Any:
        self.shutdown()

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> Any:
        return self.after_message()

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> Any:
        self.log.warning("%s ignored an unexpected %s", self.actor_name, type(message).__name__)
        return self.after_message()

    # -- hooks for subclasses ---------------------------------------------------------
    def configure(self, config: Any) -> None:
        """Open resources; an exception here is reported as a start-up error."""

    def on_addresses_changed(self) -> Any:
        return self.after_message()

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> Any:
        return self.after_message()

    def figures(self) -> dict[str, Any]:
        """The actor's own counters for `signer-admin status`."""
        return {}

    def shutdown(self) -> None:
        """Release resources before the process exits."""

    def after_message(self) -> Any:
        """Value returned from every handler (SerialLink returns its ThespianWatch)."""
        return None

    def end_of_message(self) -> None:
        """Runs once per incoming message (a Batch: once, after all its items), just before
        the messages held for peers are sent, so what it sends joins them."""

    # -- helpers ----------------------------------------------------------------------
    def record_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def new_tag(self) -> int:
        self._next_tag += 1
        return self._next_tag

    def peer(self, name: str) -> Any:
        return self.addresses[name]

    # -- asking other actors, with a deadline ------------------------------------------
    def expect(self, context: Any, timeout_s: float,
               on_timeout: Callable[[int, Any], None] | None = None) -> int:
        """Keep `context` under a new tag until a reply handler pops it; if none has by
        `timeout_s`, it is dropped and `on_timeout(tag, context)` runs. Returns the tag,
        for the caller to put in what it sends (one message or several)."""
        tag = self.new_tag()
        self.arm_deadline_wakeup(self.pending.add(tag, context, timeout_s, on_timeout))
        return tag

    def send_ask(self, address: Any, make: Callable[[int], Any], context: Any, timeout_s: float,
                 on_timeout: Callable[[int, Any], None] | None = None) -> int:
        """`expect`, then send `make(tag)` to `address`."""
        tag = self.expect(context, timeout_s, on_timeout)
        self.send(address, make(tag))
        return tag

    def arm_deadline_wakeup(self, due: float | None) -> None:
        """Make sure a wakeup comes by `due` (plus the slack). Every pending ask has one by
        its deadline; a wakeup that ends some re-arms for the earliest left."""
        if due is None or any(at <= due + DEADLINE_SLACK_S for at in self._deadline_wakeups):
            return
        self._deadline_wakeups.append(due)
        self.wakeupAfter(max(0.0, due - self.pending.clock()) + DEADLINE_SLACK_S,
                         payload=(DEADLINE_WAKEUP, due))

    def deadlines_due(self, armed_for: float) -> None:
        if armed_for in self._deadline_wakeups:
            self._deadline_wakeups.remove(armed_for)
        for tag, item in self.pending.expired():
            if item.on_timeout is None:
                continue
            try:
                item.on_timeout(tag, item.context)
            except Exception as exc:  # noqa: BLE001 - the other expired asks still end
                self.record_error(exc)
                self.log.exception("%s failed ending ask %d", self.actor_name, tag)
        self.arm_deadline_wakeup(self.pending.next_deadline())


def is_deadline_wakeup(payload: Any) -> bool:
    return isinstance(payload, tuple) and len(payload) == 2 and payload[0] == DEADLINE_WAKEUP


@dataclass
class PendingItem(Generic[T]):
    context: T
    deadline: float
    on_timeout: Callable[[int, T], None] | None = None


class PendingWork(Generic[T]):
    """Work waiting for replies, keyed by tag, with a deadline each (on `clock`, which a
    test may move forward)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: dict[int, PendingItem[T]] = {}
        self.clock = clock

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, tag: int) -> bool:
        return tag in self._items

    def add(self, tag: int, context: T, timeout_s: float,
            on_timeout: Callable[[int, T], None] | None = None) -> float:
        """Returns the deadline."""
        item = self._items[tag] = PendingItem(context, self.clock() + timeout_s, on_timeout)
        return item.deadline

    def get(self, tag: int) -> T | None:
        item = self._items.get(tag)
        return item.context if item else None

    def pop(self, tag: int) -> T | None:
        item = self._items.pop(tag, None)
        return item.context if item else None

    def expired(self) -> list[tuple[int, PendingItem[T]]]:
        """The items past their deadline, removed."""
        now = self.clock()
        gone = [(t, i) for t, i in self._items.items() if i.deadline <= now]
        for tag, _ in gone:
            del self._items[tag]
        return gone

    def next_deadline(self) -> float | None:
        return min((i.deadline for i in self._items.values()), default=None)

    def items(self) -> list[tuple[int, T]]:
        return [(t, i.context) for t, i in self._items.items()]


__all__ = ["SignerActor", "PendingWork", "error_dict", "is_deadline_wakeup", "WakeupMessage"]
