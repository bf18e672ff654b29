"""Dispatcher: validates each request envelope, routes it to its handler actor, and sends
the responses back in whatever order they finish, matched by the client's id.

It owns no command logic. It guarantees that every valid request gets exactly one answer:
the handler's, or `handler_unavailable` when the handler crashed or let its deadline pass.

A handler with several workers (the X509Signer pool, actors/handlers/pool.py) gets each request on
the worker with the fewest requests in flight, so a burst is spread evenly.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from thespian.actors import PoisonMessage

from actors.base import SignerActor
from actors.handlers.pool import members
from core.wire.protocol import SignerError, RequestError, decode_request, encode_error, encode_response
from messages import Batch, CommandReply, CommandRequest, FrameReceived, FrameToSend

# command name -> handler actor name. Later issues add their commands here.
ROUTES: dict[str, str] = {
    "health": "health",
    "ca_info": "ca_info",
    "sign_x509": "x509_signer",
    "revoke_x509": "revoker",
    "fetch_crl": "crl_issuer",
    "sign_openpgp": "openpgp_signer",
}


@dataclass
class InFlight:
    request_id: str | int
    command: str
    handler: str
    handler_address: Any
    started: float


class Dispatcher(SignerActor):
    actor_name = "dispatcher"

    def configure(self, config: Any) -> None:
        self.routes = {cmd: name for cmd, name in ROUTES.items() if name in self.addresses}
        self.workers = {name: members(name, self.addresses) for name in set(self.routes.values())}
        self.busy: Counter[str] = Counter()  # requests in flight per worker
        self.timeout_s = config.protocol.handler_timeout_s
        self.in_flight_ids: set[str | int] = set()
        self.commands: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    def receiveMsg_FrameReceived(self, message: FrameReceived, sender: Any) -> None:
        try:
            request = decode_request(message.payload, self.routes.keys())
        except SignerError as exc:
            request_id = exc.request_id if isinstance(exc, RequestError) else None
            self.rejected[exc.code] += 1
            self.reply_error(request_id, exc.code, exc.message)
            return
        if request.request_id in self.in_flight_ids:
            self.rejected["duplicate_request"] += 1
            self.reply_error(request.request_id, "duplicate_request",
                             "a request with this id is in flight; its answer will follow")
            return
        handler = min(self.workers[self.routes[request.command]], key=lambda worker: self.busy[worker])
        self.busy[handler] += 1
        address = self.peer(handler)
        self.in_flight_ids.add(request.request_id)
        self.commands[request.command] += 1
        self.send_ask(address, lambda tag: CommandRequest(tag, request.request_id, request.command, request.body),
                      InFlight(request.request_id, request.command, handler, address, time.monotonic()),
                      self.timeout_s, self.handler_timed_out)

    def receiveMsg_CommandReply(self, message: CommandReply, sender: Any) -> None:
        flight = self.pending.pop(message.tag)
        if flight is None:
            return  # answered already (deadline passed); the late reply is dropped
        self.done(flight)
        if message.error is not None:
            self.rejected[message.error.get("code", "internal_error")] += 1
            self.reply_error(flight.request_id, message.error.get("code", "internal_error"),
                             message.error.get("message", ""))
        else:
            self.send(self.peer("framing"), FrameToSend(encode_response(flight.request_id, message.body or {})))

    def receiveMsg_PoisonMessage(self, message: PoisonMessage, sender: Any) -> None:
        # A handler raised twice on the same request: answer it rather than let it hang.
        original = message.poisonMessage
        for request in original.messages if isinstance(original, Batch) else [original]:
            if isinstance(request, CommandRequest):
                self.fail(request.tag, "internal_error", f"handler failed on {request.command}")

    def handler_timed_out(self, tag: int, flight: InFlight) -> None:
        self.done(flight)
        self.reply_error(flight.request_id, "handler_unavailable",
                         f"{flight.handler} did not answer within {self.timeout_s:g} s")

    def on_addresses_changed(self) -> None:
        # A handler that was re-created lost whatever it was working on: answer now.
        for tag, flight in self.pending.items():
            if self.addresses.get(flight.handler) != flight.handler_address:
                self.fail(tag, "handler_unavailable", f"{flight.handler} restarted; retry the request")

    def fail(self, tag: int, code: str, message: str) -> None:
        flight = self.pending.pop(tag)
        if flight is not None:
            self.done(flight)
            self.reply_error(flight.request_id, code, message)

    def done(self, flight: InFlight) -> None:
        self.in_flight_ids.discard(flight.request_id)
        self.busy[flight.handler] -= 1

    def reply_error(self, request_id: str | int | None, code: str, message: str) -> None:
        self.send(self.peer("framing"), FrameToSend(encode_error(request_id, code, message)))

    def figures(self) -> dict[str, Any]:
        return {"in_flight": len(self.pending), "commands": dict(self.commands),
                "rejected": dict(self.rejected)}
