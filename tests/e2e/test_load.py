"""Load (hardening item 6): mixed requests pipelined with 100 in flight against the real
signer process; prints throughput, p50/p99 latency and VmHWM/VmRSS of every actor process
at the start and at the end, and asserts the bound of bench/bench_load.py: every process's
RSS grows less than 50 MiB from the warm-up to the end, every answer is a success, no
actor restarted. Normal suite: 1,000 requests; `--run-slow`: 10,000 (also
`bench/bench_load.py`). LOAD_SEED fixes the request mix (printed)."""
from __future__ import annotations

import os
import random

import pytest

from bench.bench_load import load_run
from tests.support.helpers import SignerProcess, signer_config

pytestmark = pytest.mark.e2e


def run_and_check(dev_data, tmp_path, total: int) -> None:
    seed = int(os.environ.get("LOAD_SEED") or random.SystemRandom().randrange(2 ** 31))
    print(f"\nload: seed {seed}, {total} requests, 100 in flight")
    signer = SignerProcess(signer_config(dev_data, tmp_path), log_dir=tmp_path)
    try:
        report = load_run(signer, total, 100, seed)
    finally:
        signer.stop()
    print("\n".join(report.lines()))
    assert report.problems() == []
    assert sum(len(v) for v in report.result.latencies.values()) == total


def test_load_1000_mixed_requests(dev_data, tmp_path):
    run_and_check(dev_data, tmp_path, 1000)


@pytest.mark.slow
def test_load_10000_mixed_requests(dev_data, tmp_path):
    run_and_check(dev_data, tmp_path, 10_000)
