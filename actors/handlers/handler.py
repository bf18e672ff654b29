"""What command handlers share: a typed Job per client request and asks to other actors
that continue in a callback when the reply arrives (an actor must never block on a reply).

    self.ask_repository(job, lambda tag: RevokeCertificate(tag, ...), self.revoked)

A handler parses the body once into its command's request dataclass (`parse`: the
`core/*/requests.py` modules), keeps what it works out between replies in a state dataclass
of its own (`new_state`), and continues in typed callbacks: a `RepoRequest[V]` ask
continues with a V, an HSM ask with the signature's bytes. Any typed error raised in a
continuation, or returned by the asked actor, answers the client with that error;
`on_error` lets a step clean up first (e.g. a serial reservation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from actors.base import SignerActor, error_dict
from core.wire.protocol import ERROR_CODES, SignerError
from core.wire.requests import request_digest
from messages import CommandReply, CommandRequest, HsmSignReply, HsmSignRequest
from messages.repository import LookupRequest, RepoReply, RepoRequest, StoredRequest

ASK_TIMEOUT_S = 30.0
PEER_TIMEOUT_CODES = {"hsm": "hsm_unavailable", "repository": "repository_error"}

R = TypeVar("R")  # the command's parsed request
S = TypeVar("S")  # the handler's job state
V = TypeVar("V")  # what an ask continues with


@dataclass(frozen=True)
class Envelope:
    """One client request as the Dispatcher sent it (`CommandRequest`)."""
    client: Any  # the Dispatcher's address
    tag: int
    request_id: str | int
    command: str
    body: dict[str, Any]  # as sent: kept for the request digest only


@dataclass(eq=False)
class Job(Generic[R, S]):
    """One client request being handled: its envelope, its parsed request and the handler's
    state, carried from step to step."""
    envelope: Envelope
    request: R
    state: S
    request_digest: str | None = None  # set before a look-up or store of the request id
    audit_head: dict[str, Any] | None = None  # the head a state-changing step returned

    @property
    def request_id(self) -> str | int:
        return self.envelope.request_id

    @property
    def command(self) -> str:
        return self.envelope.command


@dataclass
class Ask:
    job: Job[Any, Any]
    peer: str
    then: Callable[[Job[Any, Any], Any], None]
    on_error: Callable[[Job[Any, Any], dict[str, str]], None] | None


class HandlerActor(SignerActor, Generic[R, S]):
    def configure(self, config: Any) -> None:
        self.answered = 0
        self.refused: dict[str, int] = {}

    # -- what each handler defines --------------------------------------------------------
    def parse(self, envelope: Envelope) -> R:
        """The command's request from its body; raises the SignerError answered."""
        raise NotImplementedError

    def new_state(self, request: R) -> S:
        raise NotImplementedError

    def start(self, job: Job[R, S]) -> None:
        raise NotImplementedError

    # -- the job's life ---------------------------------------------------------------------
    def receiveMsg_CommandRequest(self, message: CommandRequest, sender: Any) -> None:
        envelope = Envelope(sender, message.tag, message.request_id, message.command, message.body)
        self.step(envelope, lambda: self.begin(envelope))

    def begin(self, envelope: Envelope) -> None:
        request = self.parse(envelope)
        self.start(Job(envelope, request, self.new_state(request)))

    def step(self, job: Job[R, S] | Envelope, work: Callable[[], None]) -> None:
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
            envelope = job.envelope if isinstance(job, Job) else job
            self.log.exception("%s failed on %s", self.actor_name, envelope.command)
            self.fail(job, error_dict(exc))

    # -- asking the Repository and the Hsm --------------------------------------------------
    def ask(self, job: Job[R, S], peer: str, make: Callable[[int], Any], then: Callable[[Job[R, S], Any], None],
            on_error: Callable[[Job[R, S], dict[str, str]], None] | None = None,
            timeout_s: float = ASK_TIMEOUT_S) -> None:
        self.send_ask(self.peer(peer), make, Ask(job, peer, then, on_error), timeout_s, self.ask_timed_out)

    def ask_repository(self, job: Job[R, S], make: Callable[[int], RepoRequest[V]],
                       then: Callable[[Job[R, S], V], None],
                       on_error: Callable[[Job[R, S], dict[str, str]], None] | None = None) -> None:
        """Ask the Repository; `then(job, value)` gets the operation's typed value."""
        self.ask(job, "repository", make, then, on_error)

    def ask_hsm(self, job: Job[R, S], make: Callable[[int], HsmSignRequest],
                then: Callable[[Job[R, S], bytes], None],
                on_error: Callable[[Job[R, S], dict[str, str]], None] | None = None) -> None:
        """Ask the Hsm actor for a signature; `then(job, signature)`."""
        self.ask(job, "hsm", make, then, on_error)

    def ask_timed_out(self, tag: int, pending: Ask) -> None:
        code = PEER_TIMEOUT_CODES.get(pending.peer, "internal_error")
        self.step(pending.job, lambda: self.failed_ask(
            pending, {"code": code, "message": f"{pending.peer} did not answer within {ASK_TIMEOUT_S:g} s"}))

    def unless_replayed(self, job: Job[R, S], then: Callable[[Job[R, S]], None]) -> None:
        """Idempotency by request id: a stored result for the same request is answered again
        (with replayed: true) and nothing new is made; the id with other content is refused;
        an unknown id continues with `then`. Sets job.request_digest."""
        job.request_digest = request_digest(job.command, job.envelope.body)

        def after_lookup(job: Job[R, S], stored: StoredRequest | None) -> None:
            if stored is None:
                then(job)
            else:
                self.answer_stored(job, stored)
        self.ask_repository(job, lambda tag: LookupRequest(tag, str(job.request_id)), after_lookup)

    def answer_stored(self, job: Job[R, S], stored: StoredRequest) -> None:
        """The stored outcome of job's request id: the same request is answered again with
        `replayed: true`; other content under that id is refused."""
        if stored.command == job.command and stored.request_digest == job.request_digest:
            self.finish(job, dict(stored.result, replayed=True))
        else:
            raise SignerError("request_id_conflict",
                              f"request id {job.request_id!r} was used for a different request")

    def receiveMsg_RepoReply(self, message: RepoReply[Any], sender: Any) -> None:
        if message.audit_head is not None:  # the step changed state: the answer names the head
            pending: Ask | None = self.pending.get(message.tag)
            if pending is not None:
                pending.job.audit_head = message.audit_head
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

    # -- answers ----------------------------------------------------------------------------
    def finish(self, job: Job[R, S], body: dict[str, Any]) -> None:
        self.answered += 1
        if job.audit_head is not None:  # docs/protocol.md, "The audit head"
            body = dict(body, audit_head=job.audit_head)
        self.send(job.envelope.client, CommandReply(job.envelope.tag, body=body))

    def fail(self, job: Job[R, S] | Envelope, error: dict[str, str]) -> None:
        envelope = job.envelope if isinstance(job, Job) else job
        self.refused[error["code"]] = self.refused.get(error["code"], 0) + 1
        self.send(envelope.client, CommandReply(envelope.tag, error=error))

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, CommandRequest):
            self.send(sender, CommandReply(message.tag, error=error_dict(exc)))

    def figures(self) -> dict[str, Any]:
        return {"answered": getattr(self, "answered", 0), "refused": dict(getattr(self, "refused", {})),
                "waiting": len(self.pending)}
