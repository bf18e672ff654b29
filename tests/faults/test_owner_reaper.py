"""core/runtime/owner_reaper.py on real processes: a fake `signer run` (the owner) starts the reaper,
then a detached "admin" that announces its session and forks "actors" into it, as Thespian
does. Killing the owner with SIGKILL must end every process of that session, and only
those."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from core.runtime.owner_reaper import session_members

OWNER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from core.runtime.owner_reaper import start_reaper
    reaper = start_reaper(log_path=sys.argv[1])
    read_fd, write_fd = os.pipe()
    if os.fork() == 0:                      # the admin's intermediate process
        os.setsid()
        reaper.announce(os.getpid())
        if os.fork():
            os._exit(0)
        for _ in range(3):                  # the admin forks its actors
            if os.fork() == 0:
                while True:
                    time.sleep(1)
        os.write(write_fd, f"{os.getsid(0)}\\n".encode())
        while True:
            time.sleep(1)
    print(os.read(read_fd, 100).decode().strip(), flush=True)
    while True:
        time.sleep(1)
""")


def wait_until(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_sigkill_of_the_owner_ends_every_process_of_the_announced_session(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
    log = tmp_path / "signer.log"
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, str(log)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        session = int(owner.stdout.readline())
        assert wait_until(lambda: len(session_members({session}, exclude=0)) == 4, 10), \
            "the fake admin and its three actors did not start"
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        assert wait_until(lambda: not session_members({session}, exclude=0), 10), \
            f"left after the owner died: {session_members({session}, exclude=0)}"
        assert bystander.poll() is None, "the reaper killed a process outside the signer's session"
        assert wait_until(lambda: log.exists() and "ended 4 leftover signer processes" in log.read_text(), 10)
    finally:
        bystander.kill()
        owner.kill()


def test_the_reaper_itself_exits_after_a_clean_owner_exit(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from core.runtime.owner_reaper import start_reaper
        print(start_reaper().pid, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=30, check=True)
    reaper_pid = int(done.stdout)
    assert wait_until(lambda: not Path(f"/proc/{reaper_pid}").exists()
                      or Path(f"/proc/{reaper_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                      10), "the reaper outlived its owner"
