"""Slow-link benchmark (hardening item 5): the signer behind a serial line paced like a
UART (core.runtime.ptyrelay.PtyRelay(baud=...), 10 bit times per byte, each direction its own
clock). One run:

  1. pacing check: push --pace-bytes one way through a paced relay (then both ways at
     once) and compare bytes/s with baud/10;
  2. the signer with serial.mode "device" on end a of a paced relay created here; the
     client opens end b. sign_x509 (server profile, RSA-4096 issuer, DER CSR) with all
     --requests pipelined, then fetch_crl of --crl-entries revocations in full, then, after
     --revoke revocations over the link, as a diff.

Utilisation of a direction = bytes the relay moved that way / (baud/10 * elapsed), elapsed
from the first request sent to the last answer received. Where the rest went: the line's
idle time signer->client, before the first answer byte and after it (from the times the
relay released bytes, PtyRelay(record=True)). The direction carrying more
bytes is the bottleneck; its utilisation is the figure to judge (target >= 95 % for
signing). The relay's byte counts are checked against signer-admin status (serial_link
bytes_in/bytes_out) at the end.

    .venv/bin/python bench/bench_slow_link.py [--baud 115200] [--requests 200] [--workers N]
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
import tty
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402

from core.repository.store import Repository  # noqa: E402
from bench.bench_load import signer_pids  # noqa: E402
from bench.profile_x509 import cpu_seconds, request_csrs, sign_bodies, with_x509_workers  # noqa: E402
from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import SignerClient, SignerTimeout  # noqa: E402
from tools.client.crl_fetch import fetch_crl_into  # noqa: E402
from core.runtime.ptyrelay import PtyRelay  # noqa: E402

CRL_ISSUER = "class3"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


class DeviceSignerProcess(SignerProcess):
    """A signer whose serial.mode is "device": it prints no client-pty line, so wait for
    its "signer: running" line on stderr instead (printed once every actor is configured)."""

    def _read_client_path(self) -> str:
        # SignerProcess sends stderr to the file stderr_path (appended to across runs).
        start = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = self.stderr_path.read_bytes()[start:].decode(errors="replace")
            if "signer: running" in text:
                return ""
            if self.process.poll() is not None:
                raise RuntimeError(f"signer exited {self.process.returncode}: {text[-4000:]}")
            time.sleep(0.05)
        raise RuntimeError("signer did not report running within 90 s")


# --- 1. pacing ----------------------------------------------------------------------------

def open_raw(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


def paced_rates(baud: int, size: int, both: bool) -> dict[str, float]:
    """Bytes/s delivered through a fresh paced relay, per direction, measured at the
    receiver from its first read to its last (the first read's bytes not counted)."""
    relay = PtyRelay(baud=baud).start()
    ends = {"a": open_raw(relay.path_a), "b": open_raw(relay.path_b)}
    rates: dict[str, float] = {}

    def push(source: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(source, view[:4096]):]

    def pump(source: str, sink: str) -> None:
        writer = threading.Thread(target=push, args=(ends[source], os.urandom(size)), daemon=True)
        writer.start()
        got, first, started = 0, 0, 0.0
        while got < size:
            chunk = os.read(ends[sink], 65536)
            if not got:
                first, started = len(chunk), time.perf_counter()
            got += len(chunk)
        rates[f"{source}->{sink}"] = (got - first) / (time.perf_counter() - started)
        writer.join()

    pumps = [threading.Thread(target=pump, args=("a", "b"))]
    if both:
        pumps.append(threading.Thread(target=pump, args=("b", "a")))
    try:
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()
    finally:
        for fd in ends.values():
            os.close(fd)
        relay.stop()
    return rates


# --- 2. the signer over the paced link ------------------------------------------------------

def fill_repository(path: Path, crl_entries: int, spare: int) -> list[str]:
    """crl_entries revoked class3 certificates (the CRL) and `spare` live ones to revoke."""
    def row(serial: str) -> dict:
        return {"issuer": CRL_ISSUER, "serial": serial, "request_id": f"bulk-{serial}", "profile": "server-org",
                "subject": "CN=bulk", "not_before": NOW - timedelta(days=100),
                "not_after": NOW + timedelta(days=265), "der": os.urandom(1200)}
    revoked = [format(secrets.randbits(127) | 1 << 127, "x") for _ in range(crl_entries)]
    spares = [format(secrets.randbits(127) | 1 << 127, "x") for _ in range(spare)]
    repo = Repository(str(path), "bench-fill")
    try:
        repo.bulk_insert_certificates(row(s) for s in revoked + spares)
        repo.bulk_insert_revocations({"issuer": CRL_ISSUER, "serial": s, "reason": (None, 1, 4)[i % 3],
                                      "revoked_at": NOW - timedelta(days=i % 90)} for i, s in enumerate(revoked))
    finally:
        repo.close()
    return spares


class Window:
    """Bytes the relay moved each way between start() and stop(), and the elapsed time."""

    def __init__(self, relay: PtyRelay, baud: int) -> None:
        self.relay, self.capacity = relay, baud / 10

    def start(self) -> "Window":
        self.before = dict(self.relay.moved)
        self.started = time.perf_counter()
        self.started_monotonic = time.monotonic()  # the relay's clock for deliveries
        self.deliveries_before = len(self.relay.deliveries or [])
        return self

    def stop(self) -> "Window":
        self.elapsed = time.perf_counter() - self.started
        self.stopped_monotonic = time.monotonic()
        self.to_client = self.relay.moved["a_to_b"] - self.before["a_to_b"]  # signer -> client
        self.to_signer = self.relay.moved["b_to_a"] - self.before["b_to_a"]  # client -> signer
        return self

    def utilisation(self, moved: int) -> float:
        return moved / (self.capacity * self.elapsed)

    def idle(self, direction: str = "a_to_b") -> dict[str, float]:
        """When the line carried nothing that way, from the relay's deliveries: a write of n
        bytes at t kept the line busy from t for n bytes' time (10 bit times each). Seconds
        idle before the first byte, idle after it, the longest gap and the gaps over 20 ms."""
        deliveries = [(t, n) for t, d, n in (self.relay.deliveries or [])[self.deliveries_before:]
                      if d == direction and self.started_monotonic <= t <= self.stopped_monotonic]
        if not deliveries:
            return {"before_first": self.elapsed, "after_first": 0.0, "longest_gap": 0.0, "gaps_over_20ms": 0}
        busy_until, after_first, longest, gaps = deliveries[0][0], 0.0, 0.0, 0
        for at, size in deliveries:
            gap = max(0.0, at - busy_until)
            after_first += gap
            longest = max(longest, gap)
            gaps += gap > 0.02
            busy_until = max(busy_until, at) + size / self.capacity
        after_first += max(0.0, self.stopped_monotonic - busy_until)
        return {"before_first": deliveries[0][0] - self.started_monotonic, "after_first": after_first,
                "longest_gap": longest, "gaps_over_20ms": gaps}

    def describe(self) -> str:
        bottleneck = "signer->client" if self.to_client >= self.to_signer else "client->signer"
        worst = max(self.to_client, self.to_signer)
        return (f"signer->client {self.to_client:>9,} B ({self.utilisation(self.to_client):6.1%}) | "
                f"client->signer {self.to_signer:>9,} B ({self.utilisation(self.to_signer):6.1%}) | "
                f"bottleneck {bottleneck}: {self.utilisation(worst):.1%} of {self.capacity:,.0f} B/s")


def pipelined_signing(client: SignerClient, window: Window, bodies: list[dict],
                      quiet_s: float = 2.0) -> dict:
    """Send all requests (one per body) from a second thread while this one collects the answers,
    as a client on a full-duplex line does (one that stops reading while it writes leaves
    the answer direction idle: the relay cannot deliver into a full pty, and the lost time
    counted against the signer). An answer with id nil (a frame the signer could not
    decode) means some request was lost: once the answers stop for quiet_s, every
    unanswered request is resent with its id (protocol.md, client guidance; a sign_x509
    that was in fact done is replayed). Latency counts from each request's send.
    `before_stall`: (seconds, signer->client bytes) up to the last answer before the first
    such wait, i.e. the link's use while no request was missing."""
    count = len(bodies)
    ids = [client.new_id() for _ in range(count)]
    body_of = dict(zip(ids, bodies))
    sent_at, latency = {}, {}
    frame_errors, resent, before_stall, last_answer = [], 0, None, 0.0

    def send_all() -> None:
        for request_id in ids:
            sent_at[request_id] = time.perf_counter()
            client.send("sign_x509", body_of[request_id], request_id=request_id)

    sender = threading.Thread(target=send_all, name="bench-sender")
    window.start()
    sender.start()
    while len(latency) < count:
        try:
            response = client.receive(timeout=quiet_s if frame_errors else 600)
        except SignerTimeout:
            if not frame_errors:
                raise
            if before_stall is None:
                before_stall = (last_answer - window.started,
                                window.relay.moved["a_to_b"] - window.before["a_to_b"])
            sender.join()  # one writer at a time
            for request_id in ids:
                if request_id not in latency:
                    client.send("sign_x509", body_of[request_id], request_id=request_id)
                    resent += 1
            continue
        if response.request_id is None:
            frame_errors.append(response.error["code"])
            continue
        if response.error and response.error["code"] == "duplicate_request":
            continue  # a resend that overtook its original; the original's answer follows
        assert response.ok, response.error
        last_answer = time.perf_counter()
        latency.setdefault(response.request_id, last_answer - sent_at[response.request_id])
    window.stop()
    sender.join()
    assert sorted(latency) == sorted(ids)
    return {"latency": list(latency.values()), "frame_errors": frame_errors, "resent": resent,
            "before_stall": before_stall}


def call_retrying(client: SignerClient, command: str, body: dict, timeout: float = 30.0):
    """call(), resent with the same id if no answer comes (the request frame was lost)."""
    request_id = client.send(command, body)
    for _ in range(5):
        try:
            return client.wait_for(request_id, timeout=timeout)
        except SignerTimeout:
            client.send(command, body, request_id=request_id)
    raise SignerTimeout(f"{command}: no answer after 5 resends")


def round_trips(client: SignerClient, bodies: list[dict]) -> list[float]:
    times = []
    for body in bodies:
        started = time.perf_counter()
        assert call_retrying(client, "sign_x509", body).ok
        times.append(time.perf_counter() - started)
    return times


def timed_fetch(client: SignerClient, window: Window, out: Path, issuer_cert: x509.Certificate) -> dict:
    """fetch_crl_into, timed; tried again if its request frame was lost (no answer)."""
    window.start()
    for attempt in range(3):
        try:
            outcome = fetch_crl_into(client, CRL_ISSUER, out, issuer_cert)
            break
        except SignerTimeout:
            if attempt == 2:
                raise
    window.stop()
    assert outcome.error is None, outcome.error
    return outcome.summary


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--pace-bytes", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="x509.workers (default: the config's)")
    parser.add_argument("--crl-entries", type=int, default=3000)
    parser.add_argument("--revoke", type=int, default=10)
    args = parser.parse_args()
    capacity = args.baud / 10

    one_way = paced_rates(args.baud, args.pace_bytes, both=False)
    both_ways = paced_rates(args.baud, args.pace_bytes, both=True)
    print(f"pacing at {args.baud} baud (8N1: {capacity:,.0f} B/s each way), {args.pace_bytes:,} B pushed:")
    for label, rates in (("one way", one_way), ("both ways at once", both_ways)):
        for direction, rate in rates.items():
            print(f"  {label:<17} {direction}: {rate:9,.1f} B/s = {rate / capacity:7.2%} of baud/10")

    with tempfile.TemporaryDirectory() as tmp:
        data = dev_init(Path(tmp) / "data")
        csrs = request_csrs()  # distinct keys and names, as real requests (profile_x509.request_csrs)
        csr = csrs[0]
        bodies = sign_bodies(csrs, "root", args.requests)
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        spares = fill_repository(run_dir / "repository.sqlite", args.crl_entries, args.revoke)
        issuer_cert = x509.load_pem_x509_certificate((data / "ca" / f"{CRL_ISSUER}.pem").read_bytes())
        relay = PtyRelay(baud=args.baud, record=True).start()
        config = with_x509_workers(signer_config(data, run_dir, serial__mode="device", serial__device=relay.path_a,
                                                 serial__baudrate=args.baud), args.workers)
        signer = DeviceSignerProcess(config, log_dir=run_dir)
        window = Window(relay, args.baud)
        try:
            # The client timeout bounds the wait for a full CRL (a lost request is tried again).
            with SignerClient(relay.path_b, baudrate=args.baud, timeout=120) as client:
                call_retrying(client, "health", {})
                idle = round_trips(client, sign_bodies(csrs, "root", 6, first=10**6))[1:]  # the first loads the linter
                pids = signer_pids(signer)
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                signing = pipelined_signing(client, window, bodies)
                cpu_ms = {name: 1000 * (cpu_seconds(pid) - cpu_before[name]) / args.requests
                          for name, pid in pids.items()}
                sign_window = (window.elapsed, window.to_client, window.to_signer, window.describe())
                sign_idle = window.idle("a_to_b")
                out = Path(tmp) / "class3.crl"
                full = timed_fetch(client, window, out, issuer_cert)
                full_window = (window.elapsed, window.describe())
                for serial in spares:
                    assert call_retrying(client, "revoke_x509",
                                         {"issuer": CRL_ISSUER, "serial": serial, "reason": 1}).ok
                diff = timed_fetch(client, window, out, issuer_cert)
                diff_window = (window.elapsed, window.to_client, window.to_signer)
                crl_entries = len(x509.load_der_x509_crl(out.read_bytes()))
            status = {r["name"]: r for r in signer.status()}
            link, framing, hsm = status["serial_link"], status["framing"], status["hsm"]
            relay_totals = dict(relay.moved)
        finally:
            signer.stop()
            relay.stop()

    elapsed, to_client, to_signer, described = sign_window
    latency = signing["latency"]
    n = args.requests
    print(f"\nsign_x509 over the paced link, {n} pipelined (server profile, RSA-4096 issuer, DER CSR {len(csr)} B):")
    print(f"  {n / elapsed:6.2f} requests/s, {elapsed:6.1f} s; per request {to_signer / n:,.0f} B in, {to_client / n:,.0f} B out"
          f" -> link-bound ceiling {capacity / max(to_signer / n, to_client / n):.2f} requests/s")
    print(f"  {described}")
    print(f"  line signer->client idle: {sign_idle['before_first'] * 1000:.0f} ms before the first answer byte,"
          f" {sign_idle['after_first'] * 1000:.0f} ms after it ({sign_idle['gaps_over_20ms']} gaps over 20 ms,"
          f" longest {sign_idle['longest_gap'] * 1000:.0f} ms)")
    errors = signing["frame_errors"]
    if errors:
        seconds, moved = signing["before_stall"]
        print(f"  {len(errors)} request frame(s) lost at the signer ({sorted(set(errors))}, answered with id nil);"
              f" {signing['resent']} unanswered requests resent after 2 s without answers")
        print(f"  until the last answer before that wait: signer->client {moved:,} B in {seconds:.1f} s ="
              f" {moved / (capacity * seconds):.1%} of the link")
    busiest = sorted(cpu_ms.items(), key=lambda item: -item[1])[:4]
    print(f"  signer CPU per request {sum(cpu_ms.values()):.1f} ms (" + ", ".join(f"{k} {v:.1f}" for k, v in busiest)
          + f"): on {os.cpu_count()} CPUs at most {os.cpu_count() * 1000 / sum(cpu_ms.values()):.0f} requests/s"
          f" if the signer had them to itself")
    print(f"  latency with all {n} in flight: p50 {percentile(latency, 0.5) * 1000:7.0f} ms,"
          f" p99 {percentile(latency, 0.99) * 1000:7.0f} ms, max {max(latency) * 1000:7.0f} ms")
    print(f"  latency of one request alone (5 round trips): p50 {statistics.median(idle) * 1000:5.0f} ms"
          f" (the bytes alone: {(to_signer + to_client) / n / capacity * 1000:.0f} ms)")
    elapsed, described = full_window
    print(f"fetch_crl full, {args.crl_entries:,} entries ({full['bytes_moved']:,} B CRL): {elapsed:5.2f} s")
    print(f"  {described}")
    elapsed, to_client, to_signer = diff_window
    print(f"fetch_crl diff after {args.revoke} revocations ({crl_entries:,} entries now):"
          f" {diff['bytes_moved']:,} B diff, {to_client:,} B answer frame, {to_signer:,} B request frame, {elapsed:5.2f} s")
    print(f"byte counts, whole run: relay a->b {relay_totals['a_to_b']:,} / b->a {relay_totals['b_to_a']:,};"
          f" signer-admin serial_link bytes_out {link['bytes_out']:,} / bytes_in {link['bytes_in']:,}")
    print(f"signer-admin framing: frame_errors {framing['frame_errors']}, frames_in {framing['frames_in']}")
    print(f"signer-admin hsm, whole run: {hsm.get('signatures')} signatures, of which {hsm.get('seals')} audit seals")


if __name__ == "__main__":
    main()
