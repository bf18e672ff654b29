"""Spine benchmark: `health` and `ca_info` pipelined over the pty, the median round trip,
and the Hsm's raw signatures per second on the same token, measured in one run.

    .venv/bin/python bench/bench_spine.py [--requests 500]

Every `health` makes a real HSM test signature, so its rate is bounded by the token; the
`ca_info` rate shows the cost of the actor pipeline alone.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import SignerClient  # noqa: E402


def pipelined(client: SignerClient, command: str, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        client.send(command, request_id=f"{command}-{i}")
    for _ in range(count):
        response = client.receive(timeout=120)
        assert response.ok, response.error
    return count / (time.perf_counter() - started)


def round_trips(client: SignerClient, command: str, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        assert client.call(command).ok
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def raw_hsm_rate(data_dir: Path, key_label: str, seconds: float = 2.0) -> float:
    """Signatures per second straight on the token, in a fresh process: PyKCS11 loads
    SoftHSM (and its SOFTHSM2_CONF) once per process, so each token gets its own."""
    result = subprocess.run([sys.executable, "-m", "bench.hsm_rate", str(data_dir), key_label, str(seconds)],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return float(result.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = dev_init(Path(tmp) / "data")
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        signer = SignerProcess(signer_config(data, run_dir), log_dir=run_dir)
        try:
            with SignerClient(signer.client_path, timeout=60) as client:
                client.call("health")  # warm up every actor
                health_rate = pipelined(client, "health", args.requests)
                info_rate = pipelined(client, "ca_info", args.requests)
                health_rtt = round_trips(client, "health", 100)
                info_rtt = round_trips(client, "ca_info", 100)
        finally:
            signer.stop()
        hsm_rate = raw_hsm_rate(data, "class3-key")
    print(f"health pipelined over the pty:   {health_rate:8.0f} requests/s  (median RTT {health_rtt:.2f} ms)")
    print(f"ca_info pipelined over the pty:  {info_rate:8.0f} requests/s  (median RTT {info_rtt:.2f} ms)")
    print(f"Hsm raw signatures (RSA-2048):   {hsm_rate:8.0f} signatures/s (one process, same token)")
    print(f"health / raw HSM rate: {health_rate / hsm_rate:.2f}")


if __name__ == "__main__":
    main()
