"""One way to ask with a deadline (actors/base.py: expect / send_ask / self.pending), and
the deadlines of the actors that use it, each kept as documented (docs/actors.md)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import DEADLINE_SLACK_S, SignerActor, is_deadline_wakeup
from actors.owners.repository import SEAL_RETRY_S, SEAL_TIMEOUT_S, Repository
from actors.supervisor import STARTUP_TIMEOUT_S, Supervisor
from actors.sync import APPLY_DEADLINE_S, REPLY_DEADLINE_S, Sync
from messages import HsmSealReply, HsmSealRequest, SignerStarted, StartSigner
from messages.repository import AppliedEvents, ApplyEvents, CompleteCertificate, GetSyncState, RepoReply, ReserveSerial
from tests.actors.test_audit_seals import ISSUER, NOW
from tests.support.actor_harness import ActorHarness


class Asker(SignerActor):
    """Asks "peer" for whatever a test says; records replies and time-outs."""
    actor_name = "asker"

    def configure(self, config: Any) -> None:
        self.timed_out: list[tuple[int, Any]] = []
        self.replied: list[Any] = []

    def receiveMsg_tuple(self, message: tuple, sender: Any) -> None:  # ("ask", context, timeout)
        _, context, timeout_s = message
        self.send_ask(self.peer("peer"), lambda tag: ("question", tag), context, timeout_s, self.gave_up)

    def receiveMsg_int(self, tag: int, sender: Any) -> None:  # a reply: its tag
        context = self.pending.pop(tag)
        if context is not None:
            self.replied.append(context)

    def gave_up(self, tag: int, context: Any) -> None:
        if context == "explodes":
            raise RuntimeError("a time-out handler failed")
        self.timed_out.append((tag, context))


def asker() -> ActorHarness:
    return ActorHarness(Asker, SimpleNamespace(), {"peer": "P"})


def deadline_timers(h: ActorHarness) -> list[tuple[float, Any]]:
    return [(delay, payload) for delay, payload in h.wakeups if is_deadline_wakeup(payload)]


def test_many_asks_share_one_deadline_wakeup_and_only_unanswered_ones_time_out():
    h = asker()
    for context in ("a", "b", "c"):
        h.deliver(("ask", context, 10.0))
    tags = [m[1] for _, m in h.take()]
    assert len(tags) == 3 and len(h.actor.pending) == 3
    [(delay, _)] = deadline_timers(h)  # the first deadline's; the later ones are near it
    assert 10.0 <= delay <= 10.0 + 2 * DEADLINE_SLACK_S
    h.deliver(tags[1], "P")
    h.pass_time(9.0)
    assert h.actor.timed_out == []  # not before the deadline
    h.pass_time(1.5)
    assert h.actor.timed_out == [(tags[0], "a"), (tags[2], "c")]
    assert h.actor.replied == ["b"] and len(h.actor.pending) == 0
    h.deliver(tags[0], "P")  # a late reply finds nothing
    assert h.actor.replied == ["b"]


def test_a_shorter_deadline_gets_its_own_wakeup_and_a_longer_one_is_re_armed():
    h = asker()
    h.deliver(("ask", "long", 30.0))
    h.deliver(("ask", "short", 5.0))
    assert sorted(round(delay) for delay, _ in deadline_timers(h)) == [5, 30]
    h.pass_time(5.5)
    assert [c for _, c in h.actor.timed_out] == ["short"]
    h.pass_time(25.0)
    assert [c for _, c in h.actor.timed_out] == ["short", "long"]


def test_a_wakeup_that_comes_early_is_armed_again():
    h = asker()
    h.deliver(("ask", "x", 10.0))
    [(delay, payload)] = deadline_timers(h)
    h.deliver(WakeupMessage(delay, payload))  # the clock has not reached the deadline
    assert h.actor.timed_out == [] and len(h.actor.pending) == 1
    assert len(deadline_timers(h)) == 2  # a new one for the same deadline
    h.pass_time(10.5)
    assert [c for _, c in h.actor.timed_out] == ["x"]


def test_a_failing_time_out_handler_is_counted_and_the_others_still_run():
    h = asker()
    h.deliver(("ask", "explodes", 1.0))
    h.deliver(("ask", "fine", 1.0))
    h.pass_time(2.0)
    assert [c for _, c in h.actor.timed_out] == ["fine"]
    assert h.actor.errors == 1 and "a time-out handler failed" in h.actor.last_error


# -- the actors that ask --------------------------------------------------------------------

def repository_actor(tmp_path: Path) -> ActorHarness:
    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")),
                             sync=None)
    return ActorHarness(Repository, config, {"hsm": "HSM"})


def test_a_seal_the_hsm_never_answers_fails_after_its_deadline_and_is_retried(tmp_path):
    h = repository_actor(tmp_path)
    h.deliver(ReserveSerial(1, ISSUER, "1", "req-1", "server", "CN=x", NOW, NOW), "handler")
    h.deliver(CompleteCertificate(2, ISSUER, "1", b"DER", "req-1", "sign_x509", "d", {}), "handler")
    (_, request), = h.take(HsmSealRequest)
    h.pass_time(SEAL_TIMEOUT_S - 1)
    assert h.actor.seal_error is None and h.actor.sealing == request.tag
    h.pass_time(1.1)
    assert h.actor.seal_error == f"the hsm actor did not answer a seal within {SEAL_TIMEOUT_S:g} s"
    assert h.actor.sealing is None and (SEAL_RETRY_S, ("seal_retry", None)) in h.wakeups
    h.deliver(HsmSealReply(request.tag, request.seq, request.hash, "2026-01-01T00:00:00Z", b"s"), "HSM")
    assert h.actor.store.last_audit_seal() is None  # the late reply is not stored
    h.deliver(WakeupMessage(SEAL_RETRY_S, ("seal_retry", None)))
    (_, again), = h.take(HsmSealRequest)
    assert again.seq == request.seq and again.tag != request.tag
    h.actor.shutdown()


def test_a_restarted_peer_drops_the_seal_in_flight(tmp_path):
    h = repository_actor(tmp_path)
    h.deliver(ReserveSerial(1, ISSUER, "1", "req-1", "server", "CN=x", NOW, NOW), "handler")
    h.deliver(CompleteCertificate(2, ISSUER, "1", b"DER", "req-1", "sign_x509", "d", {}), "handler")
    (_, first), = h.take(HsmSealRequest)
    from messages import Configure
    h.deliver(Configure("repository", h.actor.config, {"hsm": "HSM2"}, first=False), "supervisor")
    (address, again), = h.take(HsmSealRequest)
    assert address == "HSM2" and again.tag != first.tag
    assert list(h.actor.pending.items()) == [(again.tag, again.seq)]
    h.actor.shutdown()


def test_another_peers_restart_keeps_the_seal_in_flight(tmp_path):
    """Any child's restart sends every actor a new address book: a seal asked of the same,
    living Hsm actor is still answered, so no second one is asked."""
    h = repository_actor(tmp_path)
    h.deliver(ReserveSerial(1, ISSUER, "1", "req-1", "server", "CN=x", NOW, NOW), "handler")
    h.deliver(CompleteCertificate(2, ISSUER, "1", b"DER", "req-1", "sign_x509", "d", {}), "handler")
    (_, first), = h.take(HsmSealRequest)
    from messages import Configure
    h.deliver(Configure("repository", h.actor.config, {"hsm": "HSM", "x509_signer": "X2"}, first=False),
              "supervisor")
    assert h.take(HsmSealRequest) == []
    assert list(h.actor.pending.items()) == [(first.tag, first.seq)]
    h.actor.shutdown()


def test_the_supervisor_reports_children_that_never_configured():
    h = ActorHarness(Supervisor)
    config = SimpleNamespace(sync=None, x509=SimpleNamespace(workers=1), node_id="n",
                             repository=SimpleNamespace(path="r"))
    h.deliver(StartSigner(config), "system")
    h.pass_time(STARTUP_TIMEOUT_S - 1)
    assert h.take(SignerStarted) == []
    h.pass_time(1.1)
    (address, started), = h.take(SignerStarted)
    assert address == "system" and not started.ok
    assert started.errors[0].startswith("no answer from ['ca_info', ") and "within 60 s" in started.errors[0]


class FakeBridge:
    def __init__(self) -> None:
        self.settled: list[tuple[list, list]] = []

    def settle(self, acks: list, naks: list) -> None:
        self.settled.append((acks, naks))


def sync_actor() -> ActorHarness:
    """Sync without its NATS thread: only its repository asks are exercised."""
    h = ActorHarness(Sync)
    actor = h.actor
    actor.config, actor.addresses = SimpleNamespace(), {"repository": "REPO"}
    actor.sync = SimpleNamespace(publish_interval_s=1.0, batch=100, peer_url=None)
    actor.node_id, actor.bridge, actor.sync_error = "n1", FakeBridge(), None
    actor.last_published, actor.local_ready, actor.publishing = 5, False, False
    actor.applied, actor.last_applied_seq, actor.quarantined = 0, None, 0
    actor.init_outbox()
    return h


def test_sync_hands_a_batch_back_when_the_repository_never_answers_its_apply():
    h = sync_actor()
    batch = [("token-1", 7, {"seq": 7}), ("token-2", 8, {"seq": 8})]
    h.actor.bridge_result("received", batch)
    (_, apply), = h.take(ApplyEvents)
    h.pass_time(APPLY_DEADLINE_S - 1)
    assert h.actor.bridge.settled == []
    h.pass_time(1.1)
    assert h.actor.bridge.settled == [([], ["token-1", "token-2"])]
    assert h.actor.sync_error == f"apply: no answer within {APPLY_DEADLINE_S:g} s; handed back"
    h.deliver(RepoReply(apply.tag, AppliedEvents(2, 0, 0, None)), "REPO")
    assert h.actor.bridge.settled == [([], ["token-1", "token-2"])]  # the late reply settles nothing


def test_sync_asks_for_its_position_again_after_a_lost_reply():
    h = sync_actor()
    h.actor.last_published = None
    h.actor.ask_repository(lambda tag: GetSyncState(tag, "last_published_seq"), "last_published")
    (_, first), = h.take(GetSyncState)
    h.deliver(WakeupMessage(1.0), "self")  # its publish timer: the ask is still waiting
    assert h.take(GetSyncState) == []
    h.pass_time(REPLY_DEADLINE_S + 0.1)
    h.deliver(WakeupMessage(1.0), "self")
    (_, again), = h.take(GetSyncState)
    assert again.tag != first.tag and again.key == first.key
