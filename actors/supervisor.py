"""Supervisor: creates every actor, wires their addresses, restarts a crashed child with
backoff, tells Health which children are down, and answers `signer-admin status` with one
record per actor.

It is the only actor with a global name (SUPERVISOR_NAME), so an admin process that joins
the running actor system can find it.

Who supervises the Supervisor: `signer run` (system.py) watches its pid and, when it dies,
stops the whole signer and exits non-zero so that the service manager restarts it
(docs/decisions/0004-supervisor-death-restarts-the-signer.md). Nothing of the signer
outlives `signer run`: that is the reaper's job (core/runtime/owner_reaper.py), not an actor's,
because any actor can be the one that died.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import SignerActor
from actors.handlers.ca_info import CaInfo
from actors.handlers.crl_issuer import CrlIssuer
from actors.spine.dispatcher import Dispatcher
from actors.spine.framing import Framing
from actors.handlers.health import Health
from actors.owners.hsm import Hsm
from actors.handlers.openpgp_signer import OpenPgpSigner
from actors.handlers.pool import POOLED, pool_base, worker_names
from actors.owners.repository import Repository
from actors.handlers.revoker import Revoker
from actors.spine.serial_link import SerialLink
from actors.sync import Sync
from actors.handlers.x509_signer import X509Signer
from messages import (ActorStatusReply, ActorStatusRequest, Configure, Configured, SignerStarted,
                      StartSigner, SystemStatusReply, SystemStatusRequest)

SUPERVISOR_NAME = "cacert-signer-supervisor"
STARTUP_TIMEOUT_S = 60.0
STATUS_TIMEOUT_S = 3.0
MAX_RESTART_BACKOFF_S = 10.0

# Creation order: what others depend on comes first. Later issues add handlers here.
CHILDREN: dict[str, type] = {
    "repository": Repository,
    "hsm": Hsm,
    "health": Health,
    "ca_info": CaInfo,
    "x509_signer": X509Signer,  # x509.workers of them: x509_signer, x509_signer_2, ... (actors/handlers/pool.py)
    "revoker": Revoker,
    "crl_issuer": CrlIssuer,
    "openpgp_signer": OpenPgpSigner,
    "sync": Sync,  # only when the configuration has a sync section
    "dispatcher": Dispatcher,
    "framing": Framing,
    "serial_link": SerialLink,
}


@dataclass
class StatusQuery:
    requester: Any
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


class Supervisor(SignerActor):
    actor_name = "supervisor"
    needs_configure = False  # it is started by StartSigner, not configured

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.children: dict[str, Any] = {}
        self.restarts: dict[str, int] = {}
        self.last_exit: dict[str, float] = {}
        self.starter: Any = None
        self.awaiting: set[str] = set()
        self.startup_tag: int | None = None  # the start-up's ask (self.pending): every Configured
        self.startup_errors: list[str] = []
        self.stopping = False
        self.down: set[str] = set()  # exited, not yet configured again

    # -- start-up ---------------------------------------------------------------------
    def receiveMsg_StartSigner(self, message: StartSigner, sender: Any) -> None:
        self.config = message.config
        self.starter = sender
        wanted = [worker for name in CHILDREN if name != "sync" or message.config.sync is not None
                  for worker in (worker_names(name, message.config.x509.workers) if name == POOLED else [name])]
        for name in wanted:
            self.children[name] = self.createActor(CHILDREN[pool_base(name)])
            self.restarts[name] = 0
        self.awaiting = set(wanted)
        self.startup_tag = self.expect(None, STARTUP_TIMEOUT_S, self.startup_timed_out)
        for name in wanted:
            self.configure_child(name)

    def startup_timed_out(self, tag: int, context: None) -> None:
        if self.starter is not None:
            self.startup_errors.append(f"no answer from {sorted(self.awaiting)} within {STARTUP_TIMEOUT_S:g} s")
            self.report_startup()

    def configure_child(self, name: str, first: bool = True) -> None:
        self.send(self.children[name], Configure(name, self.config, dict(self.children), first,
                                                 tuple(sorted(self.down))))

    def tell_health_who_is_down(self) -> None:
        if "health" in self.children and "health" not in self.down:
            self.configure_child("health", first=False)

    def receiveMsg_Configured(self, message: Configured, sender: Any) -> None:
        if not message.ok:
            self.log.error("start-up of %s failed: %s", message.name, message.error)
            self.startup_errors.append(message.error or message.name)
        if message.name in self.awaiting:
            self.awaiting.discard(message.name)
            if not self.awaiting:
                self.report_startup()
        if message.ok and message.name in self.down:
            self.down.discard(message.name)
            self.log.info("actor %s is back", message.name)
            self.tell_health_who_is_down()

    def report_startup(self) -> None:
        if self.startup_tag is not None:
            self.pending.pop(self.startup_tag)
            self.startup_tag = None
        if self.starter is not None:
            self.send(self.starter, SignerStarted(not self.startup_errors, self.startup_errors,
                                                  supervisor_pid=os.getpid()))
            self.starter = None

    # -- restarts ---------------------------------------------------------------------
    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        name = next((n for n, a in self.children.items() if a == message.childAddress), None)
        if name is None or self.stopping:
            return
        self.restarts[name] += 1
        self.down.add(name)
        self.log.error("actor %s exited; restart %d", name, self.restarts[name])
        self.tell_health_who_is_down()
        # Back off when a child keeps dying, so a broken one cannot spin the machine.
        recent = time.monotonic() - self.last_exit.get(name, 0) < 30
        self.last_exit[name] = time.monotonic()
        delay = min(0.1 * 2 ** min(self.restarts[name], 8), MAX_RESTART_BACKOFF_S) if recent else 0.05
        self.wakeupAfter(delay, payload=("restart", name))

    def restart(self, name: str) -> None:
        self.children[name] = self.createActor(CHILDREN[pool_base(name)])
        self.configure_child(name)
        for other in self.children:
            if other != name:
                self.configure_child(other, first=False)

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        self.stopping = True

    # -- status -----------------------------------------------------------------------
    def receiveMsg_SystemStatusRequest(self, message: SystemStatusRequest, sender: Any) -> None:
        # One tag for all children; the query is complete when each answered, or at the deadline.
        tag = self.expect(StatusQuery(sender), STATUS_TIMEOUT_S, self.finish_status)
        for address in self.children.values():
            self.send(address, ActorStatusRequest(tag))

    def receiveMsg_ActorStatusReply(self, message: ActorStatusReply, sender: Any) -> None:
        query: StatusQuery | None = self.pending.get(message.tag)
        name = next((n for n, a in self.children.items() if a == sender), None)
        if query is None or name is None:
            return
        query.records[name] = dict(message.record, name=name)
        if len(query.records) == len(self.children):
            self.finish_status(message.tag, self.pending.pop(message.tag))

    def finish_status(self, tag: int, query: StatusQuery | None) -> None:
        if query is None:
            return
        config = getattr(self, "config", None)
        # node_id and repository: signer-admin checks it reached the signer its config names.
        records = [{"name": self.actor_name, "pid": os.getpid(), "alive": True, "restarts": 0,
                    "messages": self.handled, "errors": self.errors, "last_error": self.last_error,
                    "node_id": config.node_id if config else None,
                    "repository": config.repository.path if config else None}]
        for name in self.children:
            record = query.records.get(name) or {
                "name": name, "alive": False,
                "last_error": f"no status reply within {STATUS_TIMEOUT_S:g} s (busy or hung)"}
            record["restarts"] = self.restarts.get(name, 0)
            records.append(record)
        self.send(query.requester, SystemStatusReply(records))

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        kind, *args = message.payload
        if kind == "restart":
            self.restart(args[0])

    def figures(self) -> dict[str, Any]:
        return {"children": len(self.children), "restarts": dict(self.restarts),
                "down": sorted(self.down)}
