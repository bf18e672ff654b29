"""Growth benchmark (hardening item 7): does one issuance cost the same in a repository of
1,000, 100,000 and 1,000,000 certificates? One run fills one repository per size (bulk
insert: 128-bit random serials, ~1.2 KB random DER blobs, a few % revoked) and measures

  (a) in process, on core.repository.store.Repository: the repository work of one issuance
      (lookup_request + reserve_serial + complete_certificate), median of --issuances;
  (b) end to end: a signer started on each repository (SignerProcess), sign_x509 round
      trips over the pty, median of --round-trips after --warm-up;

Both are interleaved across the sizes (round robin), so a change of machine load hits
every size alike. Also measured: Repository.health with and without PRAGMA quick_check
(which reads every page; the Repository actor runs it on the first health and then every
300 s, blocked meanwhile), and each signer's start with its file evicted from the page
cache, as after a reboot: process start -> `client-pty:` line -> first health answer ->
first healthy answer, and a sign_x509 sent right behind that first health. The largest
size is restarted once more with a warm page cache.

    .venv/bin/python bench/bench_growth.py [--sizes 1000 100000 1000000] [--history full]

--history certificates (default) fills only certificates and revocations, as
bulk_insert_certificates does. --history full adds, per certificate, the `requests` row
and the `x509_issued` event a real issuance stores (both carry the DER again), so file
size and quick_check match a signer that issued them all (about 4x the disk).
The repository lives in a temporary folder (--dir) and is deleted at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.wire.protocol import pack  # noqa: E402
from core.repository.store import Repository  # noqa: E402
from core.repository.schema import to_db_time  # noqa: E402
from core.repository import schema  # noqa: E402
from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import SignerClient  # noqa: E402

ISSUER, PROFILE = "class3", "server-org"
BATCH = 50_000  # rows per fill transaction: keeps the WAL small
DER_BYTES = (1100, 1300)
# Disk per certificate, measured with this script's rows (indexes included), plus margin.
BYTES_PER_CERT = {"certificates": 2_400, "full": 9_000}
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def new_serial() -> str:
    return format(secrets.randbits(127) | 1 << 127, "x")


def sign_body(csr: bytes) -> dict:
    return {"issuer": ISSUER, "profile": PROFILE, "csr": csr,
            "subject": [["CN", "www.example.org"], ["O", "Example"]],
            "sans": [["dns", "www.example.org"]]}


# --- filling ------------------------------------------------------------------------------

class Filler:
    """Grows the repository in BATCH-row transactions, on a connection tuned for bulk work
    (big page cache, synchronous OFF); measurements reopen it with the signer's settings."""

    def __init__(self, path: Path, history: str, revoked_fraction: float) -> None:
        self.path, self.history, self.revoked_fraction = path, history, revoked_fraction
        self.rng = random.Random(20240501)
        self.client_prefix = ""

    def grow(self, count: int) -> None:
        repo = Repository(str(self.path), "bench-fill")
        # Bench only: the fill's own connection settings (the signer's are untouched).
        repo._db.execute("PRAGMA cache_size = -2000000")
        repo._db.execute("PRAGMA synchronous = OFF")
        try:
            done = 0
            while done < count:
                n = min(BATCH, count - done)
                certificates = [self.certificate_row(done + i) for i in range(n)]
                repo.bulk_insert_certificates(certificates)
                revoked = [row for row in certificates if self.rng.random() < self.revoked_fraction]
                repo.bulk_insert_revocations(
                    {"issuer": row["issuer"], "serial": row["serial"], "reason": self.rng.choice((None, 1, 4, 5)),
                     "revoked_at": row["not_before"] + timedelta(days=self.rng.randrange(1, 300))}
                    for row in revoked)
                if self.history == "full":
                    self.history_rows(repo._db, certificates, revoked)
                done += n
            # Flush what synchronous=OFF left in the page cache now, so the measurements
            # below do not pay for the fill's write-back in their first fsync.
            repo._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            repo.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def certificate_row(self, i: int) -> dict:
        if i % 1000 == 0:  # a client run: its ids share a random prefix, then count up
            self.client_prefix = f"c-{secrets.token_hex(8)}-"
        not_before = NOW - timedelta(days=self.rng.randrange(900), seconds=self.rng.randrange(86400))
        return {"issuer": ISSUER, "serial": new_serial(), "request_id": f"{self.client_prefix}{i}",
                "profile": PROFILE, "subject": f"CN=host{i}.example.org,O=Example",
                "not_before": not_before, "not_after": not_before + timedelta(days=730),
                "der": os.urandom(self.rng.randrange(*DER_BYTES))}

    @staticmethod
    def history_rows(db: sqlite3.Connection, certificates: list[dict], revoked: list[dict]) -> None:
        """The requests row and x509_issued event of each certificate (x509_revoked for the
        revoked ones), shaped and stored as complete_certificate / revoke store them."""
        created = to_db_time(NOW)
        requests, events = [], []
        for row in certificates:
            result = {"certificate": row["der"], "serial": row["serial"], "issuer": row["issuer"],
                      "profile": row["profile"], "not_before": row["not_before"].isoformat(),
                      "not_after": row["not_after"].isoformat()}
            digest = secrets.token_hex(32)
            stored_result, result_ref = schema.result_for_storage("sign_x509", result, row["der"])
            requests.append((row["request_id"], "sign_x509", digest, pack(stored_result), created, result_ref))
            body = {"issuer": row["issuer"], "serial": row["serial"], "der": row["der"],
                    "request_id": row["request_id"], "profile": row["profile"], "subject": row["subject"],
                    "not_before": to_db_time(row["not_before"]), "not_after": to_db_time(row["not_after"]),
                    "origin_node": "bench-fill",
                    "request": {"command": "sign_x509", "request_digest": digest, "result": result}}
            stored_body, body_ref = schema.body_for_storage("x509_issued", body, row["der"])
            events.append((uuid.uuid4().hex, "bench-fill", "x509_issued", pack(stored_body), created, body_ref))
        for row in revoked:
            events.append((uuid.uuid4().hex, "bench-fill", "x509_revoked",
                           pack({"issuer": row["issuer"], "serial": row["serial"], "reason": 1,
                                 "revoked_at": created, "request_id": None, "origin_node": "bench-fill"}),
                           created, 0))
        db.execute("BEGIN IMMEDIATE")
        # Stored as the repository stores them since migration 7: the DER only in certificates.
        db.executemany("INSERT INTO requests (request_id, command, request_digest, result, created_at,"
                       " certificate_ref) VALUES (?, ?, ?, ?, ?, ?)", requests)
        db.executemany("INSERT INTO events (event_id, origin_node, type, body, created_at, certificate_ref)"
                       " VALUES (?, ?, ?, ?, ?, ?)", events)
        db.execute("COMMIT")


