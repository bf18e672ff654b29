"""OpenPGP benchmark, in one run: sign_openpgp certifications per second end to end over
the pty (pipelined; gpg validation included) next to the Hsm's raw signatures per second
with the same CA key, for an RSA-4096 and an ECDSA P-256 CA key.

    .venv/bin/python bench/bench_openpgp.py [--requests 100]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_spine import raw_hsm_rate  # noqa: E402
from tests.support.helpers import SignerProcess, dev_init, signer_config  # noqa: E402
from tools.client.library import SignerClient  # noqa: E402


def user_key(tmp: str) -> tuple[str, bytes]:
    home = tempfile.mkdtemp(prefix="g", dir="/tmp")
    try:
        uid = "Bench User <bench@example.org>"
        gpg = ["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run(gpg + ["--quick-gen-key", uid, "ed25519", "default", "never"], check=True, capture_output=True)
        return uid, subprocess.run(gpg + ["--export", uid], check=True, capture_output=True).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def certifications_per_second(client: SignerClient, uid: str, key: bytes, count: int) -> float:
    body = {"key": key, "uids": [uid]}
    assert client.call("sign_openpgp", body).ok
    started = time.perf_counter()
    ids = [client.send("sign_openpgp", body) for _ in range(count)]
    for request_id in ids:
        response = client.wait_for(request_id, timeout=300)
        assert response.ok, response.error
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        uid, key = user_key(tmp)
        for ca_key in ("rsa-4096", "ecdsa-p256"):
            data = dev_init(Path(tmp) / ca_key, "--openpgp-key", ca_key)
            run_dir = Path(tmp) / f"run-{ca_key}"
            run_dir.mkdir()
            signer = SignerProcess(signer_config(data, run_dir), log_dir=run_dir)
            try:
                with SignerClient(signer.client_path, timeout=120) as client:
                    rate = certifications_per_second(client, uid, key, args.requests)
            finally:
                signer.stop()
            rows.append((ca_key, rate, raw_hsm_rate(data, "openpgp-key")))
    for ca_key, rate, raw in rows:
        print(f"sign_openpgp end to end ({ca_key} CA key, 1 uid, pipelined): {rate:7.1f} certifications/s | "
              f"Hsm raw {raw:7.1f} signatures/s | ratio {rate / raw:.3f}")


if __name__ == "__main__":
    main()
