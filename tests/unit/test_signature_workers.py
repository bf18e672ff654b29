"""Peer events whose signatures are verified by worker processes (core/sync/signature_worker.py,
PeerValidator(workers=N), issue 14.4): the outcome of every event, forged or real, is the one
of checking it inline; the main process does not verify again what a worker verified; a
worker that dies or hangs costs speed, never a check; workers end with their parent."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.repository.store import Repository
from core.sync.peer_validation import MIN_AHEAD, PeerValidator
from core.sync.signature_worker import SignatureWorkers
from tests.unit.test_peer_validation import (FORGERIES, ISSUER, NODE_KEYS, OUR_CA, OUR_PGP, issue,
                                             pgp_body, sign_pgp, wire)


def make_validator(workers: int) -> PeerValidator:
    return PeerValidator({node: key.public_key() for node, key in NODE_KEYS.items()},
                         {ISSUER: OUR_CA[1]}, pgp_body(OUR_PGP), workers=workers)


@pytest.fixture
def batch(tmp_path: Path) -> list[dict]:
    """Every forgery of test_peer_validation, then a's real log (certificates, revocation,
    CRL, OpenPGP): one batch, as catch-up hands it to apply_peer_events."""
    a = Repository(str(tmp_path / "a.sqlite"), "a")
    try:
        issue(a, 0x100)
        forged = [forge(a) for _, forge, _ in FORGERIES]
        for serial in range(0x700, 0x710):
            issue(a, serial)
        sign_pgp(a, "pgp-1")
        real = [wire(event) for event in a.events_after(0, 1000)]
    finally:
        a.close()
    events = forged + real
    assert len(events) >= MIN_AHEAD
    return events


def apply_all(path: Path, events: list[dict], validator: PeerValidator) -> tuple[list[str], list[tuple], str]:
    repository = Repository(str(path), "b")
    try:
        outcomes, waiting = repository.apply_peer_events(events, validator)
        assert waiting is None
        # The CRL ceiling in a reason follows the clock: the rest must be equal.
        parked = [(e["event_id"], re.sub(r"between 1 and \d+", "between 1 and N", e["reason"]))
                  for e in repository.quarantined_events()]
        return outcomes, parked, repository.content_digest()
    finally:
        repository.close()


class NoInlineVerify:
    """An event key whose inline verification fails the test: with the workers, the main
    process must not verify what they verified."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        raise AssertionError("an event signature was verified in the main process")


def test_worker_checked_outcomes_are_the_inline_ones(tmp_path: Path, batch: list[dict]) -> None:
    inline = apply_all(tmp_path / "inline.sqlite", batch, make_validator(0))
    validator = make_validator(1)
    validator.event_keys = {node: NoInlineVerify(key) for node, key in NODE_KEYS.items()}
    try:
        pooled = apply_all(tmp_path / "pooled.sqlite", batch, validator)
        assert validator.workers.failures == 0 and len(validator.workers.workers) == 1
    finally:
        validator.close()
    assert pooled == inline
    outcomes, parked, _ = pooled
    # Each forgery parked once (two of them also sit in a's log as made: parked already).
    assert len(parked) == len(FORGERIES) and set(outcomes) == {"quarantined", "applied"}
    reasons = " | ".join(reason for _, reason in parked)
    for _, _, words in FORGERIES:  # a worker's "no" is the inline refusal, word for word
        assert words in reasons


def test_a_worker_that_dies_leaves_the_checks_to_the_main_process(tmp_path: Path,
                                                                  batch: list[dict]) -> None:
    inline = apply_all(tmp_path / "inline.sqlite", batch, make_validator(0))
    validator = make_validator(1)
    try:
        validator.verify_ahead(batch)  # starts the worker
        validator.workers.workers[0].process.kill()
        validator.workers.workers[0].process.wait()
        assert apply_all(tmp_path / "pooled.sqlite", batch, validator) == inline
        assert validator.workers.failures >= 1
    finally:
        validator.close()


def test_a_worker_that_never_answers_is_given_up(tmp_path: Path, batch: list[dict]) -> None:
    inline = apply_all(tmp_path / "inline.sqlite", batch, make_validator(0))
    validator = make_validator(1)
    validator.workers = SignatureWorkers(1, timeout_s=0.5, command=[
        sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.monotonic()
        assert apply_all(tmp_path / "pooled.sqlite", batch, validator) == inline
        assert time.monotonic() - started < 10 and validator.workers.failures == 1
    finally:
        validator.close()


def test_a_worker_answering_garbage_is_given_up(tmp_path: Path, batch: list[dict]) -> None:
    inline = apply_all(tmp_path / "inline.sqlite", batch, make_validator(0))
    validator = make_validator(1)
    validator.workers = SignatureWorkers(1, command=[
        sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\0\\0\\0\\3abc'); sys.stdout.flush();"
        " sys.stdin.buffer.read()"])
    try:
        assert apply_all(tmp_path / "pooled.sqlite", batch, validator) == inline
        assert validator.workers.failures == 1
    finally:
        validator.close()


def test_small_batches_are_checked_inline(tmp_path: Path, batch: list[dict]) -> None:
    validator = make_validator(1)
    try:
        assert validator.verify_ahead(batch[:MIN_AHEAD - 1]) is None
        assert validator.workers.workers == []  # nothing started for a live batch
    finally:
        validator.close()


def test_workers_end_when_their_parent_dies(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        from core.sync.signature_worker import SignatureWorkers
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        pool = SignatureWorkers(2)
        verdicts = pool.submit([("ed25519", raw, key.sign(b"m"), b"m"), ("ed25519", raw, key.sign(b"m"), b"x")] * 20)
        assert [verdicts.get(i) for i in range(4)] == [True, False, True, False]
        print(" ".join(str(w.process.pid) for w in pool.workers), flush=True)
        os._exit(0)  # no close(), no atexit: as a kill -9 would leave them
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent.parent)
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (waiting for init to reap it)
