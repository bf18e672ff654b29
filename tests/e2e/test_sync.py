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

from core.sync.event_signing import load_or_create_signing_key, public_key_text
from core.repository.store import Repository
from tests.support.helpers import NatsServer, NatsUsers, SignerProcess, signer_config
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e


NODES = "abc"  # every node's server lets every other node read (c is bootstrapped from a)


def node_id(name: str) -> str:
    return f"signer-{name}"


def event_key_file(root: Path, name: str) -> Path:
    return root / "event-keys" / f"{node_id(name)}.key"


def authenticated_nats(root: Path, name: str, users: NatsUsers) -> NatsServer:
    return NatsServer(root / f"nats-{name}", owner=node_id(name), users=users,
                      readers=tuple(node_id(n) for n in NODES if n != name))


class Node:
    def __init__(self, name: str, dev_data: Path, root: Path, nats: NatsServer) -> None:
        self.name, self.dir, self.nats, self.root = name, root / name, nats, root
        self.dir.mkdir()
        self.config = signer_config(dev_data, self.dir)
        self.signer: SignerProcess | None = None

    def configure_sync(self, peer: "Node | None") -> None:
        """As the project ships it: NATS user and password file, own event key, the event
        keys of every other node (a log relays the events it applied from others)."""
        config = yaml.safe_load(self.config.read_text())
        config["node_id"] = node_id(self.name)
        keys_dir = self.root / "event-keys"
        keys_dir.mkdir(mode=0o700, exist_ok=True)
        config["sync"] = {
            "local_url": self.nats.url, "publish_interval_s": 0.2,
            "credentials_file": str(self.nats.users.credentials(node_id(self.name))),
            "event_signing_key": str(event_key_file(self.root, self.name)),
            "peer_event_keys": [
                {"node_id": node_id(n),
                 "key": public_key_text(load_or_create_signing_key(event_key_file(self.root, n)))}
                for n in NODES if n != self.name]}
        if peer is not None:
            config["sync"].update(peer_url=peer.nats.url, peer_node_id=node_id(peer.name))
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
    users = NatsUsers(tmp_path / "nats-users")
    nodes = {n: Node(n, dev_data, tmp_path, authenticated_nats(tmp_path, n, users)) for n in "ab"}
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
    # Both servers away (the cable's far ends): each keeps signing and neither can read the
    # other's stream, so the revocations below really conflict. (With only B's server away,
    # B would read A's revocation, pushed at commit, before its own and answer it.)
    a.nats.stop()
    b.nats.stop()
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
    a.nats.start()
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
    c = Node("c", dev_data, tmp_path, authenticated_nats(tmp_path, "c", a.nats.users))
    try:
        c.configure_sync(a)
        c.start()
        wait_until(lambda: c.digest() == digest, timeout=90)
        assert c.sync_status()["peer_events_applied"] >= len(a.event_ids())
    finally:
        if c.signer:
            c.signer.stop()
        c.nats.stop()


