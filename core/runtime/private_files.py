"""Reading a secret file (PIN, NATS password, event signing key, ceremony passphrase) the one
way: never through a symlink (O_NOFOLLOW), and refused when group or others may access it.
Callers phrase the refusal in their own configuration's terms (PrivateFileError's fields)."""
from __future__ import annotations

import os
import stat


class PrivateFileError(Exception):
    """`strerror` set: the file cannot be opened or read. `mode` set: it is open to group or
    others (the permission bits)."""

    def __init__(self, path: str | os.PathLike[str], strerror: str | None = None, mode: int | None = None) -> None:
        super().__init__(f"{path}: {strerror or f'mode {mode:04o}'}")
        self.path, self.strerror, self.mode = path, strerror, mode


def read_private_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise PrivateFileError(path, strerror=exc.strerror) from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PrivateFileError(path, mode=stat.S_IMODE(mode))
        try:
            return handle.read()
        except OSError as exc:
            raise PrivateFileError(path, strerror=exc.strerror) from None
