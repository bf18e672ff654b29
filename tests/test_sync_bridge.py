"""core.sync_bridge against real nats-servers: publishing with de-duplication, a durable
consumer that resumes after acks, and an outage of the peer's server."""
import socket
import time

import pytest

from core.sync_bridge import NatsBridge
from tests.helpers import NatsServer


@pytest.fixture
def servers(tmp_path):
    a, b = NatsServer(tmp_path / "a"), NatsServer(tmp_path / "b")
    yield a, b
    a.stop()
    b.stop()


def bridge(node, local, peer=None, peer_node=None):
    reader, writer = socket.socketpair()
    return NatsBridge(node, local.url, peer.url if peer else None, peer_node, writer).start(), reader


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
