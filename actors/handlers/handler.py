"""What command handlers share: a Job per client request and asks to other actors that
continue in a callback when the reply arrives (an actor must never block on a reply).

    self.ask(job, "repository", lambda tag: LookupRequest(tag, job.request_id), self.after_lookup)

Any typed error raised in a continuation, or returned by the asked actor, answers the
client with that error; `on_error` lets a step clean up first (e.g. a serial reservation).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from actors.base import SignerActor, error_dict
from core.wire.protocol import ERROR_CODES, SignerError, pack
from messages import CommandReply, CommandRequest, HsmSignReply
from messages.repository import LookupRequest, RepoReply

ASK_TIMEOUT_S = 30.0
PEER_TIMEOUT_CODES = {"hsm": "hsm_unavailable", "repository": "repository_error"}


@dataclass
class Job:
    client: Any
    tag: int
    request_id: str | int
    command: str
    body: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ask:
    job: Job
    peer: str
    then: Callable[[Job, Any], None]
    on_error: Callable[[Job, dict[str, str]], None] | None


def request_digest(command: str, body: dict[str, Any]) -> str:
    """Identifies a request's content, so a reused id with other content is caught."""
    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return sorted((str(k), canonical(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value
    return hashlib.sha256(pack([command, canonical(body)])).hexdigest()


class HandlerActor(SignerActor):
    # Body fields the command takes; any other is refused, so a request can never smuggle
    # in something (say, extensions) that a handler would silently ignore.
    body_fields: frozenset[str] = frozenset()

    def configure(self, config: Any) -> None:
        self.answered = 0
        self.refused: dict[str, int] = {}

    def start(self, job: Job) -> None:
        raise NotImplementedError

    def receiveMsg_CommandRequest(self, message: CommandRequest, sender: Any) -> None:
        job = Job(sender, message.tag, message.request_id, message.command, message.body)
        self.step(job, lambda: self.check_fields(job) or self.start(job))

    def check_fields(self, job: Job) -> None:
        unknown = sorted(map(str, set(job.body) - self.body_fields))
        if unknown:
            raise SignerError("bad_request", f"unknown field(s) {unknown} for {job.command}; "
                                             f"it takes {sorted(self.body_fields)}")

    def step(self, job: Job, work: Callable[[], None]) -> None:
        """Run one step of a job; a typed error ends the job with that error."""
        try:
            work()
        except SignerError as exc:
            self.fail(job, exc.to_wire())
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - answered, counted, logged; includes
            # pyo3's PanicException (a BaseException) from cryptography, which must not kill
            # the actor process and turn every later request into handler_unavailable.
            if getattr(exc, "code", None) in ERROR_CODES:  # a typed refusal from a core module
                self.fail(job, error_dict(exc))
                return
            self.record_error(exc)
            self.log.exception("%s failed on %s", self.actor_name, job.command)
            self.fail(job, error_dict(exc))

    def ask(self, job: Job, peer: str, make: Callable[[int], Any], then: Callable[[Job, Any], None],
            on_error: Callable[[Job, dict[str, str]], None] | None = None,
            timeout_s: float = ASK_TIMEOUT_S) -> None:
        self.send_ask(self.peer(peer), make, Ask(job, peer, then, on_error), timeout_s, self.ask_timed_out)

    def ask_timed_out(self, tag: int, pending: Ask) -> None:
        code = PEER_TIMEOUT_CODES.get(pending.peer, "internal_error")
        self.step(pending.job, lambda: self.failed_ask(
            pending, {"code": code, "message": f"{pending.peer} did not answer within {ASK_TIMEOUT_S:g} s"}))

    def unless_replayed(self, job: Job, then: Callable[[Job], None]) -> None:
        """Idempotency by request id: a stored result for the same request is answered again
        (with replayed: true) and nothing new is made; the id with other content is refused;
        an unknown id continues with `then`. Sets job.state["request_digest"]."""
        job.state["request_digest"] = request_digest(job.command, job.body)

        def after_lookup(job: Job, stored: dict[str, Any] | None) -> None:
            if stored is None:
                then(job)
            else:
                self.answer_stored(job, stored)
        self.ask(job, "repository", lambda tag: LookupRequest(tag, str(job.request_id)), after_lookup)

    def answer_stored(self, job: Job, stored: dict[str, Any]) -> None:
        """The stored outcome of job's request id: the same request is answered again with
        `replayed: true`; other content under that id is refused."""
        if stored["command"] == job.command and stored["request_digest"] == job.state["request_digest"]:
            self.finish(job, dict(stored["result"], replayed=True))
        else:
            raise SignerError("request_id_conflict",
                              f"request id {job.request_id!r} was used for a different request")

    def receiveMsg_RepoReply(self, message: RepoReply, sender: Any) -> None:
        if message.audit_head is not None:  # the step changed state: the answer names the head
            pending: Ask | None = self.pending.get(message.tag)
            if pending is not None:
                pending.job.state["audit_head"] = message.audit_head
        self.resume(message.tag, message.value, message.error)

    def receiveMsg_HsmSignReply(self, message: HsmSignReply, sender: Any) -> None:
        self.resume(message.tag, message.signature, message.error)

    def resume(self, tag: int, value: Any, error: dict[str, str] | None) -> None:
        pending: Ask | None = self.pending.pop(tag)
        if pending is None:
            return  # timed out already; the job was answered
        if error is not None:
            self.step(pending.job, lambda: self.failed_ask(pending, error))
        else:
            self.step(pending.job, lambda: pending.then(pending.job, value))

    def failed_ask(self, pending: Ask, error: dict[str, str]) -> None:
        if pending.on_error is not None:
            pending.on_error(pending.job, error)
        self.fail(pending.job, error)

    def finish(self, job: Job, body: dict[str, Any]) -> None:
        self.answered += 1
        if "audit_head" in job.state:  # docs/protocol.md, "The audit head"
            body = dict(body, audit_head=job.state["audit_head"])
        self.send(job.client, CommandReply(job.tag, body=body))

    def fail(self, job: Job, error: dict[str, str]) -> None:
        self.refused[error["code"]] = self.refused.get(error["code"], 0) + 1
        self.send(job.client, CommandReply(job.tag, error=error))

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, CommandRequest):
            self.send(sender, CommandReply(message.tag, error=error_dict(exc)))

    def figures(self) -> dict[str, Any]:
        return {"answered": getattr(self, "answered", 0), "refused": dict(getattr(self, "refused", {})),
                "waiting": len(self.pending)}
