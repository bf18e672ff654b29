"""Two costs Thespian's TCP transport pays on every message that buy the signer nothing.

Measured (issue 18) with py-spy on the actor processes: every pass of the transport loop
makes a new `selectors.DefaultSelector` (epoll: epoll_create1, one epoll_ctl per socket,
close) for one wait, ~10 % of an actor's CPU per message; and every message sent or
received is described for a DEBUG log line (`intent.identify()`, `envelope.identify()`,
built even when nothing is logged) by `str(message)`: the dataclass repr of a whole Batch
with its certificates' bytes, cut to 150 characters afterwards.

`tune_thespian()`:
1. gives the transport `selectors.PollSelector` for that wait: one poll() call with the
   same sockets, no kernel object to make and close. Readiness is the same; a closed
   descriptor is reported as ready (POLLNVAL) instead of failing the registration, and
   reading it then fails as Thespian's other socket errors do.
2. describes a message of the signer's own (`messages` package) by its class name and tag
   in those log lines, and anything else as Thespian did.

Apply it before the ActorSystem is created, like the other patches (core/runtime/loopback.py,
core/runtime/actor_transport_auth.py): actor processes are forked and inherit it.
"""
from __future__ import annotations

import selectors
import types
from typing import Any

_tuned = False


def describe(message: Any) -> str:
    """A signer message as `ClassName(tag=N)` or `Batch(N messages)`; others as str()."""
    kind = type(message)
    if not kind.__module__.startswith("messages"):
        return str(message)
    if kind.__name__ == "Batch":
        return f"Batch({len(message.messages)} messages)"
    tag = getattr(message, "tag", None)
    return f"{kind.__name__}(tag={tag})" if tag is not None else f"{kind.__name__}()"


def tune_thespian() -> None:
    global _tuned
    if _tuned:
        return
    from thespian.system import transport
    from thespian.system.transport import TCPTransport as tcp

    tcp.selectors = types.SimpleNamespace(DefaultSelector=selectors.PollSelector,
                                          EVENT_READ=selectors.EVENT_READ, EVENT_WRITE=selectors.EVENT_WRITE)
    transport.ReceiveEnvelope.identify = _envelope_identify
    transport.TransmitIntent.identify = _intent_identify
    _tuned = True


# Thespian's own identify() methods (thespian/system/transport/__init__.py, 4.0.1), with
# describe(message) where they had str(message) cut to 150 characters.
def _envelope_identify(self: Any) -> str:
    return f"ReceiveEnvelope(from: {self.sender}, {type(self.message)} msg: {_shown(self.message)})"


def _intent_identify(self: Any) -> str:
    parts = [str(self.targetAddr),
             "pending" if self.result is None else "=" + str(self.result),
             "" if self.result is not None else "ExpiresIn_" + str(self.delay()),
             "WAITSLOT" if getattr(self, "_awaitingTXSlot", False) else None,
             "retry#%d" % self._attempts if self._attempts else "",
             str(type(self.message)), _shown(self.message),
             "quit_%s" % str(self._quitTime.view().remaining()),
             "retry_%s" % str(self._retryTime.view().remaining()) if getattr(self, "_retryTime", None) else None,
             "pause_%s" % str(self._pauseUntil.view().remaining()) if getattr(self, "_pauseUntil", None) else None]
    return "TransportIntent(" + "-".join(filter(None, parts)) + ")"


def _shown(message: Any) -> str:
    try:
        text = describe(message)
    except Exception:  # noqa: BLE001 - as Thespian: a description never fails a send
        return "<message>"
    return text if len(text) <= 150 else text[:150] + "..."
