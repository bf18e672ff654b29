"""Dispatcher: validates each request envelope, routes it to its handler actor, and sends
the responses back in whatever order they finish, matched by the client's id.

It owns no command logic. It guarantees that every valid request gets exactly one answer:
the handler's, or `handler_unavailable` when the handler crashed or let its deadline pass.

A handler with several workers (the X509Signer pool, actors/handlers/pool.py) gets each request on
the worker with the fewest requests in flight, so a burst is spread evenly. A pooled worker
has at most WINDOW requests at a time; the others wait here, in arrival order, and go to the
first worker that answers one. Without the window a burst filled the worker's mailbox with
new requests, and the replies that finish earlier requests (Repository, Hsm) waited behind
all of them: no answer left until the whole burst was built and linted, and the serial
link's answer direction stood idle meanwhile (docs/decisions/0010-fast-path.md).
"""
from __future__ import annotations

import time
from collections import Counter, deque
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
# handler -> requests one worker of it has at most at a time; more wait in the Dispatcher.
# 16: bench_slow_link at 921,600 baud 96-97 % of the link (8: the same; none: 63 %), and
# bench_x509's pipelined batches as large as without a window (8: ~10 % fewer per second).
WINDOW: dict[str, int] = {"x509_signer": 16}


@dataclass
class InFlight:
    request_id: str | int
    command: str
    handler: str | None  # the worker; None while the request waits for a window slot
    handler_address: Any
    started: float
    body: dict[str, Any] | None = None  # kept only while it waits


class Dispatcher(SignerActor):
    actor_name = "dispatcher"

    def configure(self, config: Any) -> None:
        self.routes = {cmd: name for cmd, name in ROUTES.items() if name in self.addresses}
        self.workers = {name: members(name, self.addresses) for name in set(self.routes.values())}
        self.busy: Counter[str] = Counter()  # requests in flight per worker
        self.waiting: dict[str, deque[int]] = {name: deque() for name in self.workers}  # tags, by handler
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
        self.in_flight_ids.add(request.request_id)
        self.commands[request.command] += 1
        route = self.routes[request.command]
        # The deadline counts from arrival, waiting included.
        tag = self.expect(InFlight(request.request_id, request.command, None, None, time.monotonic(),
                                   request.body), self.timeout_s, self.handler_timed_out)
        self.waiting[route].append(tag)
        self.release(route)

    def release(self, route: str) -> None:
        """Send waiting requests of `route`, oldest first, while a worker has room."""
        window, queue = WINDOW.get(route), self.waiting[route]
        while queue:
            worker = min(self.workers[route], key=lambda name: self.busy[name])
            if window is not None and self.busy[worker] >= window:
                return
            tag = queue.popleft()
            flight = self.pending.get(tag)
            if flight is None:
                continue  # it waited past its deadline and was answered
            flight.handler, flight.handler_address = worker, self.peer(worker)
            body, flight.body = flight.body or {}, None
            self.busy[worker] += 1
            self.send(flight.handler_address, CommandRequest(tag, flight.request_id, flight.command, body))

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
                         f"{flight.handler or self.routes[flight.command]} did not answer within {self.timeout_s:g} s")

    def on_addresses_changed(self) -> None:
        # A handler that was re-created lost whatever it was working on: answer now.
        for tag, flight in self.pending.items():
            if flight.handler is not None and self.addresses.get(flight.handler) != flight.handler_address:
                self.fail(tag, "handler_unavailable", f"{flight.handler} restarted; retry the request")

    def fail(self, tag: int, code: str, message: str) -> None:
        flight = self.pending.pop(tag)
        if flight is not None:
            self.done(flight)
            self.reply_error(flight.request_id, code, message)

    def done(self, flight: InFlight) -> None:
        self.in_flight_ids.discard(flight.request_id)
        if flight.handler is None:
            return  # it never left the queue (its tag is skipped there)
        self.busy[flight.handler] -= 1
        self.release(self.routes[flight.command])

    def reply_error(self, request_id: str | int | None, code: str, message: str) -> None:
        self.send(self.peer("framing"), FrameToSend(encode_error(request_id, code, message)))

    def figures(self) -> dict[str, Any]:
        waiting = sum(1 for _, flight in self.pending.items() if flight.handler is None)
        return {"in_flight": len(self.pending) - waiting, "waiting": waiting,
                "commands": dict(self.commands), "rejected": dict(self.rejected)}
