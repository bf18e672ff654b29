"""What every signer actor shares: configuration, counters, status, error capture and
tag-keyed pending work.

An exception escaping `receiveMessage` makes Thespian deliver the same message again (a
second signature for one request, in the worst case), so SignerActor catches it, counts
it and lets the subclass answer with a typed error instead.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

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


class SignerActor(ActorTypeDispatcher):
    """Base class: subclasses implement `configure` and `receiveMsg_<Type>` methods."""

    actor_name = "actor"
    needs_configure = True  # messages before Configure wait for it (the Supervisor has none)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.addresses: dict[str, Any] = {}
        self.peers_down: frozenset[str] = frozenset()  # as the Supervisor last said
        self.handled = 0
        self.errors = 0
        self.last_error: str | None = None
        self.started_at = time.time()
        self._next_tag = 0
        self._before_configure: list[tuple[Any, Any]] = []
        # Messages for peers, held while one incoming message (or Batch) is handled and
        # then sent one Batch per peer (messages/batch.py); None between messages.
        self._outbox: list[tuple[Any, list[Any]]] | None = None
        self.log = logging.getLogger(f"signer.{self.actor_name}")

    # -- plumbing every actor shares -------------------------------------------------
    def receiveMessage(self, message: Any, sender: Any) -> Any:
        if self._outbox is not None:  # a Batch's item, or a message queued before Configure
            return self._receive_one(message, sender)
        self._outbox = []
        try:
            return self._receive_one(message, sender)
        finally:
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
                  "messages": self.handled, "errors": self.errors,
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

    # -- helpers ----------------------------------------------------------------------
    def record_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def new_tag(self) -> int:
        self._next_tag += 1
        return self._next_tag

    def peer(self, name: str) -> Any:
        return self.addresses[name]


@dataclass
class PendingItem:
    state: Any
    deadline: float


class PendingWork:
    """Work waiting for replies, keyed by tag, with a deadline each."""

    def __init__(self) -> None:
        self._items: dict[int, PendingItem] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, tag: int, state: Any, timeout_s: float) -> None:
        self._items[tag] = PendingItem(state, time.monotonic() + timeout_s)

    def get(self, tag: int) -> Any:
        item = self._items.get(tag)
        return item.state if item else None

    def pop(self, tag: int) -> Any:
        item = self._items.pop(tag, None)
        return item.state if item else None

    def expired(self) -> list[tuple[int, Any]]:
        now = time.monotonic()
        gone = [(t, i.state) for t, i in self._items.items() if i.deadline <= now]
        for tag, _ in gone:
            del self._items[tag]
        return gone

    def items(self) -> list[tuple[int, Any]]:
        return [(t, i.state) for t, i in self._items.items()]


__all__ = ["SignerActor", "PendingWork", "error_dict", "WakeupMessage"]
