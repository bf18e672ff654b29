"""Drive one actor in-process with mock peers: its `send`, `wakeupAfter` and `createActor`
are replaced by recorders, and messages are delivered by calling receiveMessage, as the
actor system would. Peers are plain strings ("mock addresses")."""
from __future__ import annotations

from typing import Any

from thespian.actors import WakeupMessage

from actors.base import is_deadline_wakeup
from messages import Configure, Configured


class ActorHarness:
    def __init__(self, actor_class: type, config: Any = None, addresses: dict[str, Any] | None = None,
                 name: str | None = None) -> None:
        self.actor = actor_class()
        self.sent: list[tuple[Any, Any]] = []
        self.wakeups: list[tuple[float, Any]] = []
        self.created: list[Any] = []
        self.actor.send = lambda address, message: self.sent.append((address, message))
        self.elapsed = 0.0  # time passed by pass_time
        self.timers: list[tuple[float, float, Any]] = []  # (due at elapsed, delay, payload)
        self.actor.wakeupAfter = self._wakeup_after
        self.actor.createActor = self._create
        self.name = name or actor_class.actor_name
        if config is not None:
            self.deliver(Configure(self.name, config, addresses or {}), "supervisor")
            configured = self.take(Configured)
            assert configured and configured[0][1].ok, configured

    def _wakeup_after(self, delay: float, payload: Any = None) -> None:
        self.wakeups.append((delay, payload))
        self.timers.append((self.elapsed + delay, delay, payload))

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

    def pass_time(self, seconds: float) -> None:
        """Let `seconds` pass for the actor's ask deadlines (actors/base.py: its `pending`
        clock moves on) and deliver the deadline wakeups it armed that are due by then."""
        clock = self.actor.pending.clock
        self.actor.pending.clock = lambda: clock() + seconds
        self.elapsed += seconds
        due = [t for t in self.timers if is_deadline_wakeup(t[2]) and t[0] <= self.elapsed]
        self.timers = [t for t in self.timers if t not in due]
        for _, delay, payload in due:
            self.wakeups.remove((delay, payload))
            self.deliver(WakeupMessage(delay, payload))

    def only(self, kind: type) -> tuple[Any, Any]:
        taken = self.take(kind)
        assert len(taken) == 1, taken
        return taken[0]
