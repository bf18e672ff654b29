"""Drive one actor in-process with mock peers: its `send`, `wakeupAfter` and `createActor`
are replaced by recorders, and messages are delivered by calling receiveMessage, as the
actor system would. Peers are plain strings ("mock addresses")."""
from __future__ import annotations

from typing import Any

from messages import Configure, Configured


class ActorHarness:
    def __init__(self, actor_class: type, config: Any = None, addresses: dict[str, Any] | None = None,
                 name: str | None = None) -> None:
        self.actor = actor_class()
        self.sent: list[tuple[Any, Any]] = []
        self.wakeups: list[tuple[float, Any]] = []
        self.created: list[Any] = []
        self.actor.send = lambda address, message: self.sent.append((address, message))
        self.actor.wakeupAfter = lambda delay, payload=None: self.wakeups.append((delay, payload))
        self.actor.createActor = self._create
        self.name = name or actor_class.actor_name
        if config is not None:
            self.deliver(Configure(self.name, config, addresses or {}), "supervisor")
            configured = self.take(Configured)
            assert configured and configured[0][1].ok, configured

    def _create(self, cls: Any, **kwargs: Any) -> str:
        address = f"{getattr(cls, 'actor_name', cls)}#{len(self.created) + 1}"
        self.created.append((cls, address))
        return address

    def deliver(self, message: Any, sender: Any = "client") -> Any:
        return self.actor.receiveMessage(message, sender)

    def take(self, kind: type | None = None) -> list[tuple[Any, Any]]:
        """Remove and return the sent messages (of one type, if given)."""
        taken = [(a, m) for a, m in self.sent if kind is None or isinstance(m, kind)]
        self.sent = [(a, m) for a, m in self.sent if not (kind is None or isinstance(m, kind))]
        return taken

    def only(self, kind: type) -> tuple[Any, Any]:
        taken = self.take(kind)
        assert len(taken) == 1, taken
        return taken[0]
