"""Replication benchmark, two signers and two nats-servers on loopback, in one run:
  - replication lag p50/p99 for N certificates issued over A's pty (default 10,000): from
    the moment an event is committed in A's repository to the moment it is in B's, both
    seen by pollers of the two SQLite files (EventWatcher, every --poll-ms, default 2 ms);
  - its reference, measured right after in the same run: the same number of events at the
    same rate through the bare parts (a SQLite commit, a JetStream publish awaited, a pull
    fetch from the other server, a SQLite commit), no signer, the same watchers;
  - with --stages, where the lag goes: each signer's actors and NATS bridge note when each
    event passed each stage (bench/sync_trace/sitecustomize.py, loaded only into the
    signers this bench starts), printed as p50/p99 per stage;
  - catch-up rate: A issues M real certificates over its pty (default 10,000) while B is
    down (B verifies every peer event: made-up DER would be quarantined), then B starts
    empty: events/s until B holds them all.

    .venv/bin/python bench/bench_sync.py [--certs 10000] [--backlog 10000] [--stages]
        [--poll-ms 2] [--no-reference]

Measurement error: each watcher notes an event at the start of the first poll whose read
snapshot holds it, so it notes it between 0 and one poll interval (plus the query) after
its commit, on each side; the lag (B's note - A's note) is therefore off by less than one
interval either way, with no bias. Each lag line also prints the bound that cannot
flatter: B's note minus A's previous poll (an interval before A's note, so at or before
A's commit), which is never below the true lag.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402
import nats  # noqa: E402
from nats.js import api  # noqa: E402

from bench.bench_load import signer_pids  # noqa: E402
from bench.profile_x509 import cpu_seconds  # noqa: E402
from core.repository.store import Repository  # noqa: E402
from tests.support.helpers import NatsServer, NatsUsers, dev_init  # noqa: E402
from tests.e2e.test_sync import Node, authenticated_nats, node_id  # noqa: E402

TRACE_DIR = Path(__file__).resolve().parent / "sync_trace"


class EventWatcher(threading.Thread):
    """Notes when each event id first appears in a SQLite file with an `events` table
    (seq, event_id): `seen[id]` = the start of the first poll that found it, `bound[id]` =
    the start of the poll before (at or before its commit)."""

    def __init__(self, path: Path, poll_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.path, self.poll_s = path, poll_s
        self.seen: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        last, db, previous = 0, None, time.monotonic()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if db is None:
                    db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                rows = db.execute("SELECT seq, event_id FROM events WHERE seq > ?", (last,)).fetchall()
            except sqlite3.Error:
                rows = []
                if db is not None:
                    db.close()
                    db = None
            for seq, event_id in rows:
                if event_id not in self.seen:
                    self.seen[event_id], self.bound[event_id] = started, previous
                last = max(last, seq)
            previous = started
            time.sleep(max(0.0, self.poll_s - (time.monotonic() - started)))
        if db is not None:
            db.close()


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def lags(source: EventWatcher, target: EventWatcher) -> tuple[list[float], list[float]]:
    """(lag per event, its upper bound) for every event of `source` that reached `target`."""
    found = [e for e in source.seen if e in target.seen]
    return ([target.seen[e] - source.seen[e] for e in found],
            [target.seen[e] - source.bound[e] for e in found])


def lag_run(data: Path, root: Path, count: int, csr: bytes, poll_s: float, stages: bool
            ) -> tuple[list[float], list[float], float, dict[str, dict[str, float]] | None, dict[str, str]]:
    users = NatsUsers(root / "nats-users")
    nodes = {n: Node(n, data, root, authenticated_nats(root, n, users)) for n in "ab"}
    nodes["a"].configure_sync(nodes["b"])
    nodes["b"].configure_sync(nodes["a"])
    trace = root / "trace"
    saved = os.environ.get("PYTHONPATH")
    if stages:
        trace.mkdir()
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRACE_DIR), saved]))
        os.environ["SYNC_TRACE_DIR"] = str(trace)
    try:
        for node in nodes.values():
            node.start()
    finally:
        if stages:
            os.environ.pop("SYNC_TRACE_DIR")
            if saved is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = saved
    watcher, source = EventWatcher(nodes["b"].repo_path, poll_s), EventWatcher(nodes["a"].repo_path, poll_s)
    watcher.start()
    source.start()
    try:
        pids = {}
        if stages:
            for n, node in nodes.items():
                pids |= {f"{n}.{name}": pid for name, pid in signer_pids(node.signer).items()}
                pids[f"{n}.nats-server"] = node.nats.process.pid
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        issue_over_pty(nodes["a"], count, csr)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not set(source.seen) <= set(watcher.seen):
            time.sleep(0.1)
        lag, bound = lags(source, watcher)
        if stages:
            used = {name: (cpu_seconds(pid) - cpu_before[name]) * 1000 / max(1, len(lag))
                    for name, pid in pids.items()}
            print("CPU ms per event (issued on A and replicated to B), by process: " + ", ".join(
                f"{name} {ms:.2f}" for name, ms in sorted(used.items(), key=lambda item: -item[1]) if ms >= 0.05)
                + f"; all {sum(used.values()):.1f}", flush=True)
        watched = {"seen_a": source.seen, "seen_b": watcher.seen}
        return lag, bound, len(source.seen) / elapsed, watched if stages else None, \
            {n: node_id(n) for n in nodes}
    finally:
        watcher.stop.set()
        source.stop.set()
        for node in nodes.values():
            node.signer.stop()
            node.nats.stop()


# -- the reference: the bare parts, no signer --------------------------------------------------
def durable_db(path: Path) -> sqlite3.Connection:
    """As the repository writes: WAL, synchronous=FULL, one transaction per commit."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, event_id TEXT UNIQUE, body BLOB)")
    return db


