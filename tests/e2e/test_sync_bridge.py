"""core.sync.bridge against real nats-servers configured as the project ships them (one
user per signer, core/sync/nats_auth.py): publishing with de-duplication, a durable consumer
that resumes after acks, and what a client without the right user cannot do."""
import asyncio
import socket
import time

import msgpack
import nats
import pytest

from core.sync.nats_auth import stream_name, subject
from core.sync.bridge import NatsBridge
from tests.support.helpers import NatsServer, NatsUsers


@pytest.fixture
def users(tmp_path):
    return NatsUsers(tmp_path / "users")


@pytest.fixture
def servers(tmp_path, users):
    a = NatsServer(tmp_path / "a", owner="a", readers=("b",), users=users)
    b = NatsServer(tmp_path / "b", owner="b", readers=("a",), users=users)
    yield a, b
    a.stop()
    b.stop()


def bridge(node, local, peer=None, peer_node=None):
    reader, writer = socket.socketpair()
    return NatsBridge(node, local.url, peer.url if peer else None, peer_node, writer,
                      password=local.users.password(node)).start(), reader


def wait_for(b, kind, timeout=15.0, where=lambda v: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            k, v = b.results.get(timeout=0.2)
        except Exception:
            continue
        if k == kind and where(v):
            return v
    raise AssertionError(f"no {kind} within {timeout} s")


def events(first, count):
    return [{"seq": i, "event_id": f"a:{i}", "origin_node": "a", "type": "x", "body": {"n": i},
             "created_at": "2026-01-01T00:00:00Z"} for i in range(first, first + count)]


def test_publish_then_peer_consumes_in_order_and_duplicates_are_dropped(servers):
    a_server, b_server = servers
    a, _ = bridge("a", a_server)
    b, _ = bridge("b", b_server, a_server, "a")
    try:
        wait_for(a, "local_ready")
        a.publish(events(1, 5))
        assert wait_for(a, "published")["last_seq"] == 5
        a.publish(events(4, 4))  # 4 and 5 again (a retry), then 6 and 7
        assert wait_for(a, "published")["last_seq"] == 7
        received = []
        while len(received) < 7:
            batch = wait_for(b, "received")
            received += batch
            b.settle([token for token, _, _ in batch], [])
        assert [e["body"]["n"] for _, _, e in received] == [1, 2, 3, 4, 5, 6, 7]
        assert [seq for _, seq, _ in received] == list(range(1, 8))
    finally:
        a.stop()
        b.stop()


def test_unacked_messages_are_redelivered_after_a_restart(servers):
    a_server, b_server = servers
    a, _ = bridge("a", a_server)
    try:
        wait_for(a, "local_ready")
        a.publish(events(1, 3))
        wait_for(a, "published")
    finally:
        a.stop()
    b, _ = bridge("b", b_server, a_server, "a")
    batch = wait_for(b, "received")
    b.settle([batch[0][0]], [])  # only the first applied; then the applier dies
    time.sleep(0.5)
    b.stop()
    b2, _ = bridge("b", b_server, a_server, "a")
    try:
        seen = set()
        while not {2, 3} <= seen:  # at once: the stopped bridge nak'ed them
            batch = wait_for(b2, "received", timeout=30)
            seen |= {e["body"]["n"] for _, _, e in batch}
            b2.settle([token for token, _, _ in batch], [])
        assert 1 not in seen  # acknowledged, so never again
    finally:
        b2.stop()


async def _try_as(url, user, password, node_for_inbox):
    """What a client logged in as `user` (None: no user) can do on a's server: publish into
    a's stream, read it through a consumer of its own naming, delete it. A list of what
    worked."""
    errors = []

    async def error_cb(exc):
        errors.append(exc)
    login = {} if user is None else {"user": user, "password": password}
    try:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, error_cb=error_cb,
                                inbox_prefix=f"_INBOX_{node_for_inbox}", **login)
    except Exception:  # noqa: BLE001 - refused at connect: nothing worked
        return ["connect refused"], []
    worked = []
    js = nc.jetstream(timeout=2)
    attempts = {
        "publish": lambda: js.publish(subject("a"), msgpack.packb({"forged": True}), timeout=2),
        "read": lambda: js.pull_subscribe(subject("a"), durable="apply-mallory", stream=stream_name("a")),
        "read-as-b": lambda: js.stream_info(stream_name("a")),
        "delete": lambda: js.delete_stream(stream_name("a")),
    }
    for name, attempt in attempts.items():
        try:
            await asyncio.wait_for(attempt(), 3)
            worked.append(name)
        except Exception:  # noqa: BLE001 - refused: what the test wants
            pass
    await nc.close()
    return worked, errors


def test_only_the_owner_publishes_and_only_the_peer_reads_through_its_consumer(servers, users):
    a_server, _ = servers
    a, _ = bridge("a", a_server)
    try:
        wait_for(a, "local_ready")
        a.publish(events(1, 2))
        assert wait_for(a, "published")["last_seq"] == 2
    finally:
        a.stop()
    # Without a user: refused at connect. With the peer's user (b): no publish into a's
    # stream, no consumer but apply-b, no stream info, no delete. A wrong password: refused.
    nobody, _ = asyncio.run(_try_as(a_server.url, None, None, "x"))
    assert nobody == ["connect refused"]
    as_peer, errors = asyncio.run(_try_as(a_server.url, "b", users.password("b"), "b"))
    assert as_peer == [] and any("permissions violation" in str(e).lower() for e in errors), errors
    guessed, _ = asyncio.run(_try_as(a_server.url, "a", "not-the-password", "a"))
    assert guessed == ["connect refused"]
    # The stream still holds the owner's two events only, and b still reads them as b.
    b_server = servers[1]
    b, _ = bridge("b", b_server, a_server, "a")
    try:
        batch = wait_for(b, "received")
        assert [e["event_id"] for _, _, e in batch] == ["a:1", "a:2"]
    finally:
        b.stop()
