"""The reaper: no process of the signer outlives `signer run`, whatever died first.

Thespian's admin detaches itself (multiprocCommon.startAdmin: setsid, then fork), so the
admin, its logger and every actor live in a session of their own, outside `signer run`'s
process group, and none of them is its child. Before this module, the Supervisor watched
`signer run` and ended the others when it died; a kill -9 of the Supervisor first took
that watchdog with it (issue 17: 12 actor processes left for good, holding the serial
port, the repository and the HSM session).

So the watchdog is now a process of its own that no actor failure can reach:
- `start_reaper()` forks it from `signer run` BEFORE the actor system exists; it leaves
  the process group (setsid), so a kill of the group does not take it along;
- `track_thespian_session()` wraps Thespian's `startAdmin` so that the admin's
  intermediate process, which is about to become the session leader, tells the reaper
  its pid: that pid is the session id of the admin, its logger and every actor;
- the reaper waits (polling its parent pid: the kernel re-parents it when `signer run`
  dies, however it died), then SIGKILLs every process of the announced sessions until
  none is left, and exits. After a clean shutdown there is nothing left to kill.

Session ids come from /proc/PID/stat, which is readable for every process, also for the
non-dumpable ones the signer makes (their /proc/PID/environ and fd links are not).
"""
from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path
from typing import Any

POLL_S = 0.5
KILL_ROUNDS_S = 5.0


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def session_members(session_ids: set[int], exclude: int) -> list[int]:
    """Live (non-zombie) processes whose session id is one of `session_ids`."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        fields = _stat_fields(int(entry.name))
        # fields[0] is the state, fields[3] the session id (stat fields 3 and 6).
        if fields and fields[0] not in ("Z", "X") and int(fields[3]) in session_ids:
            members.append(int(entry.name))
    return members


def kill_sessions(session_ids: set[int], exclude: int, deadline_s: float = KILL_ROUNDS_S) -> int:
    """SIGKILL every member of the sessions, again until none is left. Returns how many."""
    killed: set[int] = set()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        members = session_members(session_ids, exclude)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        time.sleep(0.05)
    return len(killed)


class Reaper:
    """The owner's handle on its reaper process: where session ids are announced."""

    def __init__(self, pid: int, announce_fd: int) -> None:
        self.pid = pid
        self.announce_fd = announce_fd

    def announce(self, session_id: int) -> None:
        os.write(self.announce_fd, f"{session_id}\n".encode("ascii"))


def start_reaper(log_path: str | None = None) -> Reaper:
    """Fork the reaper from the calling process (`signer run`), which it outlives."""
    owner = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_fd)
        return Reaper(pid, write_fd)
    # The reaper. Nothing here may raise out: it would run the owner's code.
    try:
        os.close(write_fd)
        os.setsid()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        _reap_when_owner_dies(owner, read_fd, log_path)
    finally:
        os._exit(0)


def _reap_when_owner_dies(owner: int, read_fd: int, log_path: str | None) -> None:
    sessions: set[int] = set()
    buffer = b""
    reading = True
    while os.getppid() == owner:
        if not reading:  # every writer gone: only the owner's death is left to see
            time.sleep(POLL_S)
            continue
        ready, _, _ = select.select([read_fd], [], [], POLL_S)
        if ready:
            chunk = os.read(read_fd, 4096)
            reading = bool(chunk)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            sessions.update(int(line) for line in lines if line.strip().isdigit())
    if not sessions:
        return
    killed = kill_sessions(sessions, exclude=os.getpid())
    if killed and log_path:
        # The owner is gone, so nobody else writes this line: say what was ended and why.
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR reaper signer run (pid {owner}) "
                          f"is gone: ended {killed} leftover signer processes\n")
        except OSError:
            pass


def track_thespian_session(reaper: Reaper) -> None:
    """Make Thespian's admin announce its session id to the reaper as it detaches.

    multiprocCommon._startAdmin starts `startAdmin` (looked up as a module global at call
    time) in a fork of this process; that process calls setsid() first, so its pid becomes
    the session id of everything the actor system will run.
    """
    from thespian.system import multiprocCommon

    original = getattr(multiprocCommon.startAdmin, "_signer_original", multiprocCommon.startAdmin)

    def start_admin_announced(*args: Any, **kwargs: Any) -> Any:
        try:
            reaper.announce(os.getpid())
        except OSError:
            pass
        return original(*args, **kwargs)

    setattr(start_admin_announced, "_signer_original", original)  # read back by getattr above
    multiprocCommon.startAdmin = start_admin_announced