# --- measurements -------------------------------------------------------------------------

class Issuances:
    """The repository's share of issuances, as X509Signer drives it, on a connection with
    the signer's own settings (synchronous FULL, WAL). Times per phase, in seconds."""

    def __init__(self, path: Path) -> None:
        self.repo = Repository(str(path), "bench-a")
        self.phases: dict[str, list[float]] = {"lookup": [], "reserve": [], "complete": [], "total": []}

    def run(self, count: int) -> None:
        repo = self.repo
        for i in range(count):
            request_id, serial = f"growth-{secrets.token_hex(6)}-{i}", new_serial()
            der = os.urandom(1200)
            not_after = NOW + timedelta(days=730)
            result = {"certificate": der, "serial": serial, "issuer": ISSUER, "profile": PROFILE,
                      "not_before": NOW.isoformat(), "not_after": not_after.isoformat()}
            digest = hashlib.sha256(request_id.encode()).hexdigest()
            t0 = time.perf_counter()
            assert repo.lookup_request(request_id) is None
            t1 = time.perf_counter()
            repo.reserve_serial(ISSUER, serial, request_id, PROFILE, "CN=www.example.org,O=Example", NOW, not_after)
            t2 = time.perf_counter()
            repo.complete_certificate(ISSUER, serial, der, request_id, "sign_x509", digest, result)
            t3 = time.perf_counter()
            for name, seconds in (("lookup", t1 - t0), ("reserve", t2 - t1), ("complete", t3 - t2),
                                  ("total", t3 - t0)):
                self.phases[name].append(seconds)

    def health_seconds(self, quick_check: bool) -> float:
        started = time.perf_counter()
        health = self.repo.health(run_quick_check=quick_check)
        assert health["quick_check"] in ("ok", "skipped"), health
        return time.perf_counter() - started

    def close(self) -> None:
        self.repo.close()


