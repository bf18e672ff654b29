"""Load benchmark (hardening item 6): mixed requests pipelined over the pty with a fixed
number in flight, the throughput, p50/p99 latency (overall and per command), and the
memory of every process of the signer at the start and at the end.

    .venv/bin/python bench/bench_load.py [--requests 10000] [--in-flight 100] [--seed N]

Mix (seeded): sign_x509 80% (class3 `server-org` 85% of them, root `server` 15%),
revoke_x509 8% (of a certificate answered earlier), fetch_crl 4% (alternating issuers,
`have_number` of the last answer, so unchanged/diff/full all occur), health 4%, ca_info 4%.
Every answer must be a success.

Memory: VmHWM (peak RSS) and VmRSS from /proc/<pid>/status of every actor (pids from
`signer-admin status`), plus the other processes of the signer found in /proc by their
command line (`signer run` itself with the pty relay, Thespian's admin and logger).
Figures are taken three times: right after start-up, after a warm-up (each command a few
times: the linter, the throwaway keys and the first CRLs are loaded by then) and at the
end. Bound, checked here (exit 1) and by tests/e2e/test_load.py: no process's VmRSS grows by
more than 50 MiB from the warm-up to the end, and no actor was restarted.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from core.wire.framing import FrameError  # noqa: E402
from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import Response, SignerClient, parse_response  # noqa: E402

RSS_GROWTH_BOUND_KIB = 50 * 1024
ANSWER_TIMEOUT_S = 300  # no answer at all for this long: the run fails


def make_csrs(count: int) -> list[bytes]:
    csrs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csrs.append(x509.CertificateSigningRequestBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"load-{i}")]))
                    .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    return csrs


# -- memory ---------------------------------------------------------------------------------

def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in KiB, or None when the process is gone."""
    figures = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    figures[key] = int(value.split()[0])
    except OSError:
        return None
    return figures.get("VmHWM", 0), figures.get("VmRSS", 0)


def signer_pids(signer: SignerProcess) -> dict[str, int]:
    """name -> pid: every actor from `signer-admin status`, then the signer's other
    processes (same command line) as run/admin/logger."""
    records = signer.status()
    named = {r["name"]: r["pid"] for r in records if r.get("pid")}
    wanted = ["run", "--config", str(signer.config)]
    others = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in named.values():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            others.append(int(entry))
    for pid in sorted(others):
        if pid == signer.process.pid:
            named["(signer run)"] = pid
        else:
            named[f"(thespian {pid})"] = pid
    return named


def snapshot(pids: dict[str, int]) -> dict[str, tuple[int, int] | None]:
    return {name: memory_kib(pid) for name, pid in pids.items()}


def restarts(signer: SignerProcess) -> dict[str, int]:
    return {r["name"]: r.get("restarts", 0) for r in signer.status()}


# -- the load -------------------------------------------------------------------------------

@dataclass
class LoadResult:
    total: int
    seconds: float
    latencies: dict[str, list[float]]
    statuses: Counter = field(default_factory=Counter)
    errors: list[tuple[str, str, dict]] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.total / self.seconds

    def percentiles(self, command: str | None = None) -> tuple[float, float, float]:
        values = sorted(v for c, vs in self.latencies.items() if command in (None, c) for v in vs)
        q = statistics.quantiles(values, n=100, method="inclusive")
        return q[49], q[98], values[-1]


class LoadClient:
    def __init__(self, client: SignerClient, seed: int, csrs: list[bytes], prefix: str) -> None:
        self.client, self.rng, self.csrs, self.prefix = client, random.Random(seed), csrs, prefix
        self.issued: list[tuple[str, str]] = []
        self.crl_numbers: dict[str, int] = {}
        self.crl_turn = 0

    def request(self, n: int) -> tuple[str, dict[str, Any]]:
        roll = self.rng.random()
        if roll < 0.08 and self.issued:
            issuer, serial = self.issued.pop(self.rng.randrange(len(self.issued)))
            return "revoke_x509", {"issuer": issuer, "serial": serial, "reason": "superseded"}
        if roll < 0.12:
            self.crl_turn += 1
            issuer = ("root", "class3")[self.crl_turn % 2]
            body: dict[str, Any] = {"issuer": issuer}
            if issuer in self.crl_numbers:
                body["have_number"] = self.crl_numbers[issuer]
            return "fetch_crl", body
        if roll < 0.16:
            return "health", {}
        if roll < 0.20:
            return "ca_info", {}
        csr = self.rng.choice(self.csrs)
        if self.rng.random() < 0.15:
            return "sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                 "subject": [["CN", f"r{n}.example.org"]], "sans": [["dns", f"r{n}.example.org"]]}
        return "sign_x509", {"issuer": "class3", "profile": "server-org", "csr": csr,
                             "subject": [["CN", f"c{n}.example.org"], ["O", "Load Test"]],
                             "sans": [["dns", f"c{n}.example.org"]]}

    def read(self) -> list[Response]:
        serial_port = self.client.serial
        answers = []
        while not answers:
            data = serial_port.read(serial_port.in_waiting or 1)
            if not data:
                return answers
            for item in self.client.decoder.feed(data):
                answers.append(Response(None, error={"code": item.code, "message": item.message})
                               if isinstance(item, FrameError) else parse_response(item))
        return answers

    def run(self, total: int, in_flight: int) -> LoadResult:
        sent: dict[str, tuple[str, float]] = {}
        result = LoadResult(total, 0.0, defaultdict(list))
        made = done = 0
        started = last_answer = time.perf_counter()
        while done < total:
            while made < total and len(sent) < in_flight:
                command, body = self.request(made)
                request_id = f"{self.prefix}-{made}"
                sent[request_id] = (command, time.perf_counter())
                self.client.send(command, body, request_id=request_id)
                made += 1
            answers = self.read()
            now = time.perf_counter()
            if not answers and now - last_answer > ANSWER_TIMEOUT_S:
                raise TimeoutError(f"no answer for {ANSWER_TIMEOUT_S} s, {len(sent)} in flight")
            for response in answers:
                last_answer = now
                if response.request_id not in sent:
                    result.errors.append(("?", str(response.request_id), response.error or {}))
                    continue
                command, sent_at = sent.pop(response.request_id)
                done += 1
                result.latencies[command].append(now - sent_at)
                if not response.ok:
                    result.errors.append((command, response.request_id, response.error))
                    continue
                body = response.body
                if command == "sign_x509":
                    self.issued.append((body["issuer"], body["serial"]))
                elif command == "fetch_crl":
                    self.crl_numbers[body["issuer"]] = body["number"]
                    result.statuses[body["status"]] += 1
                elif command == "health" and not body["healthy"]:
                    result.errors.append((command, response.request_id, {"problems": body["problems"]}))
        result.seconds = time.perf_counter() - started
        return result


