"""One signer per data folder (the repository's folder, which also holds the actor-transport
key, Thespian's log and the dev pty link): `signer run` holds an exclusive flock on
`signer.lock` there for its whole life, taken before anything else starts. A second signer
on the same folder is refused and told who runs (pid, node id, admin port: the lock file's
content, written by the holder).

The kernel drops a flock when the last descriptor of the open file closes, so a `kill -9` of
`signer run` leaves no stale lock; the actor processes inherit the descriptor (fork), so a
new signer cannot start on the repository until the reaper has ended the old actors too.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_NAME = "signer.lock"
# signer-admin holds a shared lock for a moment to see whether a signer runs: a start at that
# very instant retries for this long rather than calling a reader "another signer".
ACQUIRE_RETRY_S = 1.0


class InstanceLocked(Exception):
    """Another signer holds the folder; `holder` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"another signer runs on {path.parent}: {describe_holder(holder)} "
                         f"(lock {path}); stop it first, or give this one its own data folder")


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that wrote nothing into the lock file yet"
    return (f"pid {holder.get('pid')}, node {holder.get('node_id')}, "
            f"admin port {holder.get('admin_port')}, started {holder.get('started_at')}")


def lock_path(folder: Path) -> Path:
    return Path(folder) / LOCK_NAME


def read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class InstanceLock:
    path: Path
    fd: int

    @classmethod
    def acquire(cls, folder: Path, holder: dict[str, Any]) -> "InstanceLock":
        """Take the folder's lock and write `holder` into it; InstanceLocked when taken."""
        path = lock_path(folder)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise InstanceLocked(path, read_holder(path)) from None
                time.sleep(0.05)
        # Only the holder writes, and only after it holds the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder, sort_keys=True).encode() + b"\n", 0)
        return cls(path, fd)

    def release(self) -> None:
        """Empty the file (no stale holder to read) and unlock; idempotent."""
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)  # also for the forked actors sharing the file
        os.close(self.fd)
        self.fd = -1


def running_holder(folder: Path) -> dict[str, Any] | None:
    """What the signer running on `folder` wrote, or None when none runs there (the lock is
    free). Used by signer-admin to check it talks to the signer its config names."""
    path = lock_path(folder)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