def evict_page_cache(path: Path) -> None:
    """Drop the repository's pages from the OS cache (clean pages only; no root needed)."""
    for name in (path, Path(f"{path}-wal")):
        if name.exists():
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class Signer:
    """A signer on one repository, its start timed; sign_x509 round trips on demand."""

    def __init__(self, config: Path, run_dir: Path, body: dict) -> None:
        self.config, self.run_dir, self.body = config, run_dir, body
        self.times: list[float] = []
        self.signer: SignerProcess | None = None
        self.client: SignerClient | None = None

    def start(self) -> dict:
        """Start and wait until healthy. A sign_x509 is sent right behind the first health:
        it shows how long the first quick_check holds issuance up."""
        figures: dict = {}
        started = time.perf_counter()
        self.signer = SignerProcess(self.config, log_dir=self.run_dir)
        figures["pty_s"] = time.perf_counter() - started
        self.client = client = SignerClient(self.signer.client_path, timeout=120)
        health_id = client.send("health")
        sign_id = client.send("sign_x509", self.body)
        health = client.wait_for(health_id, timeout=300)
        figures["health_s"] = time.perf_counter() - started
        figures["first_health"] = health.body if health.ok else {"error": health.error}
        sign = client.wait_for(sign_id, timeout=300)
        figures["sign_s"] = time.perf_counter() - started
        figures["sign"] = "ok" if sign.ok else f"{sign.error['code']}: {sign.error['message']}"
        figures["healthy_s"] = figures["health_s"]
        while not (health.ok and health.body["healthy"]):
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"signer not healthy after 600 s: {health.body or health.error}")
            time.sleep(0.2)
            health = client.call("health", timeout=300)
            figures["healthy_s"] = time.perf_counter() - started
        return figures

    def round_trip(self, timed: bool = True) -> None:
        started = time.perf_counter()
        response = self.client.call("sign_x509", self.body, timeout=120)
        assert response.ok, response.error
        if timed:
            self.times.append(time.perf_counter() - started)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.signer is not None:
            self.signer.stop()
            self.signer = None


