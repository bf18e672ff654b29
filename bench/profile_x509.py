"""Where one `sign_x509` spends its CPU, per process (issue 18: profile first).

Starts a dev signer, warms it up, then sends --certs pipelined `sign_x509` requests
(RSA-2048 issuer, as bench_x509; distinct keys and names) and reads each process's CPU time (utime + stime from
/proc/PID/stat) before and after: CPU milliseconds per certificate for every actor, the
`signer run` process (the dev pty relay thread) and this client. With --py-spy NAME...,
py-spy samples those actors meanwhile and the top functions (inclusive time) are printed.

    .venv/bin/python bench/profile_x509.py [--certs 300] [--workers 2] [--py-spy x509_signer]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_load import signer_pids  # noqa: E402
from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import SignerClient  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the process so far: involuntary ones are
    preemptions, each of which may cost the process its CPU caches."""
    counts = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.endswith("ctxt_switches\n") or "ctxt_switches:" in line:
                key, _, value = line.partition(":")
                counts[key] = int(value)
    return counts.get("voluntary_ctxt_switches", 0), counts.get("nonvoluntary_ctxt_switches", 0)


def deliveries(signer: SignerProcess) -> dict[str, tuple[int, int]]:
    """actor -> (Thespian deliveries, messages handled): a Batch is one delivery of many."""
    return {record["name"]: (record.get("deliveries", 0), record.get("messages", 0)) for record in signer.status()}


def with_x509_workers(config_path: Path, workers: int | None) -> Path:
    """The config with `x509.workers` set (None: left to its default)."""
    if workers is not None:
        config = yaml.safe_load(config_path.read_text())
        config.setdefault("x509", {})["workers"] = workers
        config_path.write_text(yaml.safe_dump(config))
    return config_path


KEY_POOL = 300  # distinct request keys: more than the linter's cache holds (lint_cache.CAPACITY)


def _csr_of_new_key(index: int) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{index}")]))
            .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))


def request_csrs(count: int = KEY_POOL) -> list[bytes]:
    """DER CSRs of `count` distinct RSA-2048 keys (made on every CPU: ~40 ms a key). Real
    requests never share a key or a name, so neither do the benchmarks' requests: a
    certificate that repeated the last one's values would flatter every cache on the way
    (the linter's decoded values, core/x509/lint_cache.py)."""
    from multiprocessing import Pool

    with Pool(os.cpu_count()) as pool:
        return pool.map(_csr_of_new_key, range(count))


def sign_body(csr: bytes, issuer: str, index: int = 0) -> dict:
    """bench_x509's request (class3: RSA-2048), or bench_slow_link's (root: RSA-4096),
    the `index`th: its own names."""
    host = f"www{index}.example.org"
    if issuer == "root":
        return {"issuer": "root", "profile": "server", "csr": csr, "subject": [["CN", host]],
                "sans": [["dns", host]]}
    return {"issuer": "class3", "profile": "server-org", "csr": csr,
            "subject": [["CN", host], ["O", "Example"]], "sans": [["dns", host], ["dns", f"mail{index}.example.org"]]}


def sign_bodies(csrs: list[bytes], issuer: str, count: int, first: int = 0) -> list[dict]:
    """`count` requests with distinct names, the keys taken in turn from `csrs`."""
    return [sign_body(csrs[i % len(csrs)], issuer, i) for i in range(first, first + count)]


