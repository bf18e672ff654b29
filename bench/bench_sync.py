"""Replication benchmark, two signers and two nats-servers on loopback, in one run:
  - replication lag p50/p99 for N certificates issued over A's pty (default 10,000): from
    the moment an event is committed in A's repository to the moment it is in B's (both
    seen by the same 10 ms poller);
  - catch-up rate: A issues M real certificates over its pty (default 10,000) while B is
    down (B verifies every peer event: made-up DER would be quarantined), then B starts
    empty: events/s until B holds them all.

    .venv/bin/python bench/bench_sync.py [--certs 10000] [--backlog 10000]
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.repository.store import Repository  # noqa: E402
from tests.support.helpers import NatsUsers, dev_init  # noqa: E402
from tests.e2e.test_sync import Node, authenticated_nats  # noqa: E402


class EventWatcher(threading.Thread):
    """Notes when each event id first appears in a repository file."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.stop = path, {}, threading.Event()

    def run(self) -> None:
        last = 0
        while not self.stop.is_set():
            try:
                with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
                    rows = db.execute("SELECT seq, event_id FROM events WHERE seq > ?", (last,)).fetchall()
            except sqlite3.Error:
                rows = []
            now = time.monotonic()
            for seq, event_id in rows:
                self.seen.setdefault(event_id, now)
                last = max(last, seq)
            time.sleep(0.01)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def lag_run(data: Path, root: Path, count: int, csr: bytes) -> list[float]:
    users = NatsUsers(root / "nats-users")
    nodes = {n: Node(n, data, root, authenticated_nats(root, n, users)) for n in "ab"}
    nodes["a"].configure_sync(nodes["b"])
    nodes["b"].configure_sync(nodes["a"])
    for node in nodes.values():
        node.start()
    watcher, source = EventWatcher(nodes["b"].repo_path), EventWatcher(nodes["a"].repo_path)
    watcher.start()
    source.start()
    try:
        issue_over_pty(nodes["a"], count, csr)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not set(source.seen) <= set(watcher.seen):
            time.sleep(0.1)
        return [watcher.seen[e] - t for e, t in source.seen.items() if e in watcher.seen]
    finally:
        watcher.stop.set()
        source.stop.set()
        for node in nodes.values():
            node.signer.stop()
            node.nats.stop()


def catch_up_run(data: Path, root: Path, backlog: int, csr: bytes) -> tuple[float, int]:
    """A issues `backlog` real certificates over its pty while B is not running (B would
    quarantine anything that is not a certificate of the configured issuer), then B starts
    and we time how long until B's repository holds every event."""
    users = NatsUsers(root / "nats-users")
    nodes = {n: Node(n, data, root, authenticated_nats(root, n, users)) for n in "ab"}
    nodes["a"].configure_sync(nodes["b"])
    nodes["b"].configure_sync(nodes["a"])
    try:
        nodes["a"].start()
        issue_over_pty(nodes["a"], backlog, csr)
        target = Repository(str(nodes["a"].repo_path), "r").last_event_seq()
        watcher = EventWatcher(nodes["b"].repo_path)
        watcher.start()
        started = time.monotonic()
        nodes["b"].start()
        deadline = time.monotonic() + 900
        while len(watcher.seen) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        watcher.stop.set()
        return elapsed, len(watcher.seen)
    finally:
        for node in nodes.values():
            if node.signer:
                node.signer.stop()
            node.nats.stop()


def issue_over_pty(node: Node, count: int, csr: bytes) -> None:
    """`count` certificates over the node's pty, 50 in flight, answers taken as they come."""
    with node.client() as client:
        body = {"issuer": "root", "profile": "server", "csr": csr, "subject": [["CN", "www.example.org"]],
                "sans": [["dns", "www.example.org"]]}
        window, in_flight, sent = 50, [], 0
        while sent < count or in_flight:
            while sent < count and len(in_flight) < window:
                in_flight.append(client.send("sign_x509", body))
                sent += 1
            response = client.receive(timeout=120)
            assert response.ok, response.error
            in_flight.remove(response.request_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", type=int, default=10_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = dev_init(root / "data")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", f"{tmp}/k", "-out", f"{tmp}/r.csr", "-outform", "DER", "-subj", "/CN=x"],
                       check=True, capture_output=True)
        csr = Path(f"{tmp}/r.csr").read_bytes()
        (root / "lag").mkdir()
        lags = lag_run(data, root / "lag", args.certs, csr)
        print_lag(lags, args.certs)
        (root / "catch").mkdir()
        elapsed, applied = catch_up_run(data, root / "catch", args.backlog, csr)
    print(f"catch-up after a {args.backlog}-certificate backlog issued on A while B was down: {applied} events in "
          f"{elapsed:.1f} s = {applied / elapsed:.0f} events/s (includes B's start-up)")


def print_lag(lags: list[float], certs: int) -> None:
    print(f"replication lag A -> B over {len(lags)} events ({certs} certificates issued over A's pty): "
          f"p50 {statistics.median(lags) * 1000:.0f} ms, p99 {percentile(lags, 99) * 1000:.0f} ms, "
          f"max {max(lags) * 1000:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