def test_forged_events_in_the_peers_stream_are_quarantined_and_the_rest_applies(pair, csr):
    """Someone holding A's NATS password (a compromised nats user on A's box) publishes
    into A's stream: an unsigned revocation, a signed-looking one dated 1900 by a key
    nobody configured, and a CRL floor of 2^63-1. B parks all three, shows it in health
    and `signer-admin quarantine`, still answers fetch_crl, and applies A's next event."""
    import asyncio

    import msgpack
    import nats
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.sync.event_signing import sign_event
    from core.sync.nats_auth import inbox_prefix, subject
    from tests.support.helpers import run_tool

    a, b = pair["a"], pair["b"]
    with a.client() as client:
        serial = issue(client, csr)
    converge(a, b)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    forged = [
        {"event_id": "forged-1", "origin_node": "signer-a", "type": "x509_revoked", "created_at": now.isoformat(),
         "body": {"issuer": "root", "serial": serial, "reason": 1, "revoked_at": "2001-01-01T00:00:00Z"}},
        {"event_id": "forged-2", "origin_node": "signer-a", "type": "x509_revoked", "created_at": now.isoformat(),
         "body": {"issuer": "root", "serial": serial, "reason": 1, "revoked_at": "1900-01-01T00:00:00Z"}},
        {"event_id": "forged-3", "origin_node": "signer-a", "type": "crl_issued", "created_at": now.isoformat(),
         "body": {"issuer": "root", "number": 2**63 - 1, "this_update": now.isoformat(),
                  "next_update": now.isoformat(), "revocation_digest": "x"}},
    ]
    rogue = Ed25519PrivateKey.generate()
    forged[1]["signature"] = sign_event(rogue, forged[1])
    forged[2]["signature"] = sign_event(rogue, forged[2])

    async def publish() -> None:
        nc = await nats.connect(a.nats.url, user="signer-a", password=a.nats.users.password("signer-a"),
                                inbox_prefix=inbox_prefix("signer-a"))
        js = nc.jetstream()
        for event in forged:
            await js.publish(subject("signer-a"), msgpack.packb(event), timeout=5)
        await nc.close()
    asyncio.run(publish())
    wait_until(lambda: b.sync_status().get("quarantined") == 3)
    with a.client() as client:
        later = issue(client, csr)  # behind the forgeries in A's stream
    wait_until(lambda: Repository(str(b.repo_path), "r").get_certificate("root", later) is not None)
    assert Repository(str(b.repo_path), "r").get_certificate("root", serial)["revoked_at"] is None
    with b.client() as client:
        health = client.call("health").body
        assert client.call("fetch_crl", {"issuer": "root"}).ok
    assert not health["healthy"] and health["sync"]["quarantined"] == 3
    assert any("quarantined" in problem for problem in health["problems"])
    listing = run_tool("signer-admin", "--config", str(b.config), "quarantine", "--json")
    assert listing.returncode == 1
    reasons = {row["event_id"]: row["reason"] for row in __import__("json").loads(listing.stdout)}
    assert set(reasons) == {"forged-1", "forged-2", "forged-3"}
    assert "no signature" in reasons["forged-1"] and "does not verify" in reasons["forged-2"]


def key_with_a_photo(folder: Path, photo_bytes: int) -> str:
    """An armoured key made by gpg: Ed25519, one uid and a photo id (a user attribute
    packet) of about `photo_bytes`, as a member's key with a large photo is."""
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    gpg = ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "Big Photo <big@example.org>", "ed25519", "default", "1y"],
                   env=env, check=True, capture_output=True)
    photo = folder / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
                      + os.urandom(photo_bytes) + b"\xff\xd9")
    subprocess.run([*gpg, "--command-fd", "0", "--edit-key", "big@example.org"], env=env, check=True,
                   capture_output=True, input=f"addphoto\n{photo}\ny\nsave\n".encode())
    exported = subprocess.run(["gpg", "--armor", "--export", "big@example.org"], env=env, check=True,
                              capture_output=True, text=True).stdout
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
    assert len(exported) > 4 * photo_bytes // 3
    return exported


def test_an_event_larger_than_a_nats_message_limit_replicates(pair, csr, tmp_path):
    """A certification of a key with a 600 KB photo id is an event of about 1.5 MB (the
    signed key, and the answer with it armoured), above nats-server's default message
    limit (1 MB): it must reach the peer, and so must what comes after it."""
    key = key_with_a_photo(tmp_path, 600_000)
    with pair["a"].client() as client:
        certified = client.call("sign_openpgp", {"key": key, "uids": ["Big Photo <big@example.org>"]})
        assert certified.ok, certified.error
        issue(client, csr)
    converge(pair["a"], pair["b"])
    with sqlite3.connect(pair["b"].repo_path) as db:
        (stored,), = db.execute("SELECT length(signed_key) FROM openpgp_signatures").fetchall()
    assert stored > 600_000
