"""Helpers for handler tests in which the test plays the Repository ("REPO") and the
Dispatcher ("D") around one handler actor driven by tests/support/actor_harness.py."""
from __future__ import annotations

from typing import Any

from messages import CommandReply
from messages.repository import RepoReply
from tests.support.actor_harness import ActorHarness

CLIENT = "D"  # the Dispatcher, as far as a handler knows


def asked(h: ActorHarness, kind: type, peer: str = "REPO") -> Any:
    """The one message of `kind` the actor sent, checked to have gone to `peer`."""
    address, message = h.only(kind)
    assert address == peer
    return message


def play_repo(h: ActorHarness, kind: type, value: Any = None, error: dict | None = None) -> Any:
    """Answer the actor's `kind` request with `value` as the store returns it (a dict of
    columns), typed as the Repository actor types it (RepoRequest.typed_value)."""
    request = asked(h, kind, "REPO")
    h.deliver(RepoReply(request.tag, None if error else request.typed_value(value), error), "REPO")
    return request


def reply_to(h: ActorHarness, tag: int = 1) -> CommandReply:
    address, reply = h.only(CommandReply)
    assert (address, reply.tag) == (CLIENT, tag)
    return reply


def body_of(h: ActorHarness, tag: int = 1) -> dict[str, Any]:
    reply = reply_to(h, tag)
    assert reply.error is None, reply.error
    return reply.body


def error_of(h: ActorHarness, tag: int = 1) -> dict[str, str]:
    reply = reply_to(h, tag)
    assert reply.body is None and reply.error is not None
    return reply.error


def assert_quiet(h: ActorHarness) -> None:
    """The actor sent nothing besides what the test already took."""
    assert h.sent == []
