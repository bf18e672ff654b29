"""Two signers, two nats-servers, all real processes on loopback ports chosen here:
replication through outages, kill -9 of the sync actor, conflicting revocations, a new
signer bootstrapped from a peer, and CRL numbers across signers."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from core.repository import Repository
from tests.helpers import NatsServer, SignerProcess, signer_config
from tools.client import SignerClient

pytestmark = pytest.mark.e2e


class Node:
    def __init__(self, name: str, dev_data: Path, root: Path, nats: NatsServer) -> None:
        self.name, self.dir, self.nats = name, root / name, nats
        self.dir.mkdir()
        self.config = signer_config(dev_data, self.dir)
        self.signer: SignerProcess | None = None

    def configure_sync(self, peer: "Node | None") -> None:
        config = yaml.safe_load(self.config.read_text())
        config["node_id"] = f"signer-{self.name}"
        config["sync"] = {"local_url": self.nats.url, "publish_interval_s": 0.2}
        if peer is not None:
            config["sync"].update(peer_url=peer.nats.url, peer_node_id=f"signer-{peer.name}")
        self.config.write_text(yaml.safe_dump(config))

    def start(self) -> "Node":
        self.signer = SignerProcess(self.config, log_dir=self.dir)
        return self

    def client(self) -> SignerClient:
        return SignerClient(self.signer.client_path, timeout=60)

    @property
    def repo_path(self) -> Path:
        return self.dir / "repository.sqlite"

    def digest(self) -> str:
        repo = Repository(str(self.repo_path), "reader")
        try:
            return repo.content_digest()
        finally:
            repo.close()

    def event_ids(self) -> list[str]:
        with sqlite3.connect(self.repo_path) as db:
            return [row[0] for row in db.execute("SELECT event_id FROM events")]

    def sync_status(self) -> dict:
        return next(r for r in self.signer.status() if r["name"] == "sync")


@pytest.fixture
def pair(dev_data, tmp_path):
    nodes = {n: Node(n, dev_data, tmp_path, NatsServer(tmp_path / f"nats-{n}")) for n in "ab"}
    nodes["a"].configure_sync(nodes["b"])
    nodes["b"].configure_sync(nodes["a"])
    for node in nodes.values():
        node.start()
    yield nodes
    for node in nodes.values():
        if node.signer:
            node.signer.stop()
        node.nats.stop()


def converge(*nodes: Node, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        digests = {node.digest() for node in nodes}
        if len(digests) == 1:
            ids = [sorted(node.event_ids()) for node in nodes]
            if all(i == ids[0] for i in ids):
                return digests.pop()
        time.sleep(0.3)
    raise AssertionError(f"no convergence within {timeout} s: {[n.digest()[:12] for n in nodes]}")


@pytest.fixture(scope="module")
def csr(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(folder / "k"), "-out", str(folder / "r.csr"), "-outform", "DER",
                    "-subj", "/CN=x"], check=True, capture_output=True)
    return (folder / "r.csr").read_bytes()


def issue(client: SignerClient, csr: bytes, request_id: str | None = None) -> str:
    response = client.call("sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                         "subject": [["CN", "www.example.org"]],
                                         "sans": [["dns", "www.example.org"]]}, request_id=request_id)
    assert response.ok, response.error
    return response.body["serial"]


def wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def crl_serials(node: Node) -> tuple[int, set[int]]:
    with node.client() as client:
        body = client.call("fetch_crl", {"issuer": "root"}).body
    crl = x509.load_der_x509_crl(body["crl"])
    return body["number"], {entry.serial_number for entry in crl}


def test_issue_on_a_revoke_on_b_both_converge_and_both_crls_list_it(pair, csr):
    a, b = pair["a"], pair["b"]
    with a.client() as client:
        serial = issue(client, csr, "sync-1")
    wait_until(lambda: Repository(str(b.repo_path), "r").get_certificate("root", serial) is not None)
    with b.client() as client:
        replay = client.call("sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                           "subject": [["CN", "www.example.org"]],
                                           "sans": [["dns", "www.example.org"]]}, request_id="sync-1")
        assert replay.ok, replay.error
        assert replay.body["serial"] == serial and replay.body["replayed"]  # never issued twice
        assert client.call("revoke_x509", {"issuer": "root", "serial": serial, "reason": "keyCompromise"}).ok
    converge(a, b)
    number_a, on_a = crl_serials(a)
    number_b, on_b = crl_serials(b)
    assert int(serial, 16) in on_a and int(serial, 16) in on_b
    assert number_b > number_a  # B saw A's crl_issued event: its numbers go on from there
    with b.client() as client:
        health = client.call("health").body
    assert health["sync"]["local_connected"] and health["sync"]["peer_connected"]
    status = b.sync_status()
    assert status["alive"] and status["peer_events_applied"] >= 1 and status["unpublished_events"] == 0


def test_outage_conflicts_and_kill_9_still_converge(pair, csr):
    a, b = pair["a"], pair["b"]
    with a.client() as client:
        shared = issue(client, csr)
    converge(a, b)
    b.nats.stop()  # B's server is away: B keeps signing; A cannot read B's stream
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    with a.client() as ca, b.client() as cb:
        serials_a = [issue(ca, csr) for _ in range(5)]
        serials_b = [issue(cb, csr) for _ in range(5)]
        assert ca.call("revoke_x509", {"issuer": "root", "serial": serials_a[0]}).ok
        assert cb.call("revoke_x509", {"issuer": "root", "serial": serials_b[0], "reason": 4}).ok
        # The same serial revoked on both, differently: the earliest revocation must win.
        assert ca.call("revoke_x509", {"issuer": "root", "serial": shared, "reason": "keyCompromise"}).ok
        assert cb.call("revoke_x509", {"issuer": "root", "serial": shared, "reason": "superseded",
                                       "time": t0.isoformat()}).ok
    assert b.sync_status()["unpublished_events"] > 0
    wait_until(lambda: a.sync_status()["peer_connected"] is False, timeout=20)  # A sees B's server away
    time.sleep(20)  # long enough for many failed reconnects on both sides
    b.nats.start()
    converge(a, b, timeout=90)
    for node in (a, b):
        row = Repository(str(node.repo_path), "r").get_certificate("root", shared)
        assert row["revocation_reason"] == 4 and row["revoked_at"] == t0
        ids = node.event_ids()
        assert len(ids) == len(set(ids))  # nothing applied twice

    # kill -9 the sync actor of A while it publishes a burst and B's while it applies it.
    with a.client() as ca:
        ids = [ca.send("sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                     "subject": [["CN", "www.example.org"]], "sans": [["dns", "www.example.org"]]})
               for _ in range(40)]
        time.sleep(0.3)
        os.kill(a.sync_status()["pid"], signal.SIGKILL)
        time.sleep(0.5)
        os.kill(b.sync_status()["pid"], signal.SIGKILL)
        for request_id in ids:
            assert ca.wait_for(request_id, timeout=120).ok
    converge(a, b, timeout=90)
    assert a.sync_status()["restarts"] >= 1 and b.sync_status()["restarts"] >= 1


def test_a_new_signer_bootstraps_from_its_peer(pair, csr, dev_data, tmp_path):
    a, b = pair["a"], pair["b"]
    with a.client() as ca, b.client() as cb:
        for _ in range(3):
            issue(ca, csr)
            serial = issue(cb, csr)
        assert cb.call("revoke_x509", {"issuer": "root", "serial": serial}).ok
    digest = converge(a, b)
    c = Node("c", dev_data, tmp_path, NatsServer(tmp_path / "nats-c"))
    try:
        c.configure_sync(a)
        c.start()
        wait_until(lambda: c.digest() == digest, timeout=90)
        assert c.sync_status()["peer_events_applied"] >= len(a.event_ids())
    finally:
        if c.signer:
            c.signer.stop()
        c.nats.stop()