def reference_run(root: Path, count: int, rate: float, body_size: int, poll_s: float
                  ) -> tuple[list[float], list[float]]:
    """`count` events of `body_size` bytes at `rate`/s: each committed to a.sqlite, then
    published to server A's stream (awaited); a second thread pulls them from server A (a
    lingering fetch of one, then what else is there, as core/sync/bridge.py does), commits
    each batch to b.sqlite in one transaction and acks. Watched like the signer run."""
    servers = [NatsServer(root / f"ref-nats-{n}") for n in "ab"]
    a_db, b_db = durable_db(root / "a.sqlite"), durable_db(root / "b.sqlite")
    source, target = EventWatcher(root / "a.sqlite", poll_s), EventWatcher(root / "b.sqlite", poll_s)
    source.start()
    target.start()
    done = threading.Event()

    async def produce() -> None:
        nc = await nats.connect(servers[0].url)
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name="REF", subjects=["ref"], storage=api.StorageType.FILE,
                                             duplicate_window=3600.0))
        ready.set()
        start = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            event_id = os.urandom(16).hex()
            body = os.urandom(body_size)
            a_db.execute("BEGIN IMMEDIATE")
            a_db.execute("INSERT INTO events (event_id, body) VALUES (?, ?)", (event_id, body))
            a_db.execute("COMMIT")
            await js.publish("ref", msgpack.packb({"event_id": event_id, "body": body}), timeout=5,
                             headers={"Nats-Msg-Id": event_id})
        await nc.close()

    async def consume() -> None:
        nc = await nats.connect(servers[0].url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("ref", durable="ref-reader", stream="REF",
                                      config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT,
                                                                max_ack_pending=200))
        received = 0
        while received < count:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            try:
                msgs += await sub.fetch(199, timeout=0.005)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                pass
            b_db.execute("BEGIN IMMEDIATE")
            for msg in msgs:
                event = msgpack.unpackb(msg.data)
                b_db.execute("INSERT OR IGNORE INTO events (event_id, body) VALUES (?, ?)",
                             (event["event_id"], event["body"]))
            b_db.execute("COMMIT")
            for msg in msgs:
                await msg.ack()
            received += len(msgs)
        await nc.close()
        done.set()

    ready = threading.Event()
    producer = threading.Thread(target=asyncio.run, args=(produce(),), daemon=True)
    producer.start()
    ready.wait(30)
    consumer = threading.Thread(target=asyncio.run, args=(consume(),), daemon=True)
    consumer.start()
    try:
        done.wait(count / rate + 120)
        time.sleep(0.05)
        return lags(source, target)
    finally:
        source.stop.set()
        target.stop.set()
        for server in servers:
            server.stop()


# -- stages ------------------------------------------------------------------------------------
# (stage, side): a: the issuing signer, b: the applying one; as bench/sync_trace notes them.
STAGES = [("commit", "a", "A's repository committed the operation (or the Batch holding it)"),
          ("told", "a", "A's repository sent EventsCommitted (end of its batch)"),
          ("sync_got", "a", "A's Sync received EventsCommitted"),
          ("handoff", "a", "A's Sync handed the event to its bridge"),
          ("js_send", "a", "A's bridge sent the JetStream publish"),
          ("js_acked", "a", "JetStream acked the publish"),
          ("fetched", "b", "B's bridge fetched it from A's server"),
          ("peer_batch", "b", "B's Sync got the batch from its bridge"),
          ("apply_start", "b", "B's repository started ApplyEvents"),
          ("apply_end", "b", "B's repository applied the batch"),
          ("commit", "b", "B's repository committed it"),
          ("seen_b", "b", "B's watcher saw it")]


