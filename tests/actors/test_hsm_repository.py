"""The Hsm and Repository actors in-process with mock peers, on a real SoftHSM token and a
real SQLite file. The HSM faults are made from under the actor, in its own process."""
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from actors.owners.repository import Repository
from messages import (HsmHealthReply, HsmHealthRequest, HsmSignReply, HsmSignRequest,
                      RepoHealthReply, RepoHealthRequest)
from tests.support.actor_harness import ActorHarness
from tests.support.fixtures_shared import hsm_actor as start_hsm_actor, token_rsa_key

KEY = "actor-test-rsa"


@pytest.fixture(scope="module")
def token_key(softhsm):
    return token_rsa_key(KEY)


@pytest.fixture
def hsm_actor(token_key, monkeypatch):
    harness = start_hsm_actor(KEY, monkeypatch)
    yield harness
    harness.actor.shutdown()


def sign(h, data=b"to be signed"):
    h.deliver(HsmSignRequest(1, KEY, "sha256-rsa-pkcs1", data), "handler")
    (address, reply), = h.take(HsmSignReply)
    return reply


def health(h):
    h.deliver(HsmHealthRequest(2), "health")
    (_, reply), = h.take(HsmHealthReply)
    return reply


def test_hsm_actor_signs(hsm_actor, token_key):
    reply = sign(hsm_actor)
    assert reply.error is None
    token_key.verify(reply.signature, b"to be signed", padding.PKCS1v15(), hashes.SHA256())


def test_hsm_actor_recovers_after_all_sessions_closed(hsm_actor):
    session = hsm_actor.actor.session
    session._lib.closeAllSessions(session._slot)
    reply = health(hsm_actor)
    assert reply.error is None and reply.health["ok"] and reply.health["test_signature_ms"] > 0
    assert session.recoveries >= 1


def test_hsm_actor_recovers_after_logout(hsm_actor, token_key):
    session = hsm_actor.actor.session
    session._session.logout()
    reply = sign(hsm_actor, b"after logout")
    assert reply.error is None
    token_key.verify(reply.signature, b"after logout", padding.PKCS1v15(), hashes.SHA256())
    assert hsm_actor.actor.figures()["recoveries"] >= 1


def test_hsm_actor_unknown_key_is_a_typed_error(hsm_actor):
    hsm_actor.deliver(HsmSignRequest(3, "no-such-key", "sha256-rsa-pkcs1", b"x"), "handler")
    (_, reply), = hsm_actor.take(HsmSignReply)
    assert reply.signature is None and reply.error["code"] == "hsm_key_not_found"


def test_repository_actor_health(tmp_path):
    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")), sync=None)
    h = ActorHarness(Repository, config, {})
    h.deliver(RepoHealthRequest(5), "health")
    (_, reply), = h.take(RepoHealthReply)
    # The first quick_check runs in a thread (it reads every page); meanwhile: pending.
    assert reply.tag == 5 and reply.health["quick_check"] in ("pending", "ok")
    assert reply.health["last_event_seq"] == 0
    h.actor.checker.join(10)
    h.deliver(RepoHealthRequest(6), "health")
    (_, reply), = h.take(RepoHealthReply)
    assert reply.health["quick_check"] == "ok" and reply.health["quick_check_age_s"] >= 0
    h.actor.shutdown()


def test_repository_actor_pushes_new_events_to_sync_after_the_commit(tmp_path):
    from datetime import datetime, timedelta, timezone

    from messages.repository import GetSyncState, RepoReply, StoreCrl
    from messages.sync import EventsCommitted

    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")), sync=None)
    h = ActorHarness(Repository, config, {"sync": "SYNC"})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    h.deliver(StoreCrl(1, "root", 1, b"CRL", now, now + timedelta(days=7), "digest", 10), "crl_issuer")
    assert [reply.error for _, reply in h.take(RepoReply)] == [None]
    (address, told), = h.take(EventsCommitted)
    assert address == "SYNC" and told.last_seq == 1
    assert [event["seq"] for event in told.events] == [1]  # pushed along: no Outbox round trip
    h.deliver(GetSyncState(2, "last_published_seq"), "sync")  # reads append nothing: no push
    h.take(RepoReply)
    assert h.take(EventsCommitted) == []
    h.actor.shutdown()