def top_functions(raw_path: Path, count: int = 25) -> list[tuple[str, float]]:
    """py-spy --format raw: 'frame;frame;... N' per stack. Inclusive time: the share of
    samples whose stack holds the function (its callees included)."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        total += int(samples)
        for function in {frame.split(" (")[0] for frame in stack.split(";")}:
            inclusive[function] += int(samples)
    # Functions on (nearly) every stack are the process's trunk (fork, actor loop): left out.
    shares = [(function, 100 * n / total) for function, n in inclusive.most_common()] if total else []
    return [(function, share) for function, share in shares if share < 90][:count]


def warm_up(client: SignerClient, bodies: list[dict], rounds: int = 3, burst: int = 20) -> None:
    """Pipelined bursts, so every worker of the pool gets requests (one at a time would all
    go to the first: the Dispatcher picks the least busy) and pays its first-use costs."""
    for round_number in range(rounds):
        burst_bodies = [bodies[(round_number * burst + i) % len(bodies)] for i in range(burst)]
        for request_id in [client.send("sign_x509", body) for body in burst_bodies]:
            assert client.wait_for(request_id, timeout=300).ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=None, help="x509.workers (default: the config's)")
    parser.add_argument("--issuer", choices=["class3", "root"], default="class3")
    parser.add_argument("--py-spy", nargs="*", default=[], help="actor names to sample with py-spy")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="keep py-spy's raw stacks here (NAME.raw), for reading whole call paths")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = dev_init(Path(tmp) / "data")
        csrs = request_csrs()
        warm_bodies = sign_bodies(csrs, args.issuer, 60, first=10**6)
        bodies = sign_bodies(csrs, args.issuer, args.certs)
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        signer = SignerProcess(with_x509_workers(signer_config(data, run_dir), args.workers), log_dir=run_dir)
        try:
            with SignerClient(signer.client_path, timeout=300) as client:
                warm_up(client, warm_bodies)
                pids = signer_pids(signer)
                pids["(this client)"] = os.getpid()
                spies = []
                for name in args.py_spy:
                    out = (args.raw_dir or Path(tmp)) / f"{name}.raw"
                    spies.append((name, out, subprocess.Popen(
                        [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                         "--format", "raw", "--rate", "500", "--nonblocking", "-p", str(pids[name]),
                         "-o", str(out)], stdout=subprocess.DEVNULL, stderr=open(f"{out}.log", "w"))))
                time.sleep(1.0 if spies else 0)  # py-spy attaches
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                switches_before = {name: context_switches(pid) for name, pid in pids.items()}
                deliveries_before = deliveries(signer)
                started = time.perf_counter()
                ids = [client.send("sign_x509", body) for body in bodies]
                for request_id in ids:
                    response = client.wait_for(request_id, timeout=300)
                    assert response.ok, response.error
                elapsed = time.perf_counter() - started
                after = {name: cpu_seconds(pid) for name, pid in pids.items()}
                deliveries_after = deliveries(signer)
                switches = {name: tuple(a - b for a, b in zip(context_switches(pid), switches_before[name]))
                            for name, pid in pids.items()}
                profiles = {}
                for name, out, spy in spies:
                    spy.send_signal(2)
                    spy.wait(60)
                    profiles[name] = (top_functions(out) if out.exists()
                                      else Path(f"{out}.log").read_text()[-500:])
        finally:
            signer.stop()
    print(f"{args.certs} sign_x509 pipelined in {elapsed:.2f} s: {args.certs / elapsed:.1f} certificates/s, "
          f"{1000 * elapsed / args.certs:.2f} ms wall per certificate")
    spent = {name: 1000 * (after[name] - before[name]) / args.certs for name in pids}
    for name, ms in sorted(spent.items(), key=lambda item: -item[1]):
        if ms > 0.005:
            voluntary, involuntary = switches[name]
            delivered = [a - b for a, b in zip(deliveries_after.get(name, (0, 0)), deliveries_before.get(name, (0, 0)))]
            print(f"  {name:<24} {ms:6.2f} ms CPU per certificate; per certificate: context switches"
                  f" {voluntary / args.certs:4.2f} waits, {involuntary / args.certs:4.2f} preemptions;"
                  f" {delivered[0] / args.certs:4.2f} deliveries, {delivered[1] / args.certs:4.2f} messages")
    print(f"  {'total':<24} {sum(spent.values()):6.2f} ms CPU per certificate "
          f"({os.cpu_count()} CPUs: floor {sum(spent.values()) / os.cpu_count():.2f} ms wall)")
    for name, profile in profiles.items():
        print(f"py-spy, {name}: inclusive share of the sampled (busy) time")
        if isinstance(profile, str):
            print(f"  no samples: {profile}")
            continue
        for frame, share in profile:
            print(f"  {share:5.1f} %  {frame}")


if __name__ == "__main__":
    main()
