"""Issue 17: no single actor's death may leave the signer half-alive.

Design (docs/decisions/0004-supervisor-death-restarts-the-signer.md): `signer run` watches
the Supervisor; when it dies, `signer run` stops every actor and exits non-zero, and the
service manager starts the signer again. These tests play the service manager. The reaper
(core/runtime/owner_reaper.py) ends whatever is left when `signer run` itself dies.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.helpers import SignerProcess, run_tool, signer_config
from tests.faults.test_crash_safety import signer_processes, wait_gone
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e

DEADLINE_S = 10  # what issue 17 asks for


def pid_of(signer: SignerProcess, name: str) -> int:
    record = next(r for r in signer.status() if r["name"] == name)
    return int(record["pid"])


def revoke_answered(client_path: str) -> str:
    """The Revoker's answer to a revocation of a serial nobody issued: its error code.
    `handler_unavailable` (the Dispatcher's answer while the Revoker is being re-created)
    is retried, as a client does, until DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    with SignerClient(client_path, timeout=DEADLINE_S) as client:
        while True:
            answer = client.call("revoke_x509", {"issuer": "root", "serial": "7e57"})
            assert not answer.ok
            if answer.error["code"] != "handler_unavailable" or time.monotonic() > deadline:
                return answer.error["code"]
            time.sleep(0.2)


def test_supervisor_then_handler_killed_the_signer_restarts_and_answers(dev_data: Path,
                                                                        tmp_path: Path) -> None:
    config = signer_config(dev_data, tmp_path)
    signer = SignerProcess(config, log_dir=tmp_path)
    try:
        assert revoke_answered(signer.client_path) == "unknown_serial"
        supervisor, revoker = pid_of(signer, "supervisor"), pid_of(signer, "revoker")
        old = signer_processes(config)
        os.kill(supervisor, signal.SIGKILL)
        os.kill(revoker, signal.SIGKILL)
        # `signer run` notices, stops the rest and exits non-zero for the service manager.
        signer.process.wait(DEADLINE_S)
        assert signer.process.returncode not in (0, None)
        assert wait_gone(old, timeout=DEADLINE_S) == [], "processes of the old signer were left"
        log = (tmp_path / "signer.stderr").read_text()
        assert "Supervisor" in log and "died" in log
        # The service manager starts it again: the Revoker's command is answered.
        signer = SignerProcess(config, log_dir=tmp_path)
        started = time.monotonic()
        assert revoke_answered(signer.client_path) == "unknown_serial"
        assert time.monotonic() - started < DEADLINE_S
    finally:
        signer.stop()


def test_supervisor_then_signer_run_killed_leaves_no_process(dev_data: Path, tmp_path: Path) -> None:
    config = signer_config(dev_data, tmp_path)
    signer = SignerProcess(config, log_dir=tmp_path)
    try:
        supervisor = pid_of(signer, "supervisor")
        old = signer_processes(config)
        assert len(old) >= 12, f"expected the whole signer, found {old}"
        os.kill(supervisor, signal.SIGKILL)
        os.kill(signer.process.pid, signal.SIGKILL)
        signer.process.wait(DEADLINE_S)
        left = wait_gone(old, timeout=DEADLINE_S)
        assert left == [], f"{len(left)} processes of the old signer outlived signer run by {DEADLINE_S} s"
    finally:
        for pid in signer_processes(config):
            os.kill(pid, signal.SIGKILL)


def test_a_handler_killed_alone_is_restarted_by_the_supervisor(dev_data: Path, tmp_path: Path) -> None:
    config = signer_config(dev_data, tmp_path)
    signer = SignerProcess(config, log_dir=tmp_path)
    try:
        revoker = pid_of(signer, "revoker")
        os.kill(revoker, signal.SIGKILL)
        started = time.monotonic()
        assert revoke_answered(signer.client_path) == "unknown_serial"
        assert time.monotonic() - started < DEADLINE_S
        assert signer.process.poll() is None, "a handler's death must not stop the signer"
        record = next(r for r in signer.status() if r["name"] == "revoker")
        assert record["restarts"] == 1 and record["pid"] != revoker
    finally:
        signer.stop()


def test_admin_status_says_when_the_supervisor_does_not_answer(dev_data: Path, tmp_path: Path) -> None:
    config = signer_config(dev_data, tmp_path)
    signer = SignerProcess(config, log_dir=tmp_path)
    supervisor = pid_of(signer, "supervisor")
    try:
        os.kill(supervisor, signal.SIGSTOP)  # hung: alive for `signer run`, silent for the admin
        result = run_tool("signer-admin", "--config", str(config), "status", timeout=60)
        assert result.returncode == 3  # no answer (docs/operations.md, the exit-code table)
        assert "Supervisor did not answer" in result.stderr, result.stderr
    finally:
        os.kill(supervisor, signal.SIGCONT)
        signer.stop()