def repository_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def count_certificates(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def p90_ms(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.9 * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--issuances", type=int, default=200, help="in-process issuances per size")
    parser.add_argument("--round-trips", type=int, default=50, help="timed sign_x509 round trips per size")
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--revoked", type=float, default=0.03, help="fraction of certificates revoked")
    parser.add_argument("--history", choices=sorted(BYTES_PER_CERT), default="certificates")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary folder goes")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))
    rounds = 10

    free = shutil.disk_usage(args.dir).free
    needed = sum(sizes) * BYTES_PER_CERT[args.history] + 200_000_000
    print(f"disk: {free / 1e9:.1f} GB free in {args.dir}, about {needed / 1e9:.1f} GB needed", flush=True)
    if free < needed * 1.2:
        sys.exit("bench_growth: not enough free disk; use --dir or smaller --sizes")

    tmp = Path(tempfile.mkdtemp(prefix="bench-growth-", dir=args.dir))
    signers: dict[int, Signer] = {}
    try:
        data = dev_init(tmp / "data")
        subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{tmp}/k.pem",
                        "-out", f"{tmp}/r.csr", "-outform", "DER", "-subj", "/CN=x"], check=True,
                       capture_output=True)
        body = sign_body((tmp / "r.csr").read_bytes())
        paths, fill_s = {}, {}
        for size in sizes:
            run_dir = tmp / f"run-{size}"
            run_dir.mkdir()
            paths[size] = run_dir / "repository.sqlite"
            started = time.perf_counter()
            Filler(paths[size], args.history, args.revoked).grow(size)
            fill_s[size] = time.perf_counter() - started
            print(f"filled {size:>9,} certificates in {fill_s[size]:6.1f} s: {repository_bytes(paths[size]) / 1e9:.2f} GB",
                  flush=True)

        # (a) in process, round robin over the sizes.
        stores = {size: Issuances(paths[size]) for size in sizes}
        try:
            for store in stores.values():
                store.run(5)  # warm-up: statements compiled, upper b-tree pages cached
                store.phases = {name: [] for name in store.phases}
            for _ in range(rounds):
                for store in stores.values():
                    store.run(max(1, args.issuances // rounds))
            health_s = {size: (store.health_seconds(False), store.health_seconds(True))
                        for size, store in stores.items()}
        finally:
            for store in stores.values():
                store.close()

        # (b) end to end: start each signer cold, then round trips round robin.
        starts = {}
        for size in sizes:
            evict_page_cache(paths[size])
            signers[size] = Signer(signer_config(data, paths[size].parent), paths[size].parent, body)
            starts[size] = signers[size].start()
            print(f"signer on {size:>9,} started (cold page cache): client-pty {starts[size]['pty_s']:5.1f} s,"
                  f" first health {starts[size]['health_s']:5.1f} s, healthy {starts[size]['healthy_s']:5.1f} s",
                  flush=True)
        for signer in signers.values():
            for _ in range(args.warm_up):
                signer.round_trip(timed=False)
        for _ in range(args.round_trips):
            for signer in signers.values():
                signer.round_trip()
        largest = sizes[-1]
        signers[largest].stop()
        warm = signers[largest].start()  # page cache warm now
        for signer in signers.values():
            signer.stop()
        rows = {size: count_certificates(paths[size]) for size in sizes}
        sizes_on_disk = {size: repository_bytes(paths[size]) for size in sizes}
    finally:
        for signer in signers.values():
            signer.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"history: {args.history}; {args.revoked:.0%} revoked; DER {DER_BYTES[0]}-{DER_BYTES[1]} bytes;"
          f" {args.issuances} in-process issuances and {args.round_trips} sign_x509 round trips"
          f" (after {args.warm_up} warm-up) per size, round robin over the sizes")
    print(f"{'certificates':>12} | {'repository work of one issuance, in process (ms)':^48} |"
          f" {'sign_x509 RTT (ms)':^19} | {'health() (ms)':^19} | {'file':>8}")
    print(f"{'':>12} | {'lookup':>8} {'reserve':>8} {'complete':>9} {'total p50':>10} {'p90':>8} |"
          f" {'p50':>9} {'p90':>9} | {'counts':>8} {'+quick':>10} |")
    for size in sizes:
        ph, sign = stores[size].phases, signers[size].times
        counts_s, quick_s = health_s[size]
        print(f"{rows[size]:>12,} | {median_ms(ph['lookup']):8.3f} {median_ms(ph['reserve']):8.3f}"
              f" {median_ms(ph['complete']):9.3f} {median_ms(ph['total']):10.3f} {p90_ms(ph['total']):8.3f} |"
              f" {median_ms(sign):9.2f} {p90_ms(sign):9.2f} | {counts_s * 1000:8.1f} {quick_s * 1000:10.1f} |"
              f" {sizes_on_disk[size] / 1e9:5.2f} GB")
    first, last = sizes[0], sizes[-1]
    in_ratio = median_ms(stores[last].phases["total"]) / median_ms(stores[first].phases["total"])
    e2e_ratio = median_ms(signers[last].times) / median_ms(signers[first].times)
    print(f"ratio {last:,}/{first:,}: in-process repository work {in_ratio:.2f}x, end-to-end sign_x509 {e2e_ratio:.2f}x"
          f" (target <= 1.2x) -> {'flat' if max(in_ratio, e2e_ratio) <= 1.2 else 'NOT flat'}")
    for size in sizes:
        s = starts[size]
        print(f"signer start at {rows[size]:>9,} certificates, page cache cold: client-pty line {s['pty_s']:5.2f} s,"
              f" first health answer {s['health_s']:6.2f} s (healthy={s['first_health'].get('healthy')}),"
              f" first healthy {s['healthy_s']:6.2f} s; sign_x509 sent behind the first health: {s['sign']}"
              f" at {s['sign_s']:6.2f} s")
        if s["first_health"].get("problems"):
            print(f"    first health problems: {s['first_health']['problems']}")
    print(f"signer start at {rows[last]:>9,} certificates, page cache warm: client-pty line {warm['pty_s']:5.2f} s,"
          f" first health answer {warm['health_s']:6.2f} s (healthy={warm['first_health'].get('healthy')}),"
          f" first healthy {warm['healthy_s']:6.2f} s; sign_x509 sent behind the first health: {warm['sign']}"
          f" at {warm['sign_s']:6.2f} s")
    print(f"repository file at {rows[last]:,} certificates: {sizes_on_disk[last] / 1e9:.2f} GB"
          f" ({sizes_on_disk[last] / rows[last]:.0f} bytes per certificate); filled in {fill_s[last]:.0f} s")


if __name__ == "__main__":
    main()
