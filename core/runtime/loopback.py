"""Keep every Thespian socket of the signer on the loopback interface.

Thespian binds its TCP sockets to '' (all interfaces) whatever THESPIAN_BASE_IPADDR says,
and anyone who reaches an actor system's admin port can create actors or shut the system
down. The signer has a network link to its peer, so its actor sockets must not be
reachable from there. THESPIAN_BASE_IPADDR makes the addresses Thespian hands out
127.0.0.1, and the patched bindArgs makes the sockets bind there too.

Apply before the ActorSystem is created: actor processes are forked from the admin, which
is forked from the caller, so the patch is inherited by every process of the signer.
"""
from __future__ import annotations

import os
from typing import Any

LOOPBACK = "127.0.0.1"


def restrict_thespian_to_loopback() -> None:
    from thespian.system.transport import IPBase

    os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK
    address_class = IPBase.IPActorAddress
    if getattr(address_class, "_signer_loopback", False):
        return

    def loopback_bind_args(self: Any) -> tuple[tuple[Any, ...]]:
        host, *rest = self.bindname
        if host in ("", "0.0.0.0", None):
            host = LOOPBACK
        return ((host, *rest),)

    address_class.bindArgs = property(loopback_bind_args)
    address_class._signer_loopback = True