def warm_up(client: SignerClient, csrs: list[bytes]) -> None:
    loader = LoadClient(client, 0, csrs, "warm")
    for command, body in [("health", {}), ("ca_info", {}),
                          ("fetch_crl", {"issuer": "root"}), ("fetch_crl", {"issuer": "class3"})]:
        assert client.call(command, body, timeout=120).ok
    for n in range(20):
        command, body = loader.request(n)
        if command == "sign_x509":
            response = client.call(command, body, timeout=120)
            assert response.ok, response.error


# -- one whole run --------------------------------------------------------------------------

@dataclass
class LoadReport:
    result: LoadResult
    pids: dict[str, int]
    at_start: dict[str, Any]
    after_warm_up: dict[str, Any]
    at_end: dict[str, Any]
    restarts: dict[str, int]

    def growth_kib(self) -> dict[str, int]:
        return {name: self.at_end[name][1] - self.after_warm_up[name][1]
                for name in self.pids if self.at_end.get(name) and self.after_warm_up.get(name)}

    def lines(self) -> list[str]:
        r = self.result
        p50, p99, worst = r.percentiles()
        out = [f"{r.total} requests in {r.seconds:.1f} s: {r.throughput:.1f} requests/s;"
               f" latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"]
        for command in sorted(r.latencies):
            c50, c99, cmax = r.percentiles(command)
            out.append(f"  {command:<12} {len(r.latencies[command]):6d}  p50 {c50 * 1000:7.0f} ms"
                       f"  p99 {c99 * 1000:7.0f} ms  max {cmax * 1000:7.0f} ms")
        out.append(f"  fetch_crl statuses: {dict(r.statuses)}; errors: {len(r.errors)}")
        out.append(f"  {'process':<22} {'pid':>7} {'HWM start':>10} {'RSS start':>10} {'RSS warm':>10}"
                   f" {'HWM end':>10} {'RSS end':>10} {'growth':>9}   (MiB)")
        growth = self.growth_kib()
        for name, pid in self.pids.items():
            s, w, e = (self.at_start.get(name), self.after_warm_up.get(name), self.at_end.get(name))
            fmt = lambda v, i: f"{v[i] / 1024:10.1f}" if v else f"{'gone':>10}"  # noqa: E731
            out.append(f"  {name:<22} {pid:>7} {fmt(s, 0)} {fmt(s, 1)} {fmt(w, 1)} {fmt(e, 0)} {fmt(e, 1)}"
                       f" {growth.get(name, 0) / 1024:9.1f}")
        out.append(f"  bound: every process's RSS grows < {RSS_GROWTH_BOUND_KIB // 1024} MiB from warm-up to"
                   f" end; largest growth {max(growth.values()) / 1024:.1f} MiB; actor restarts:"
                   f" {sum(self.restarts.values())}")
        return out

    def problems(self) -> list[str]:
        found = [f"{c} {i}: {e}" for c, i, e in self.result.errors[:20]]
        found += [f"{name} RSS grew {kib / 1024:.1f} MiB" for name, kib in self.growth_kib().items()
                  if kib >= RSS_GROWTH_BOUND_KIB]
        found += [f"{name} gone at the end" for name in self.pids if not self.at_end.get(name)]
        found += [f"{name} restarted {n} times" for name, n in self.restarts.items() if n]
        return found


def load_run(signer: SignerProcess, total: int, in_flight: int, seed: int) -> LoadReport:
    csrs = make_csrs(16)
    pids = signer_pids(signer)
    at_start = snapshot(pids)
    with SignerClient(signer.client_path, timeout=120) as client:
        warm_up(client, csrs)
        after_warm_up = snapshot(pids)
        result = LoadClient(client, seed, csrs, f"load-{seed}").run(total, in_flight)
    at_end = snapshot(pids)
    return LoadReport(result, pids, at_start, after_warm_up, at_end, restarts(signer))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data", help="an existing `signer dev-init` folder (default: a new one)")
    parser.add_argument("--workers", type=int, default=None, help="x509.workers (default: the config's)")
    args = parser.parse_args()
    from bench.profile_x509 import with_x509_workers  # here: profile_x509 imports this module
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    print(f"seed {seed}, {args.requests} requests, {args.in_flight} in flight", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else dev_init(Path(tmp) / "data")
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        signer = SignerProcess(with_x509_workers(signer_config(data, run_dir), args.workers), log_dir=run_dir)
        try:
            report = load_run(signer, args.requests, args.in_flight, seed)
        finally:
            signer.stop()
    print("\n".join(report.lines()))
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