def read_trace(folder: Path, node_ids: dict[str, str]) -> dict[tuple[str, str], dict[str, float]]:
    """{(stage, side): {event_id: first time}}; a process's unnamed lines ("fetched") take
    the node of its other lines."""
    sides = {nid: side for side, nid in node_ids.items()}
    times: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for path in folder.glob("*.trace"):
        lines = [line.split() for line in path.read_text().splitlines() if line.count(" ") == 3]
        named = collections.Counter(node for _, node, _, _ in lines if node != "-")
        own = named.most_common(1)[0][0] if named else "-"
        for stage, node, event_id, at in lines:
            side = sides.get(own if node == "-" else node)
            if side is not None:
                times[(stage, side)].setdefault(event_id, float(at))
    return times


def print_stages(times: dict[tuple[str, str], dict[str, float]], watched: dict[str, dict[str, float]]) -> None:
    times[("seen_b", "b")] = watched["seen_b"]
    commits = times[("commit", "a")]
    events = [e for e in commits if all(e in times[(s, side)] for s, side, _ in STAGES)]
    if not events:
        print(f"stages: no event passed every stage ({len(commits)} committed on A)")
        return
    print(f"stages of {len(events)} events (of {len(commits)} committed on A), ms: step p50/p99,"
          " then from A's commit p50/p99", flush=True)
    previous = None
    for stage, side, what in STAGES:
        at = times[(stage, side)]
        total = [(at[e] - commits[e]) * 1000 for e in events]
        if previous is None:
            step_text = "-"
        else:
            step = [(at[e] - previous[e]) * 1000 for e in events]
            step_text = f"{percentile(step, 50):7.1f} {percentile(step, 99):7.1f}"
        print(f"  {stage:<11} {step_text:>15}   {percentile(total, 50):7.1f} {percentile(total, 99):7.1f}"
              f"   {what}")
        previous = at
    seen_a = watched["seen_a"]
    watch_delay = [(seen_a[e] - commits[e]) * 1000 for e in events if e in seen_a]
    print(f"  (A's watcher saw an event {percentile(watch_delay, 50):.1f} / {percentile(watch_delay, 99):.1f} ms"
          " p50/p99 after A's repository noted its commit)")


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
        watcher = EventWatcher(nodes["b"].repo_path, 0.05)
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


def event_body_size(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT AVG(LENGTH(body)) FROM events").fetchone()
    return int(row[0] or 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", type=int, default=10_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--poll-ms", type=float, default=2.0, help="the watchers' poll interval")
    parser.add_argument("--stages", action="store_true", help="trace each event through each stage")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--keep", type=Path, help="copy the lag run's folder (repositories, traces) here")
    args = parser.parse_args()
    poll_s = args.poll_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = dev_init(root / "data")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", f"{tmp}/k", "-out", f"{tmp}/r.csr", "-outform", "DER", "-subj", "/CN=x"],
                       check=True, capture_output=True)
        csr = Path(f"{tmp}/r.csr").read_bytes()
        (root / "lag").mkdir()
        load = os.getloadavg()[0]
        lag, bound, rate, watched, node_ids = lag_run(data, root / "lag", args.certs, csr, poll_s, args.stages)
        print_lag(f"replication lag A -> B over {len(lag)} events ({args.certs} certificates issued over"
                  f" A's pty, {rate:.0f} events/s)", lag, bound)
        if watched is not None:
            print_stages(read_trace(root / "lag" / "trace", node_ids), watched)
        if args.keep:
            shutil.copytree(root / "lag", args.keep, ignore=shutil.ignore_patterns("*.sock", "client-tty*"))
            shutil.copytree(data, args.keep / "data")  # the CA the configurations name (in `data`)
            print(f"kept in {args.keep} (the configurations name {data})")
        if not args.no_reference:
            (root / "ref").mkdir()
            size = event_body_size(root / "lag" / "a" / "repository.sqlite")
            ref, ref_bound = reference_run(root / "ref", len(lag), rate, size, poll_s)
            print_lag(f"reference, the bare parts at the same rate ({len(ref)} events of {size} bytes:"
                      " SQLite commit, JetStream publish, pull fetch, SQLite commit)", ref, ref_bound)
        print(f"load average (1 min) before / after the runs: {load:.2f} / {os.getloadavg()[0]:.2f};"
              f" watchers poll every {args.poll_ms:g} ms", flush=True)
        if args.backlog:
            (root / "catch").mkdir()
            elapsed, applied = catch_up_run(data, root / "catch", args.backlog, csr)
            print(f"catch-up after a {args.backlog}-certificate backlog issued on A while B was down: {applied}"
                  f" events in {elapsed:.1f} s = {applied / elapsed:.0f} events/s (includes B's start-up)")


def print_lag(title: str, lag: list[float], bound: list[float]) -> None:
    if not lag:
        print(f"{title}: no event arrived", flush=True)
        return
    print(f"{title}: p50 {statistics.median(lag) * 1000:.0f} ms, p99 {percentile(lag, 99) * 1000:.0f} ms,"
          f" max {max(lag) * 1000:.0f} ms (upper bound p50 {statistics.median(bound) * 1000:.0f},"
          f" p99 {percentile(bound, 99) * 1000:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
