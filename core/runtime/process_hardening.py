"""What `signer run` (and `signer dev-init`) do to their own process before touching a secret.

- umask 077: every file the signer, its actors (forked, they inherit it), SQLite (WAL, SHM)
  and Thespian create is readable by the signer's user only.
- no core dumps and not dumpable: a crash must not write the PIN or a session to disk, and
  PR_SET_DUMPABLE 0 also keeps other processes of the same uid from ptrace-attaching or
  reading /proc/PID/mem and /proc/PID/environ. Both are inherited across fork (the actors)
  and reset by exec (gpg), which is what we want.
- remove_from_environment: `os.environ.pop` only unlinks the variable from the C `environ`
  array; the original "NAME=value" bytes stay in the process's initial environment block,
  which is exactly what /proc/PID/environ shows, and every forked actor copies that block.
  So the bytes are overwritten in place too.
"""
from __future__ import annotations

import ctypes
import os
import resource

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


class HardeningError(Exception):
    """The process could not be hardened; the signer must not go on."""


def harden_process() -> None:
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise HardeningError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")


def _environment_block() -> tuple[int, int]:
    """Start and end address of this process's initial environment block (proc(5) stat,
    fields 50 and 51). The command name (field 2) may hold spaces: split after its ')'."""
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return int(fields[50 - 3]), int(fields[51 - 3])


def remove_from_environment(name: str) -> None:
    """Take `name` out of os.environ, the C environment, and the bytes /proc/PID/environ shows."""
    os.environ.pop(name, None)
    start, end = _environment_block()
    if not start or end <= start:
        return
    block = ctypes.string_at(start, end - start)
    prefix = name.encode() + b"="
    offset = 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefix):
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1
